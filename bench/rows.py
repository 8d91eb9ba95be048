"""Carry a `compare.py` run's per-example rows without the data sets' text, so it can be committed and resumed.

    python bench/rows.py export runs/compare bench/results/compare-2026-11-26/rows   # counts, latency, cost only
    python bench/rows.py restore bench/results/compare-2026-11-26/rows runs/compare  # then rerun the same command

The research data sets' licences forbid copying their text into the project, and a row's predicted graph (and an
error message) quotes it. What `compare.py` aggregates is the rest of the row: the counts behind the scores,
latency, LM calls and output tokens. An exported row keeps those, and an error keeps only its exception type, so the
table computed from exported rows is the same table. `restore` never overwrites a row a run already holds.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from hotmem.io import JsonlLog

ROWS, VERSIONS = "rows.jsonl", "versions.json"


def strip_row(row: dict) -> dict:
    """The row without text from the data: no predicted graph (nor the sampled ones, nor their checked facts), an
    error reduced to its exception type."""
    kept = {key: value for key, value in row.items() if key not in ("graph", "samples", "stated")}
    if kept.get("error"):
        kept["error"] = kept["error"].split(":", 1)[0]
    return kept


def read_rows(path: Path) -> dict[str, dict]:
    """A rows.jsonl by example id ({} when there is none), read as evaluation reads it (`hotmem.io.JsonlLog`)."""
    return {row["id"]: row for row in JsonlLog(path)}


def export(run: Path, dest: Path) -> int:
    """Every (data set, system) pair of `run` into `dest`, stripped; the number of rows written."""
    count = 0
    for rows_file in sorted(run.glob(f"*/*/{ROWS}")):
        pair = rows_file.parent.relative_to(run)
        (dest / pair).mkdir(parents=True, exist_ok=True)
        rows = [strip_row(row) for row in read_rows(rows_file).values()]
        (dest / pair / ROWS).write_text("".join(json.dumps(row) + "\n" for row in rows))
        if (rows_file.parent / VERSIONS).exists():
            shutil.copyfile(rows_file.parent / VERSIONS, dest / pair / VERSIONS)
        count += len(rows)
    return count


def restore(source: Path, run: Path) -> int:
    """Rows of `source` that `run` lacks appended to it (code versions merged); the number of rows added."""
    added = 0
    for rows_file in sorted(source.glob(f"*/*/{ROWS}")):
        pair = rows_file.parent.relative_to(source)
        target = run / pair
        target.mkdir(parents=True, exist_ok=True)
        have = read_rows(target / ROWS)
        new = [row for row_id, row in read_rows(rows_file).items() if row_id not in have]
        with open(target / ROWS, "a") as sink:
            sink.writelines(json.dumps(row) + "\n" for row in new)
        added += len(new)
        if (rows_file.parent / VERSIONS).exists():
            versions = json.loads((target / VERSIONS).read_text()) if (target / VERSIONS).exists() else []
            merged = versions + [v for v in json.loads((rows_file.parent / VERSIONS).read_text()) if v not in versions]
            (target / VERSIONS).write_text(json.dumps(merged))
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, helps in (("export", ("compare.py --out folder", "where the stripped rows go")),
                        ("restore", ("exported rows", "compare.py --out folder to resume"))):
        command = commands.add_parser(name)
        command.add_argument("source", type=Path, help=helps[0])
        command.add_argument("dest", type=Path, help=helps[1])
    args = parser.parse_args()
    if args.command == "export":
        print(f"{export(args.source, args.dest)} rows exported to {args.dest}")
    else:
        print(f"{restore(args.source, args.dest)} rows restored into {args.dest}")


if __name__ == "__main__":
    main()
