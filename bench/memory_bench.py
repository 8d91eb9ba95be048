"""hotmem.memory bookkeeping: p50/p95 of `add` (ready graphs, no model) and `about()` at 1k / 10k / 100k stored
facts, on DuckDB and PostgreSQL; and a duplicate-entity check over DialogRE's train dialogues chained as sessions.

    python bench/memory_bench.py                                     # DuckDB only
    python bench/memory_bench.py --postgres postgresql://u@127.0.0.1:5432/db   # and PostgreSQL (emptied first)
    python bench/memory_bench.py --dialogre ../shared/data/dialogre/v2_en/train.json
    python bench/memory_bench.py --baseline ../hotmem-old        # and an older checkout's memory, interleaved

Synthetic data: people who live in one of 1,000 cities and work at one of 2,000 organisations (functional: a new
value ends the old fact), like things, visit places and befriend each other. The store is filled through
`Memory.add` in batches of 500 relations; a timed add is one utterance of three relations by a known speaker (one
functional change, one new like, one friend), a timed `about()` an utterance naming two people and a city. Adds are
timed twice: by the process that filled the store (a sole DuckDB writer answers reads from what its earlier adds
taught it) and again after reopening it (that knowledge starts empty). With `--baseline`, another checkout's memory
package runs beside this one on its own store, fed the same graphs, the two taking turns add by add (the first to go
alternates): on a shared machine both figures then see the same moments. DialogRE (research-only data) is read in
place and never copied.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from hotmem.memory import Memory
from hotmem.names import snake_case
from hotmem.types import Entity, Graph, Relation

CITIES, ORGS, THINGS = 1_000, 2_000, 5_000
FACTS_PER_PERSON = 10
BATCH = 500
_FILLERS = (("lives_in", "City", CITIES, "LOCATION"), ("works_at", "Org", ORGS, "ORGANIZATION"),
            ("likes", "Thing", THINGS, "MISC"), ("visited", "City", CITIES, "LOCATION"),
            ("friends_with", "Person", None, "PERSON"))


def _graph(relations: list[tuple[str, str, str, str]]) -> Graph:
    entities = {}
    for subject, _, obj, kind in relations:
        entities.setdefault(subject, Entity(name=subject, type="PERSON"))
        entities.setdefault(obj, Entity(name=obj, type=kind))
    return Graph(entities=list(entities.values()),
                 relations=[Relation(subject=s, predicate=p, object=o, confidence=0.9) for s, p, o, _ in relations])


class Synthetic:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.people = 0
        self.clock = datetime(2020, 1, 1)

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=30)
        return self.clock

    def filler(self, n: int) -> Graph:
        relations = []
        while len(relations) < n:
            self.people += 1
            person = f"Person {self.people}"
            for _ in range(FACTS_PER_PERSON):
                predicate, prefix, pool, kind = self.rng.choice(_FILLERS)
                pool = pool or self.people
                relations.append((person, predicate, f"{prefix} {self.rng.randrange(pool)}", kind))
        return _graph(relations[:n])

    def utterance(self) -> tuple[str, str, Graph]:
        rng = self.rng
        speaker = f"Person {rng.randrange(1, self.people + 1)}"
        city, thing, friend = rng.randrange(CITIES), rng.randrange(THINGS), rng.randrange(1, self.people + 1)
        text = f"I moved to City {city}, I really like Thing {thing}, and Person {friend} is my friend."
        graph = _graph([("I", "lives_in", f"City {city}", "LOCATION"), ("I", "likes", f"Thing {thing}", "MISC"),
                        ("I", "friends_with", f"Person {friend}", "PERSON")])
        return speaker, text, graph

    def question(self) -> str:
        rng = self.rng
        return (f"Did Person {rng.randrange(1, self.people + 1)} and Person {rng.randrange(1, self.people + 1)} "
                f"meet in City {rng.randrange(CITIES)} last year?")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 2), "n": len(ordered)}


def _facts(memory: Memory) -> int:
    return memory.stats()["facts"]


def _baseline_memory(checkout: Path) -> type:
    """`Memory` from another checkout's `hotmem.memory`, loaded beside this one (the rest of hotmem is shared)."""
    import hotmem

    ours = {name: module for name, module in sys.modules.items() if name.startswith("hotmem.memory")}
    for name in ours:
        del sys.modules[name]
    hotmem.__path__.insert(0, str(checkout.resolve() / "hotmem"))
    try:
        return importlib.import_module("hotmem.memory").Memory
    finally:
        hotmem.__path__.pop(0)
        for name in [n for n in sys.modules if n.startswith("hotmem.memory")]:
            del sys.modules[name]
        sys.modules.update(ours)
        hotmem.memory = ours["hotmem.memory"]


def _timed(memories: dict[str, Memory], seconds: dict[str, list[float]], i: int, method: str, *args, **kwargs):
    """The same call on every memory, timed; who goes first alternates with `i`. Returns what this code returned."""
    for label in list(memories)[:: 1 if i % 2 == 0 else -1]:
        t = time.perf_counter()
        returned = getattr(memories[label], method)(*args, **kwargs)
        seconds[label].append(time.perf_counter() - t)
        if label == "this":
            result = returned
    return result


def _time_adds(memories: dict[str, Memory], data: Synthetic, timed: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {label: [] for label in memories}
    for i in range(timed):
        speaker, text, graph = data.utterance()
        at = data.tick()
        _timed(memories, seconds, i, "add", text, graph=graph, speaker=speaker, session=f"chat {i % 20}", at=at)
    return seconds


def bench_store(targets: dict[str, tuple[type, str]], sizes: list[int], timed: int) -> list[dict]:
    """Fill and time the memories of `targets` (label -> Memory class and store) with the same data."""
    rows = []
    data = Synthetic()
    memories = {label: memory(target) for label, (memory, target) in targets.items()}
    try:
        for size in sizes:
            started = time.perf_counter()
            while (stored := _facts(next(iter(memories.values())))) < size:
                graph, at = data.filler(min(BATCH, size - stored)), data.tick()
                for memory in memories.values():
                    memory.add(graph=graph, session="fill", at=at)
            fill = time.perf_counter() - started
            for memory in memories.values():
                if memory.store == "postgresql":  # fresh statistics, as autovacuum would give a long-lived database
                    memory._store.execute("ANALYZE")
            adds = _time_adds(memories, data, timed)
            abouts: dict[str, list[float]] = {label: [] for label in memories}
            found = [len(_timed(memories, abouts, i, "about", data.question())) for i in range(timed)]
            for label, (memory, target) in targets.items():
                memories[label].close()
                memories[label] = memory(target)
            reopened = _time_adds(memories, data, timed)
            for label, memory in memories.items():
                stats = memory.stats()
                row = {"code": label, "store": memory.store, "facts": stats["facts"],
                       "valid_facts": stats["valid_facts"], "entities": stats["entities"], "fill_s": round(fill, 1),
                       "add": _percentiles(adds[label]), "add_reopened": _percentiles(reopened[label]),
                       "about": _percentiles(abouts[label]), "about_facts_mean": round(statistics.mean(found), 1)}
                if label != "this":  # paired: each add of this code over the same add by the other, next to it
                    row["this_over_it"] = {
                        "add_p50": round(statistics.median(a / b for a, b in zip(adds["this"], adds[label])), 3),
                        "add_reopened_p50": round(statistics.median(
                            a / b for a, b in zip(reopened["this"], reopened[label])), 3)}
                print(f"{label:8} {row['store']:10} {row['facts']:>7} facts  add p50 {row['add']['p50_ms']:6.2f} ms "
                      f"p95 {row['add']['p95_ms']:6.2f} ms  reopened p50 {row['add_reopened']['p50_ms']:6.2f} ms "
                      f"p95 {row['add_reopened']['p95_ms']:6.2f} ms   about p50 {row['about']['p50_ms']:6.2f} ms "
                      f"p95 {row['about']['p95_ms']:6.2f} ms  ({row['about_facts_mean']} facts)   fill {fill:.0f} s",
                      flush=True)
                rows.append(row)
    finally:
        for memory in memories.values():
            memory.close()
    return rows


def _empty_postgres(dsn: str, schema: str | None = None) -> str:
    """Drop the memory tables of `dsn` (or of its `schema`, created if need be); the URL to reach them."""
    import psycopg

    if schema is not None:
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        dsn += ("&" if "?" in dsn else "?") + f"options=-csearch_path%3D{schema}"
    with psycopg.connect(dsn, autocommit=True) as con:
        for table in ("hm_meta", "hm_entities", "hm_aliases", "hm_facts", "hm_mentions", "hm_merges", "hm_sessions"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute("DROP SEQUENCE IF EXISTS hm_ids")
    return dsn


# ------------------------------------------------------------------------------------------------ DialogRE


_TYPES = {"PER": "PERSON", "ORG": "ORGANIZATION", "GPE": "LOCATION", "LOC": "LOCATION", "STRING": "MISC",
          "VALUE": "QUANTITY"}


def _local(name: str, dialogue: int) -> str:
    """A transcript label ("Speaker 2") names someone else in every dialogue: make it dialogue-local."""
    return f"{name} of dialogue {dialogue}" if name.lower().startswith("speaker ") else name


def dialogre_check(path: Path, target: str) -> dict:
    """Chain the dialogues as sessions, add their annotated relations as ready graphs, and count people the memory
    splits in two (duplicates) and separate people it merges, against DialogRE's own identity links (the same name,
    or `per:alternate_names`)."""
    from hotmem.memory.text import entity_key

    dialogues = json.loads(path.read_text(encoding="utf-8"))
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    adds, times, person_keys = 0, [], set()
    clock = datetime(2020, 1, 1)
    with Memory(target) as memory:
        for number, (turns, labelled) in enumerate(dialogues):
            relations, entities = [], {}
            for a in labelled:
                x, y = _local(a["x"], number), _local(a["y"], number)
                entities.setdefault(x, Entity(name=x, type=_TYPES.get(a["x_type"], "MISC")))
                entities.setdefault(y, Entity(name=y, type=_TYPES.get(a["y_type"], "MISC")))
                for r in a["r"]:
                    predicate = "alternate_names" if r == "per:alternate_names" else snake_case(r.split(":")[-1])
                    if predicate == "unanswerable":
                        continue
                    relations.append(Relation(subject=x, predicate=predicate, object=y))
                    if predicate == "alternate_names":
                        parent[find(entity_key(x, None))] = find(entity_key(y, None))
                for name, kind in ((x, a["x_type"]), (y, a["y_type"])):
                    if kind == "PER":
                        person_keys.add(entity_key(name, None))
            text = "\n".join(turns)
            clock += timedelta(hours=1)
            t = time.perf_counter()
            memory.add(text, graph=Graph(entities=list(entities.values()), relations=relations),
                       session=f"dialogue {number}", at=clock, extractor="dialogre-gold")
            times.append(time.perf_counter() - t)
            adds += 1
        # gold people: clusters of person names; memory entities: what each name resolves to
        clusters: dict[str, set[str]] = defaultdict(set)
        for key in person_keys:
            clusters[find(key)].add(key)
        resolved = {key: memory.resolve(key) for key in person_keys}
        split = []
        for members in clusters.values():
            entities_of = {resolved[k] for k in members if resolved[k] is not None}
            if len(entities_of) > 1:
                split.append(sorted(entities_of))
        by_entity: dict[str, set[str]] = defaultdict(set)
        for key, entity in resolved.items():
            if entity is not None:
                by_entity[entity].add(find(key))
        merged = {e: sorted(c) for e, c in by_entity.items() if len(c) > 1}
        stats = memory.stats()
        merge_reasons: dict[str, int] = defaultdict(int)
        for m in memory.merges():
            merge_reasons[m.reason] += 1
    result = {
        "dialogues": adds, "facts": stats["facts"], "entities": stats["entities"],
        "person_names": len(person_keys), "gold_people": len(clusters),
        # counts only: DialogRE is research-only data, none of its text goes into results
        "people_split_into_duplicates": len(split),
        "memory_entities_joining_gold_people": len(merged),
        "merges_by_reason": dict(merge_reasons), "add": _percentiles(times),
    }
    print(f"DialogRE: {adds} dialogues, {result['gold_people']} people ({len(person_keys)} names): "
          f"{len(split)} split into duplicates, {len(merged)} memory entities join gold people "
          f"(first-name folds beyond DialogRE's links); add p50 {result['add']['p50_ms']} ms", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--timed", type=int, default=200, help="timed adds and about() calls per size")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL to measure too (its hm_ tables are dropped)")
    parser.add_argument("--no-duckdb", action="store_true")
    parser.add_argument("--dialogre", type=Path, default=None, help="DialogRE train.json for the duplicate check")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another hotmem checkout whose memory runs interleaved with this one (PostgreSQL: in "
                             "schema hm_baseline)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args(argv)
    results: dict = {"when": datetime.now().isoformat(timespec="seconds"), "sizes": args.sizes,
                     "timed": args.timed, "python": sys.version.split()[0], "stores": []}
    baseline = _baseline_memory(args.baseline) if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="hotmem-memory-bench-") as tmp:
        if not args.no_duckdb:
            targets = {"this": (Memory, str(Path(tmp) / "bench.duckdb"))}
            if baseline:
                targets["baseline"] = (baseline, str(Path(tmp) / "baseline.duckdb"))
            results["stores"] += bench_store(targets, args.sizes, args.timed)
        if args.postgres:
            targets = {"this": (Memory, _empty_postgres(args.postgres))}
            if baseline:
                targets["baseline"] = (baseline, _empty_postgres(args.postgres, "hm_baseline"))
            results["stores"] += bench_store(targets, args.sizes, args.timed)
        if args.dialogre:
            results["dialogre"] = dialogre_check(args.dialogre, str(Path(tmp) / "dialogre.duckdb"))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
