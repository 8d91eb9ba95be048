"""How sure a `compare.py` table is: paired bootstrap intervals for relation F1 and the goals' comparisons.

    python bench/paired.py runs/compare                      # a compare.py --out folder, or rows.py export's
    python bench/paired.py runs/compare --out bench/results/compare-2026-11-26/paired.md
    python bench/paired.py bench/results/student-v11-2026-12-05/rows --difference v11 v10   # any two systems

Every system of a data set ran the same examples, so the examples are resampled together (10,000 times, seeded) and
each resample scores every system by micro-averaged F1 over it, as the table does. The intervals are the 2.5th and
97.5th percentiles. Besides each system's relation F1, it reports the differences issue 5 sets goals on: the
optimized teacher against each peer, the student against each teacher, and the teachers' p50 latency over the
student's.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from rows import ROWS, read_rows  # bench/rows.py: run as `python bench/paired.py`

#: (system, reference): the differences reported, system minus reference.
COMPARISONS = (
    ("hotmem-optimized", "kggen"),
    ("hotmem-optimized", "langchain"),
    ("hotmem-student", "hotmem-teacher"),
    ("hotmem-student", "hotmem-optimized"),
)
TEACHERS, STUDENT = ("hotmem-teacher", "hotmem-optimized"), "hotmem-student"


def f1(counts: np.ndarray) -> np.ndarray:
    """Micro F1 from summed (true positives, predicted, gold) along the last axis; nothing predicted of nothing is 1."""
    tp, predicted, gold = np.moveaxis(counts, -1, 0)
    total = predicted + gold
    return np.where(total == 0, 1.0, 2 * tp / np.maximum(total, 1))


def interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def dataset_section(name: str, systems: dict[str, dict[str, dict]], resamples: int, seed: int,
                    comparisons: tuple[tuple[str, str], ...] = COMPARISONS) -> list[str]:
    ids = sorted(set.intersection(*(set(rows) for rows in systems.values())))
    if not ids:
        return [f"## {name}", "", "no example that every system ran", ""]
    counts = {s: np.array([rows[i]["relation"] for i in ids], dtype=float) for s, rows in systems.items()}
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    scores = {s: f1(c[draws].sum(axis=1)) for s, c in counts.items()}
    point = {s: float(f1(c.sum(axis=0))) for s, c in counts.items()}
    lines = [f"## {name} ({len(ids)} examples every system ran)", "",
             "| system | relation F1 | 95% interval |", "|---|---|---|"]
    lines += [f"| {s} | {point[s]:.3f} | {interval(scores[s])[0]:.3f} – {interval(scores[s])[1]:.3f} |"
              for s in systems]
    lines += ["", "| difference | relation F1 points | 95% interval | resamples above 0 |", "|---|---|---|---|"]
    for system, reference in comparisons:
        if system in scores and reference in scores:
            delta = scores[system] - scores[reference]
            low, high = interval(delta)
            lines.append(f"| {system} − {reference} | {100 * (point[system] - point[reference]):+.1f} | "
                         f"{100 * low:+.1f} – {100 * high:+.1f} | {float(np.mean(delta > 0)):.2f} |")
    if STUDENT in systems:
        student_p50 = _p50(systems[STUDENT], ids)
        for teacher in TEACHERS:
            if teacher in systems and student_p50:
                lines.append(f"| p50 latency, {teacher} / {STUDENT} | {_p50(systems[teacher], ids) / student_p50:.1f}× "
                             "| | |")
    return [*lines, ""]


def _p50(rows: dict[str, dict], ids: list[str]) -> float:
    latencies = [rows[i]["latency_s"] for i in ids if not rows[i].get("error")]
    return statistics.median(latencies) if latencies else 0.0


def report(run: Path, resamples: int = 10_000, seed: int = 0,
           comparisons: tuple[tuple[str, str], ...] = COMPARISONS) -> str:
    lines = [f"# Paired bootstrap over `{run}`", "",
             f"{resamples:,} resamples of the examples (seed {seed}), micro-averaged relation F1 per resample.", ""]
    for dataset in sorted(p for p in run.iterdir() if p.is_dir()):
        systems = {p.parent.name: read_rows(p) for p in sorted(dataset.glob(f"*/{ROWS}"))}
        systems = {s: rows for s, rows in systems.items() if rows}
        if systems:
            lines += dataset_section(dataset.name, systems, resamples, seed, comparisons)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="compare.py --out folder (or rows exported by bench/rows.py)")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--difference", nargs=2, action="append", metavar=("SYSTEM", "REFERENCE"),
                        help="report SYSTEM − REFERENCE (repeatable; default: the comparison issue's goals)")
    args = parser.parse_args()
    comparisons = tuple(map(tuple, args.difference)) if args.difference else COMPARISONS
    text = report(args.run, args.resamples, args.seed, comparisons)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
