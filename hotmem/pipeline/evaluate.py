"""Evaluate an extraction program on annotated records: quality, validity, latency and cost in one table.

Each finished example is appended to `rows.jsonl` in the output folder, so an interrupted evaluation resumes
where it stopped; the report files are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import dspy
from tqdm.auto import tqdm

from hotmem.backends import TeacherBackend
from hotmem.errors import ConfigurationError, InvalidInputError
from hotmem.extractor import GraphExtractor
from hotmem.io import JsonlLog, write_atomic
from hotmem.pipeline.label import total_usage, union_checker, vote
from hotmem.pipeline.metric import GraphScore, prf, score_graph
from hotmem.schema import RelationSchema
from hotmem.types import Graph, Record, render_turns, speakers_of

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One evaluated example: counts behind the scores, cost, and the predicted graph."""

    id: str
    category: str | None
    entity: tuple[int, int, int]  # true positives, predicted, gold
    relation: tuple[int, int, int]
    triple: int
    valid_relations: int
    latency_s: float
    lm_calls: int
    output_tokens: int
    error: str | None = None
    graph: dict = field(default_factory=dict)
    #: With self-consistency: every label voted over, the main one first (`graph` is their vote), so a rescore can
    #: vote again with another `agree` without running anything.
    samples: list[dict] | None = None
    #: With `min_support`: each fact of the samples, once, with the verify step's probability (`check_union`).
    stated: list[dict] | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 for no values): how every hotmem report states p95."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Report:
    """Aggregates over rows (micro-averaged F1)."""

    name: str
    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        n = len(rows) or 1
        ent = [sum(r.entity[i] for r in rows) for i in range(3)]
        rel = [sum(r.relation[i] for r in rows) for i in range(3)]
        ep, er, ef = prf(*ent)
        rp, rr, rf = prf(*rel)
        _, _, tf = prf(sum(r.triple for r in rows), rel[1], rel[2])
        latencies = [r.latency_s for r in rows if r.error is None]
        by_category: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            by_category[r.category or "-"].append(r)
        return {
            "examples": len(rows),
            "failures": sum(r.error is not None for r in rows),
            "entity_p": ep, "entity_r": er, "entity_f1": ef,
            "relation_p": rp, "relation_r": rr, "relation_f1": rf,
            "triple_f1": tf,
            "schema_valid_rate": (sum(r.valid_relations for r in rows) / rel[1]) if rel[1] else 1.0,
            "latency_p50_s": statistics.median(latencies) if latencies else 0.0,
            "latency_p95_s": percentile(latencies, 0.95),
            "lm_calls_per_example": sum(r.lm_calls for r in rows) / n,
            "output_tokens_per_example": sum(r.output_tokens for r in rows) / n,
            "relation_f1_by_category": {
                c: prf(sum(r.relation[0] for r in rs), sum(r.relation[1] for r in rs), sum(r.relation[2] for r in rs))[2]
                for c, rs in sorted(by_category.items())
            },
        }

    def markdown(self) -> str:
        s = self.summary()
        lines = [
            f"### {self.name}",
            "",
            "| examples | failures | entity P / R / F1 | relation P / R / F1 | triple F1 | schema-valid | "
            "p50 / p95 latency (s) | LM calls / ex | output tokens / ex |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {s['examples']} | {s['failures']} | {s['entity_p']:.3f} / {s['entity_r']:.3f} / {s['entity_f1']:.3f} | "
            f"{s['relation_p']:.3f} / {s['relation_r']:.3f} / {s['relation_f1']:.3f} | {s['triple_f1']:.3f} | "
            f"{s['schema_valid_rate']:.3f} | {s['latency_p50_s']:.2f} / {s['latency_p95_s']:.2f} | "
            f"{s['lm_calls_per_example']:.2f} | {s['output_tokens_per_example']:.1f} |",
            "",
            "| category | relation F1 |",
            "|---|---|",
            *[f"| {c} | {f:.3f} |" for c, f in s["relation_f1_by_category"].items()],
        ]
        if self.meta:
            lines += ["", "```", json.dumps(self.meta, indent=1, default=str), "```"]
        return "\n".join(lines)


def _load_rows(log: JsonlLog) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for data in log:
        data["entity"], data["relation"] = tuple(data["entity"]), tuple(data["relation"])
        rows[data["id"]] = Row(**data)
    return rows


def as_extractor(program, lm: dspy.BaseLM | None = None) -> GraphExtractor:
    """What evaluation runs: a `GraphExtractor`, a `Backend`, or a DSPy program on `lm`, all through the extractor's
    one chunk / merge / error path (as an app runs them), with no input-length limit."""
    if isinstance(program, GraphExtractor):
        return program
    if isinstance(program, dspy.Module):
        if lm is None:
            raise ConfigurationError("a DSPy program is evaluated on an LM: pass lm=")
        program = TeacherBackend(program, lm)
    return GraphExtractor(backend=program, max_chars=10**9)


def evaluate_program(
    program,
    records: Sequence[Record],
    *,
    schema: RelationSchema,
    lm: dspy.BaseLM | None = None,
    name: str = "evaluation",
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    rescore: bool = False,
    samplers: Sequence[GraphExtractor] = (),
    agree: int | None = None,
    min_support: float | None = None,
) -> Report:
    """Run `program` on every record (resuming from `out_dir/rows.jsonl`) and aggregate a `Report`.

    `program`: a `GraphExtractor`, any `Backend` (a `Student`, a `TeacherBackend`), or a DSPy program run on `lm`.
    A configuration error (a model that is not installed) stops the run at once; any other failure is counted.
    `rescore`: score the graphs already in `out_dir` against the records as they are now (after a change to a
    loader or the metric) instead of keeping their scores; the program runs only on records not yet done.
    `samplers`: self-consistency as `hotmem label` applies it: more extractors (the program sampling at a
    temperature, or on another page of retrieved demos) whose graphs are voted with the main one, keeping the facts
    `agree` of them state (None: a majority). A rescore votes the stored samples again with the `agree` given.
    `min_support` instead of `agree`: the program's verify step checks the samples' facts once, together, and the
    vote keeps those it supports (`hotmem.pipeline.label.vote`); a rescore checks stored samples that were not.
    """
    if min_support is not None and agree is not None:
        raise InvalidInputError("keep facts by agree or by min_support, not both")
    if rescore and not out_dir:
        raise InvalidInputError("rescore re-reads the graphs of an earlier run: pass its out_dir")
    if agree is not None and not 1 <= agree <= len(samplers) + 1 and not rescore:
        raise InvalidInputError(f"agree must be between 1 and the number of labels, {len(samplers) + 1}: got {agree}")
    extractor = as_extractor(program, lm)
    check = union_checker(extractor, schema) if min_support is not None else None

    def checked(labels: list[Graph], record: Record) -> list[dict] | None:
        """The labels' facts, once, with the verify step's probabilities, when `min_support` votes with them."""
        return None if check is None else check(labels, record.turns)

    vote_as = partial(_voted, schema=schema, agree=agree, min_support=min_support, checked=checked)
    log = JsonlLog(Path(out_dir) / "rows.jsonl") if out_dir else None
    done = _load_rows(log) if log else {}
    if done:
        logger.info("resuming %s: %d of %d examples already done", name, len(done), len(records))
    if rescore and done:
        if bare := [key for key, row in done.items() if not row.graph]:
            raise InvalidInputError(f"{log.path}: {len(bare)} rows keep no graph to rescore (first: {bare[0]})")
        if agree is not None and not any(row.samples for row in done.values()):
            raise InvalidInputError(f"{log.path}: no row holds samples to vote over with agree={agree}")
        by_id = {record.id: record for record in records}
        done = {key: _score(by_id[key], *vote_as(row, by_id[key]), schema) if key in by_id else row
                for key, row in done.items()}
        write_atomic(log.path, "".join(json.dumps(asdict(row), ensure_ascii=False, default=str) + "\n"
                                       for row in done.values()))
    with contextlib.ExitStack() as stack:
        write = stack.enter_context(log.writer()) if log else None
        for record in tqdm(records, desc=name, disable=not progress, unit="ex"):
            if record.id in done:
                continue
            row = _run_one(extractor, record, schema, samplers, checked, vote_as)
            done[record.id] = row
            if write:
                write(asdict(row))
    report = Report(name, [done[r.id] for r in records if r.id in done], meta or {})
    if out_dir:
        write_atomic(Path(out_dir) / "report.md", report.markdown() + "\n")
        write_atomic(Path(out_dir) / "report.json", json.dumps({"summary": report.summary(), "meta": report.meta},
                                                                indent=1, default=str))
    return report


def _usage(extractors: Sequence[GraphExtractor]) -> tuple[int, int]:
    usage = total_usage(extractors)
    return usage["calls"], usage["output_tokens"]


def _run_one(extractor: GraphExtractor, record: Record, schema: RelationSchema,
             samplers: Sequence[GraphExtractor], checked: Callable[[list[Graph], Record], list[dict] | None],
             vote_as: Callable[[Row, Record], tuple[Graph, Row]]) -> Row:
    everyone = [extractor, *samplers]
    calls_before, tokens_before = _usage(everyone)
    started = time.perf_counter()
    error, samples, stated = None, None, None
    try:
        graph = extractor(record.turns)
        if samplers:
            labels = [graph] + [sampler(record.turns) for sampler in samplers]
            samples, stated = [label.model_dump() for label in labels], checked(labels, record)
    except ConfigurationError:
        raise
    except Exception as exc:  # an evaluation counts failures instead of stopping
        logger.warning("%s failed: %s", record.id, exc)
        error, graph, samples, stated = f"{type(exc).__name__}: {exc}"[:500], Graph(), None, None
    latency = time.perf_counter() - started
    calls_after, tokens_after = _usage(everyone)
    run = Row(id=record.id, category=record.category, entity=(0, 0, 0), relation=(0, 0, 0), triple=0,
              valid_relations=0, latency_s=round(latency, 3), lm_calls=calls_after - calls_before,
              output_tokens=tokens_after - tokens_before, error=error, samples=samples, stated=stated)
    return _score(record, *vote_as(run, record) if samples else (graph, run), schema)


def _voted(row: Row, record: Record, *, schema: RelationSchema, agree: int | None, min_support: float | None,
           checked: Callable[[list[Graph], Record], list[dict] | None]) -> tuple[Graph, Row]:
    """The graph a row scores (its labels' vote when it holds samples, else its graph), and the row, with the
    samples' facts checked when `min_support` needs it and it has not been done."""
    if not row.samples:
        return Graph.model_validate(row.graph), row
    samples = [Graph.model_validate(sample) for sample in row.samples]
    if min_support is not None and row.stated is None:
        row = replace(row, stated=checked(samples, record))
    return vote(samples, agree, speakers=speakers_of(record.turns), schema=schema, min_support=min_support,
                stated=row.stated if min_support is not None else None), row


def _score(record: Record, graph: Graph, run: Row, schema: RelationSchema) -> Row:
    """`run` (its cost and error) with `graph` scored against `record`."""
    result: GraphScore = score_graph(
        record.graph, graph, text=render_turns(record.turns), speakers=speakers_of(record.turns), schema=schema,
        scored_pairs=record.scored_pairs, scored_predicates=record.scored_predicates,
    )
    return replace(
        run,
        category=record.category,
        entity=(result.entity_tp, result.entity_pred, result.entity_gold),
        relation=(result.relation_tp, result.relation_pred, result.relation_gold),
        triple=result.triple_tp,
        valid_relations=result.schema_valid_relations,
        graph=graph.model_dump(),
    )
