"""Score a finished labelling run against an annotated data set whose records carry the same ids, without labelling
again: for a corpus labelled from plain text whose annotation lives elsewhere.

    python bench/label_reference.py runs/labels-three-convai2 --dataset convai2-conversation --agree 2 \
        --unseen-by encoder

Each stored label whose id is a record of `--dataset` (every triple mapped, for a `-conversation` set) gets that
record's graph as its reference, then `hotmem.pipeline.label.reference_scores` scores it as a run labelled from the
data set would have: the main label as it came, filtered, and kept (voted over the samples with `--agree`, then
filtered), plus each sample (another labeller's label) alone. `--unseen-by` (as in `hotmem label`: `student`,
`encoder` or a run folder; repeatable) scores only the lines the training of none of them drew. An annotation may
state fewer facts than the line (ConvAI2's Dialogue-NLI triples: one or two a line, objects normalised): precision
is a lower bound.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hotmem.data.registry import load_dataset
from hotmem.pipeline.label import LABELS_FILE, LabelConfig, reference_scores
from hotmem.pipeline.mixture import base_id, taught_record_ids
from hotmem.schema import CONVERSATION_SCHEMA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a `hotmem label --out` folder")
    parser.add_argument("--dataset", required=True, help="an annotated data set in the conversation schema")
    parser.add_argument("--agree", type=int, default=None, help="the vote the run kept its labels with")
    parser.add_argument("--unseen-by", action="append", default=[], metavar="RUN",
                        help="score only lines this model's training did not draw")
    args = parser.parse_args()
    taught = taught_record_ids(args.unseen_by)

    records, schema = load_dataset(args.dataset)
    if set(schema.predicates) != set(CONVERSATION_SCHEMA.predicates):
        parser.error(f"{args.dataset} is not in the conversation schema: use its -conversation form")
    by_id = {record.id: record for record in records}
    items = []
    with (args.run / LABELS_FILE).open() as lines:
        for item in map(json.loads, lines):
            record = by_id.get(item["id"])
            if record is not None and base_id(item["id"]) not in taught:
                items.append({**item, "reference": record.graph.model_dump(),
                              "annotates": record.scored_predicates})
    config = LabelConfig(out_dir=str(args.run), agree=args.agree)
    result = {"labels": sum(1 for _ in (args.run / LABELS_FILE).open()), "with_reference": len(items),
              "run": reference_scores(items, CONVERSATION_SCHEMA, config)}
    for i in range(max((len(item.get("samples") or ()) for item in items), default=0)):
        alone = [{**item, "graph": item["samples"][i], "samples": None} for item in items if item.get("samples")]
        result[f"sample_{i + 1}"] = (reference_scores(alone, CONVERSATION_SCHEMA, config) or {}).get("label")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
