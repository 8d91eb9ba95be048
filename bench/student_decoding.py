"""Two decodings of the LoRA student, or two students, side by side: latency, output tokens, same answers.

The student decoding token by token (llama-cpp-python's chat completion) against jump-forward decoding (the text its
`lines` grammar forces fed in one batch, `Student(jump_forward=True)`); or, with `--against`, two students, each
decoding as it ships. Decoding steps and whether the answers are the same come with the latencies.

    python bench/student_decoding.py --split test --out bench/results/<folder>/decoding.json
    python bench/student_decoding.py --student runs/new --against runs/old --out .../speed.json

Two students (or two copies of one) are loaded; they answer each gold conversation in turn (which goes first
alternates), so a slow spell of this machine hits both, and their ratio holds from one machine to another where a
bare p50 does not. Run it alone: a second model-heavy process on two cores doubles every figure."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hotmem.data import load_gold
from hotmem.io import write_atomic
from hotmem.pipeline.evaluate import percentile
from hotmem.students.format import student_messages
from hotmem.students.lora import Student

MODES = ("token by token", "jump-forward")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", help="an exported student folder (default: the shipped one)")
    parser.add_argument("--split", default="test", choices=("train", "dev", "test"))
    parser.add_argument("--limit", type=int)
    parser.add_argument("--against", help="another student folder: the two students side by side, each decoding "
                                              "jump-forward, instead of the student's two decodings")
    parser.add_argument("--out", type=Path, help="write the figures and the differing answers as JSON here")
    args = parser.parse_args()

    records = load_gold(args.split)[: args.limit]
    if args.against:
        students = {args.against: Student(args.against), args.student or "optimized/student": Student(args.student)}
    else:
        students = {mode: Student(args.student, jump_forward=mode == "jump-forward") for mode in MODES}
    modes = tuple(students)
    for student in students.values():  # load the weights and process the fixed system prompt once
        warm = student_messages(records[0].turns, student.system_prompt)
        student.engine.chat(warm, max_tokens=4, **student._constraint)
    rows: dict[str, list[dict]] = {mode: [] for mode in modes}
    for i, record in enumerate(records):
        for mode in modes if i % 2 == 0 else modes[::-1]:
            student = students[mode]
            started = time.perf_counter()
            result = student.engine.chat(student_messages(record.turns, student.system_prompt),
                                         max_tokens=student.max_tokens, **student._constraint)
            usage = result["usage"]
            rows[mode].append({"id": record.id, "seconds": time.perf_counter() - started,
                               "tokens": usage["completion_tokens"],
                               "steps": usage.get("decoding_steps", usage["completion_tokens"] + 1),
                               "answer": result["choices"][0]["message"]["content"]})
    summary = {}
    for mode, mode_rows in rows.items():
        seconds = [r["seconds"] for r in mode_rows]
        summary[mode] = {"p50_s": round(percentile(seconds, 0.5), 3), "p95_s": round(percentile(seconds, 0.95), 3),
                         "mean_s": round(statistics.mean(seconds), 3),
                         "tokens_per_example": round(statistics.mean(r["tokens"] for r in mode_rows), 1),
                         "steps_per_example": round(statistics.mean(r["steps"] for r in mode_rows), 1)}
    before, after = rows[modes[0]], rows[modes[1]]
    differing = [{"id": a["id"], modes[0]: a["answer"], modes[1]: b["answer"]}
                 for a, b in zip(before, after) if a["answer"] != b["answer"]]
    ratio = {"p50": round(summary[modes[1]]["p50_s"] / summary[modes[0]]["p50_s"], 3),
             "mean": round(summary[modes[1]]["mean_s"] / summary[modes[0]]["mean_s"], 3)}
    report = {"split": args.split, "examples": len(records), "student": args.student or "optimized/student",
              "against": args.against, "summary": summary, "ratio": ratio,
              "same_answers": len(records) - len(differing), "differing": differing}
    print(f"| {'student' if args.against else 'decoding'} | p50 | p95 | mean | output tokens / ex | "
          "decoding steps / ex |")
    print("|---|---|---|---|---|---|")
    for mode, s in summary.items():
        print(f"| {mode} | {s['p50_s']:.2f} s | {s['p95_s']:.2f} s | {s['mean_s']:.2f} s | "
              f"{s['tokens_per_example']:.1f} | {s['steps_per_example']:.1f} |")
    print(f"{modes[1]} / {modes[0]}: p50 {ratio['p50']}, mean {ratio['mean']}; "
          f"same answers: {report['same_answers']} / {len(records)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.out, json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
