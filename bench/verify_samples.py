"""Check the facts of stored self-consistency labels with a verifying teacher's step, without extracting again.

    python bench/verify_samples.py runs/eval-sc3 --dataset gold --split test --lm embedded/qwen2.5-coder-1.5b

`runs/eval-sc3` is a `hotmem evaluate --samples N` folder (its rows keep every label). For each vote (`--agree` 1 to
N) it scores the voted graph as it is and with the facts the verify step rejects removed: the step
`hotmem optimize --verify` adds to a teacher, which `hotmem evaluate` runs inside the program. Checking the union
once is what N verifying samples do (the check decodes greedily), at fewer calls. DSPy's cache keeps the verdicts:
a rerun costs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dspy

from hotmem.data.registry import load_dataset
from hotmem.lm import make_lm
from hotmem.pipeline.label import vote
from hotmem.pipeline.metric import prf, score_graph
from hotmem.teacher.adapter import CompactJSONAdapter
from hotmem.teacher.program import Teacher, speaker_statements
from hotmem.types import Graph, render_turns, speakers_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, help="a `hotmem evaluate --samples N --out` folder")
    parser.add_argument("--dataset", default="gold")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lm", default="embedded/qwen2.5-coder-1.5b")
    args = parser.parse_args()
    records = {r.id: r for r in load_dataset(args.dataset, split=args.split)[0]}
    rows = [json.loads(line) for line in (args.rows / "rows.jsonl").read_text().splitlines() if line.strip()]
    if not rows or not rows[0].get("samples"):
        raise SystemExit(f"{args.rows}: no stored samples (run hotmem evaluate with --samples N)")
    teacher, lm = Teacher(reads="sentences", verify=True), make_lm(args.lm)
    print("| vote | checked | relation P / R / F1 | (tp, predicted, gold) |\n|---|---|---|---|")
    for agree in range(1, len(rows[0]["samples"]) + 1):
        for checked in (False, True):
            counts = [0, 0, 0]
            for row in rows:
                record = records[row["id"]]
                speakers = speakers_of(record.turns)
                graph = vote([Graph.model_validate(g) for g in row["samples"]], agree, speakers=speakers)
                if checked and graph.relations:
                    with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
                        kept, _ = teacher.verified(speaker_statements(record.turns), graph.relations)
                    graph = graph.model_copy(update={"relations": kept})
                score = score_graph(record.graph, graph, text=render_turns(record.turns), speakers=speakers,
                                    scored_pairs=record.scored_pairs, scored_predicates=record.scored_predicates)
                counts = [counts[0] + score.relation_tp, counts[1] + score.relation_pred,
                          counts[2] + score.relation_gold]
            p, r, f = prf(*counts)
            print(f"| {agree} of {len(rows[0]['samples'])} | {'yes' if checked else 'no'} | "
                  f"{p:.3f} / {r:.3f} / {f:.3f} | {tuple(counts)} |", flush=True)


if __name__ == "__main__":
    main()
