"""Check the facts of stored self-consistency labels with a verifying teacher's step, without extracting again.

    python bench/verify_samples.py runs/eval-sc3 --dataset gold --split test --lm embedded/qwen2.5-coder-1.5b
    python bench/verify_samples.py runs/eval-sc3 --dataset gold --split dev --thresholds 0.3 0.5 0.7

`runs/eval-sc3` is a `hotmem evaluate --samples N` folder (its rows keep every label). For the main (greedy) label
alone and each vote (`--agree` 1 to N) it scores the graph as it is and with the facts the verify step rejects
removed: the step `hotmem optimize --verify` adds to a teacher, which `hotmem evaluate` runs inside the program.
Checking the union once is what N verifying samples do (the check decodes greedily), at fewer calls.
`--thresholds`: also keep the facts whose probability of being stated (`Teacher.stated_probabilities`, from the LM's
log-probabilities) reaches each threshold, instead of the answer. DSPy's cache keeps the verdicts: a rerun costs
nothing.
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
    parser.add_argument("--thresholds", type=float, nargs="*", default=[],
                        help="also keep facts by their probability of being stated, at each of these")
    args = parser.parse_args()
    records = {r.id: r for r in load_dataset(args.dataset, split=args.split)[0]}
    rows = [json.loads(line) for line in (args.rows / "rows.jsonl").read_text().splitlines() if line.strip()]
    if not rows or not rows[0].get("samples"):
        raise SystemExit(f"{args.rows}: no stored samples (run hotmem evaluate with --samples N)")
    teacher, lm = Teacher(reads="sentences", verify=True), make_lm(args.lm)
    probabilities: dict[tuple, float] = {}

    def checked(record, graph: Graph, rule) -> Graph:
        statements = speaker_statements(record.turns)
        with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
            if rule == "answer":
                kept, _ = teacher.verified(statements, graph.relations)
                return graph.model_copy(update={"relations": kept})
            todo = [r for r in graph.relations if (record.id, r.subject, r.predicate, r.object) not in probabilities]
            for r, p in zip(todo, teacher.stated_probabilities(statements, todo)):
                probabilities[record.id, r.subject, r.predicate, r.object] = p
        return graph.model_copy(update={"relations": [
            r for r in graph.relations if probabilities[record.id, r.subject, r.predicate, r.object] >= rule]})

    print("| labels | checked | relation P / R / F1 | (tp, predicted, gold) |\n|---|---|---|---|")
    n = len(rows[0]["samples"])
    for agree in range(0, n + 1):  # 0: the main label alone
        for rule in (None, "answer", *args.thresholds):
            counts = [0, 0, 0]
            for row in rows:
                record = records[row["id"]]
                speakers = speakers_of(record.turns)
                labels = [Graph.model_validate(g) for g in row["samples"]]
                graph = labels[0] if agree == 0 else vote(labels, agree, speakers=speakers)
                if rule is not None and graph.relations:
                    graph = checked(record, graph, rule)
                score = score_graph(record.graph, graph, text=render_turns(record.turns), speakers=speakers,
                                    scored_pairs=record.scored_pairs, scored_predicates=record.scored_predicates)
                counts = [counts[0] + score.relation_tp, counts[1] + score.relation_pred,
                          counts[2] + score.relation_gold]
            p, r, f = prf(*counts)
            how = {None: "no", "answer": "its answer"}.get(rule) if isinstance(rule, str | None) else f"P >= {rule}"
            labels_used = f"{agree} of {n}" if agree else "the main one"
            print(f"| {labels_used} | {how} | {p:.3f} / {r:.3f} / {f:.3f} | {tuple(counts)} |", flush=True)


if __name__ == "__main__":
    main()
