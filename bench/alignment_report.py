"""How much of PersonaExt the shipped schema alignment carries into the conversation schema (no model runs).

    python bench/alignment_report.py                      # writes bench/results/alignment-personaext/README.md
    python bench/alignment_report.py --data ../shared/data/personaext/dev.jsonl --out runs/alignment-report.md

Counts triples of `dev.jsonl` (all of it, then the slices the project uses: lines 1-1,000 evaluation, 1,001-2,000
GEPA validation, 2,001 on training) that the map sends to one of our predicates, that stay out, and that are then
schema-valid under our endpoint types. Only counts and predicate names are written: PersonaExt is research-only, so
none of its text goes into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from pathlib import Path

from hotmem.alignment import SchemaAlignment
from hotmem.names import is_pronoun
from hotmem.schema import CONVERSATION_SCHEMA

MAP = "personaext"
OUT = Path(__file__).resolve().parent / "results" / "alignment-personaext" / "README.md"
#: (label, first line, last line or None) of dev.jsonl, 1-based and inclusive.
SLICES = (
    ("all", 1, None),
    ("evaluation (lines 1-1,000)", 1, 1000),
    ("GEPA validation (lines 1,001-2,000)", 1001, 2000),
    ("training (lines 2,001-)", 2001, None),
)
TOP = 20


def _default_data() -> Path:
    from hotmem.data import find_data_root

    root = find_data_root()
    if root is None:
        raise SystemExit("no data root found: pass --data path/to/personaext/dev.jsonl (or set HOTMEM_DATA_DIR)")
    return root / "personaext" / "dev.jsonl"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(data: Path) -> str:
    from hotmem.data import load_personaext, personaext_schema

    # the map decides by rules; PersonaExt's own inventory is read where the data lies
    alignment = SchemaAlignment.load(MAP).expand(personaext_schema(data).predicates)
    records = load_personaext(data)
    lines = sum(1 for line in data.open(encoding="utf-8") if line.strip())
    if len(records) != lines:  # slices are by line number: one record per non-empty line
        raise SystemExit(f"{data}: {len(records)} records for {lines} lines; cannot slice by line")
    digest = hashlib.sha256(data.read_bytes()).hexdigest()[:12]

    out: list[str] = []
    w = out.append
    w("# PersonaExt -> hotmem-conversation: how many triples the schema alignment maps\n")
    w(
        f"Map `hotmem/alignments/{MAP}/hotmem-conversation.json` "
        f"(target fingerprint `{alignment.target_fingerprint}`, schema now "
        f"`{CONVERSATION_SCHEMA.fingerprint()}`), data `personaext/dev.jsonl` ({len(records):,} lines, "
        f"sha256 `{digest}`). Made by `python bench/alignment_report.py`; no model runs. Counts and predicate names "
        "only: PersonaExt is research-only, none of its text is copied here.\n"
    )

    targets = Counter(m.predicate for m in alignment.mapped.values())
    w("## The map\n")
    w(
        f"{len(alignment.predicates)} PersonaExt relations listed (105 in schema.json + "
        f"{len(alignment.predicates) - 105} used only in the data): **{len(alignment.mapped)} mapped** onto "
        f"{len(targets)} of our predicates, **{len(alignment.unmapped)} left out** (no predicate means the same).\n"
    )
    w("| our predicate | PersonaExt relations |")
    w("|---|---|")
    for target, _ in targets.most_common():
        sources = [
            f"`{s}`" + (" (flipped)" if m.flip else "") for s, m in alignment.mapped.items() if m.predicate == target
        ]
        w(f"| `{target}` | {', '.join(sources)} |")
    w("")
    w(f"Left out: {', '.join(f'`{s}`' for s in alignment.unmapped)}.\n")
    w(
        "A triple is **mapped** when its relation has a target; **kept** when the mapped triple is also schema-valid "
        "(`CONVERSATION_SCHEMA.allows` with the loader's head type and the map's tail type, or the loader's where the "
        "map sets none); **invalid** ones are dropped (in this data: all are heads the loader types MISC, pronouns "
        "like 'we' and 'us' or body parts, where our predicates want a PERSON). Each line of this file holds one "
        "triple, so records with a kept triple = kept triples.\n"
    )

    w("## Coverage\n")
    w("| slice | records | triples | mapped | kept (schema-valid) | invalid | unmapped | records with >= 1 kept |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    full = None
    for label, first, last in SLICES:
        chosen = records[first - 1 : last]
        c = alignment.coverage(chosen)
        full = full or c
        w(
            f"| {label} | {c['graphs']:,} | {c['triples']:,} | {c['mapped']:,} ({_pct(c['mapped'], c['triples'])}) | "
            f"{c['kept']:,} ({_pct(c['kept'], c['triples'])}) | {c['invalid']:,} | {c['unmapped']:,} | "
            f"{c['graphs_with_mapped']:,} ({_pct(c['graphs_with_mapped'], c['graphs'])}) |"
        )
    w("")
    assert full is not None
    w(
        f"Of the mapped triples, {_pct(full['kept'], full['mapped'])} are schema-valid. "
        f"Relations the map does not list: {full['unlisted'] or 'none'}.\n"
    )

    annotated = alignment.produces(r.predicate for record in records for r in record.graph.relations)
    idle = [t for t in alignment.targets if t not in annotated]
    unused = [s for s, m in alignment.mapped.items() if m.predicate in idle]
    w(
        f"`personaext-conversation` annotates the {len(annotated)} of our predicates its triples map to "
        f"(`hotmem.data.mapped_predicates`; what evaluation scores and training may teach absent): "
        f"{', '.join(f'`{t}`' for t in annotated)}. The map's rules could produce {len(idle)} more, "
        f"{', '.join(f'`{t}`' for t in idle)}, from PersonaExt relations schema.json lists but no line of the data "
        f"uses ({', '.join(f'`{u}`' for u in unused)}): no line says anything about those.\n"
    )

    w(f"## Kept triples per target predicate (all {len(records):,} lines)\n")
    w("| our predicate | kept |")
    w("|---|---:|")
    for target, count in full["by_target"].items():
        w(f"| `{target}` | {count:,} |")
    w("")

    rows = list(full["by_source"].items())
    w(f"## Top {TOP} PersonaExt relations mapped (all lines)\n")
    w("| PersonaExt relation | -> ours | triples | kept | invalid |")
    w("|---|---|---:|---:|---:|")
    for source, row in [r for r in rows if r[1]["target"]][:TOP]:
        w(f"| `{source}` | `{row['target']}` | {row['triples']:,} | {row['kept']:,} | {row['invalid']:,} |")
    w("")
    w(f"## Top {TOP} PersonaExt relations left out (all lines)\n")
    w("| PersonaExt relation | triples |")
    w("|---|---:|")
    for source, row in [r for r in rows if not r[1]["target"]][:TOP]:
        w(f"| `{source}` | {row['triples']:,} |")
    w("")

    pronouns = Counter()
    for record in records:
        for relation in alignment.map_graph(record.graph).relations:
            if is_pronoun(relation.object) or is_pronoun(relation.subject):
                pronouns[relation.predicate] += 1
    w("## Caveats\n")
    w(
        "- The map is judged per relation, not per triple: PersonaExt's own labels are noisy (e.g. some "
        "`like_activity` objects are not activities), and that noise passes through on mapped relations."
    )
    w(
        f"- {sum(pronouns.values())} kept triples still have a pronoun endpoint (e.g. an object 'it'); the map does "
        "not rename entities, so drop those where labels are built."
    )
    w(
        "- Entity names stay as the loader writes them (counts and bare kin words in names), not our gold's naming "
        "('speaker's sister'); `map_graph` changes predicates and types only."
    )
    clashes = []
    for source, mapping in alignment.predicates.items():
        synonym_of = CONVERSATION_SCHEMA.canonical(source)
        if synonym_of and synonym_of != (mapping.predicate if mapping else None):
            clashes.append(f"`{source}` -> `{synonym_of}` (map: {f'`{mapping.predicate}`' if mapping else 'out'})")
    if clashes:
        w(
            "- `CONVERSATION_SCHEMA`'s synonyms read some PersonaExt names differently from the map: "
            + ", ".join(clashes)
            + ". The map follows the predicate descriptions and the gold's convention (a "
            "stated liking is `likes`; `eats`/`practices` are for doing it). Anything that canonicalises PersonaExt "
            "names through the schema instead of the map gets the other answer."
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="PersonaExt dev.jsonl (default: from the data root)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    text = report(args.data or _default_data())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
