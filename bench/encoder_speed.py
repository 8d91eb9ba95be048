"""The encoder student's speed on this machine: per-utterance latency one at a time (p50 / p95, through
`GraphExtractor`), batched throughput (`extract_many`), cold start (a fresh process to its first graph) and file size,
for each ONNX graph the folder holds (fp32, int8) and each onnxruntime thread count (`--threads 1,2`: one leaves a
core to the app, two is the whole machine for a batch job).

    python bench/encoder_speed.py optimized/encoder --out bench/results/encoder-<date>/speed.json

Utterances: hotmem's gold dev and test conversations (66), each timed `--passes` times. Run it alone: a second
model-heavy process on two cores doubles every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hotmem import GraphExtractor
from hotmem.data import load_gold
from hotmem.io import write_atomic
from hotmem.pipeline.evaluate import percentile
from hotmem.students.encoder import STUDENT_FILE, EncoderStudent

COLD = ("import time, sys; started = time.perf_counter(); from hotmem import GraphExtractor; "
        "from hotmem.students.encoder import EncoderStudent; "
        "GraphExtractor(backend=EncoderStudent(sys.argv[1], model_file=sys.argv[2], threads=int(sys.argv[3])))"
        "('I moved to Lisbon last May.'); "
        "print(time.perf_counter() - started)")


def measure(folder: Path, model_file: str, threads: int, passes: int, cold_runs: int) -> dict:
    conversations = [record.turns for record in load_gold("dev") + load_gold("test")]
    student = EncoderStudent(folder, model_file=model_file, threads=threads)
    extractor = GraphExtractor(backend=student)
    for turns in conversations[:5]:
        extractor(turns)
    single = []
    for _ in range(passes):
        for turns in conversations:
            started = time.perf_counter()
            extractor(turns)
            single.append(time.perf_counter() - started)
    batched = []
    for _ in range(passes):
        started = time.perf_counter()
        student.extract_many(conversations)
        batched.append(len(conversations) / (time.perf_counter() - started))
    cold = []
    for _ in range(cold_runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD, str(folder), model_file, str(threads)], check=True,
                       capture_output=True)
        cold.append(time.perf_counter() - started)
    return {"model": model_file, "threads": threads, "size_mb": round((folder / model_file).stat().st_size / 2**20, 1),
            "utterances": len(single), "p50_ms": round(1000 * statistics.median(single), 1),
            "p95_ms": round(1000 * percentile(single, 0.95), 1),
            "batched_utterances_per_s": round(statistics.median(batched), 1),
            "cold_start_s": round(statistics.median(cold), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread counts to measure")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    files = json.loads((args.folder / STUDENT_FILE).read_text())["files"]
    rows = [measure(args.folder, name, int(threads), args.passes, args.cold_runs)
            for name in files.values() for threads in args.threads.split(",")]
    print("| graph | threads | size MB | p50 ms | p95 ms | batched utt/s | cold start s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['threads']} | {r['size_mb']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['batched_utterances_per_s']} | "
              f"{r['cold_start_s']} |")
    if args.out:
        write_atomic(args.out, json.dumps({"folder": str(args.folder), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
