"""Stage 4: the (optimized) teacher labels real conversation; the labels become a `datasets.Dataset` for the student.

A labelling run is long and may be killed at any point. Every finished label is appended to `labels.jsonl` and
fsynced before the next starts; a run started again skips the ids already there, so a kill loses at most the
utterance in flight and duplicates nothing. The data set on disk is rebuilt from that file, filtered for quality.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm.auto import tqdm

from hotmem.errors import ConfigurationError, InvalidInputError
from hotmem.io import JsonlLog, write_atomic
from hotmem.names import is_grounded, normalize_name
from hotmem.pipeline.resources import peak_rss_gb
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Entity, Graph, Relation, Turn, as_turns, render_turns, speakers_of

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.jsonl"
DATASET_DIR = "dataset"
REPORT_FILE = "report.json"


class Utterance(BaseModel):
    """One unit to label: an utterance, or a few turns with speakers."""

    id: str
    turns: list[Turn]
    source: str = ""
    #: A human annotation of the utterance: the labels are scored against it (`LabelReport.against_reference`).
    reference: Graph | None = None
    #: The predicates the annotation can hold (a corpus mapped onto part of the schema); None: all of the schema's.
    annotates: list[str] | None = None


def _from_mapping(item: dict[str, Any], fallback_id: str, source: str) -> Utterance:
    if "turns" in item:
        turns = as_turns([Turn(**t) if isinstance(t, dict) else t for t in item["turns"]])
    elif "text" in item:
        turns = as_turns(item["text"], speaker=item.get("speaker"))
    else:
        raise InvalidInputError(f"{source}: item {fallback_id} has neither 'text' nor 'turns'")
    return Utterance(id=str(item.get("id") or fallback_id), turns=turns, source=source)


def read_corpus(source: str | os.PathLike | Iterable[Any], limit: int | None = None) -> Iterator[Utterance]:
    """Utterances from a text file (one per line), a JSONL file (`text` or `turns`, optional `id` and `speaker`),
    a `datasets.Dataset` or any iterable of strings, dicts or `Utterance`s. Ids are stable across runs: resuming
    depends on them."""
    count = 0

    def items() -> Iterator[Utterance]:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InvalidInputError(f"no corpus file at {path}")
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    fallback = f"{path.stem}-{number:07d}"
                    if path.suffix == ".jsonl":
                        try:
                            item = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise InvalidInputError(f"{path}:{number}: not JSON ({exc.msg})") from exc
                        yield _from_mapping(item, fallback, path.name)
                    else:
                        yield Utterance(id=fallback, turns=as_turns(line.strip()), source=path.name)
            return
        for number, item in enumerate(source):
            fallback = f"item-{number:07d}"
            if isinstance(item, Utterance):
                yield item
            elif isinstance(item, str):
                yield Utterance(id=fallback, turns=as_turns(item), source="iterable")
            elif isinstance(item, dict):
                yield _from_mapping(item, fallback, "iterable")
            else:
                raise InvalidInputError(f"cannot label a {type(item).__name__} (item {number})")

    for utterance in items():
        if limit is not None and count >= limit:
            return
        count += 1
        yield utterance


def annotated_utterances(source: str, path: str | None = None, *, schema: RelationSchema = CONVERSATION_SCHEMA,
                         seed: int | None = None) -> list[Utterance]:
    """The utterances of an annotated mixture source in `schema` or part of it (`gold`, `personaext-conversation`,
    `dialogre-conversation`, `conll04-conversation`: training parts only), each with its annotation as `reference`,
    so a labelling run measures its labels against people's (`LabelReport.against_reference`). `seed` shuffles
    them (a `--limit` then takes a fair sample); ids stay the records' own, so a run resumes either way."""
    from hotmem.pipeline.mixture import SOURCES

    if source not in SOURCES or source == "labels":
        raise InvalidInputError(f"no annotated corpus {source!r}; known: {sorted(set(SOURCES) - {'labels'})}")
    utterances = []
    for record, record_schema in SOURCES[source].read(path):
        if not set(record_schema.predicates) <= set(schema.predicates):
            raise InvalidInputError(f"{source} is annotated in its own schema ({record_schema.name!r}), not in "
                                    f"{schema.name!r}: label a corpus mapped onto it, e.g. {source}-conversation")
        annotates = None if set(record_schema.predicates) == set(schema.predicates) else list(record_schema.predicates)
        utterances.append(Utterance(id=record.id, turns=record.turns, source=source, reference=record.graph,
                                    annotates=annotates))
    if seed is not None:
        random.Random(seed).shuffle(utterances)
    return utterances


@dataclass
class LabelConfig:
    """How a corpus is labelled and which labels are kept."""

    out_dir: str = "runs/labels"
    #: Drop an example when any relation's confidence is below this (the teacher gives 0.5 to an ungrounded
    #: endpoint and x0.7 to a type mismatch).
    min_confidence: float = 0.7
    require_schema_valid: bool = True
    require_grounded: bool = True
    #: True: take the offending entities and relations out of a label and keep the rest. False: drop the whole
    #: label. Dropping whole labels mostly drops the ones with relations (61% of 310 ConvAI2 labels kept, 33 of
    #: them with a relation, against 59 with cleaning), which teaches the student to leave relations out.
    clean_items: bool = True
    #: Concurrent requests. Useful against a served LM (vLLM, Ollama, llama.cpp server); the in-process model
    #: answers one call at a time whatever this says.
    threads: int = 1
    limit: int | None = None
    #: Self-consistency: with sampled labels beside the main one (`label_corpus(..., samplers=...)`), keep the
    #: facts at least this many of all the labels state; None: a majority. Changing it on a rerun re-filters the
    #: stored samples without labelling again.
    agree: int | None = None
    #: Self-consistency checked: instead of `agree`, keep the facts whose support (`vote`) reaches this, from the
    #: share of labels stating them and the teacher's verify step run once on their union (stored with the label).
    min_support: float | None = None


@dataclass
class LabelReport:
    """What a run did: counts per outcome and per filter, and throughput."""

    labelled: int = 0
    failed: int = 0
    kept: int = 0
    #: Labels left out, by reason (`failed`, and with `clean_items=False` each problem).
    dropped: dict[str, int] = field(default_factory=dict)
    #: Entities and relations taken out of kept labels, by reason (with `clean_items=True`).
    removed: dict[str, int] = field(default_factory=dict)
    kept_with_relations: int = 0
    #: Utterances of the corpus (within `limit`) left out because one with the same words was labelled.
    repeated: int = 0
    #: Relation precision / recall of the labels against the utterances' annotations, where they have one
    #: (`reference_scores`).
    against_reference: dict[str, Any] | None = None
    seconds_this_run: float = 0.0
    labelled_this_run: int = 0
    output_tokens_this_run: int = 0
    #: Summed over the runs into this folder that labelled something: a resumed run adds to the earlier ones, a run
    #: that only rebuilds the data set (to vote again, with other filters) leaves them as they were.
    seconds: float = 0.0
    labelled_timed: int = 0
    output_tokens: int = 0
    sessions: int = 0
    #: Peak resident memory of the runs that labelled, the highest, GiB.
    peak_rss_gb: float = 0.0

    @property
    def utterances_per_minute(self) -> float:
        return 60 * self.labelled_timed / self.seconds if self.seconds else 0.0

    def add_run(self, seconds: float, labelled: int, output_tokens: int, earlier: dict[str, Any]) -> None:
        """Count this run (its figures also in `*_this_run`) on top of the earlier runs' (`earlier`: their report)."""
        self.seconds_this_run, self.labelled_this_run, self.output_tokens_this_run = seconds, labelled, output_tokens
        if "sessions" not in earlier and earlier.get("labelled_this_run"):  # a report from before the sums
            earlier = {"seconds": earlier["seconds_this_run"], "labelled_timed": earlier["labelled_this_run"],
                       "output_tokens": earlier["output_tokens_this_run"], "sessions": 1,
                       "peak_rss_gb": earlier.get("peak_rss_gb", 0.0)}
        ran = labelled > 0
        self.seconds = round(earlier.get("seconds", 0.0) + (seconds if ran else 0.0), 2)
        self.labelled_timed = earlier.get("labelled_timed", 0) + labelled
        self.output_tokens = earlier.get("output_tokens", 0) + output_tokens
        self.sessions = earlier.get("sessions", 0) + ran
        self.peak_rss_gb = max(earlier.get("peak_rss_gb", 0.0), peak_rss_gb() if ran else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "utterances_per_minute": round(self.utterances_per_minute, 2)}


#: The item-level reasons `clean_label` counts, as the label-level problems `label_problems` names (a dangling
#: relation is explained by the ungrounded entity it lost).
_PROBLEMS = {"schema_invalid_relation": "schema_invalid", "ungrounded_entity": "ungrounded",
             "low_confidence_relation": "low_confidence"}


def label_problems(
    graph: Graph, turns: Sequence[Turn], schema: RelationSchema, config: LabelConfig
) -> list[str]:
    """Why a label should not teach the student as it is (empty when it is fine). An empty graph is a valid label."""
    _, removed = clean_label(graph, turns, schema, config)
    return [problem for reason, problem in _PROBLEMS.items() if removed[reason]]


def clean_label(
    graph: Graph, turns: Sequence[Turn], schema: RelationSchema, config: LabelConfig
) -> tuple[Graph, Counter]:
    """The label without what should not teach the student, and how many items went for each reason.

    Ungrounded entities go, then relations that are schema-invalid, under `min_confidence`, or left without an
    endpoint (`dangling`)."""
    removed: Counter = Counter()
    text, speakers = render_turns(turns), speakers_of(turns)
    entities = []
    for entity in graph.entities:
        if config.require_grounded and not is_grounded(entity.name, text, speakers):
            removed["ungrounded_entity"] += 1
        else:
            entities.append(entity)
    types = {e.name: e.type for e in entities}
    relations = []
    for relation in graph.relations:
        if relation.subject not in types or relation.object not in types:
            removed["dangling_relation"] += 1
        elif config.require_schema_valid and not schema.allows(relation, types[relation.subject],
                                                                types[relation.object]):
            removed["schema_invalid_relation"] += 1
        elif relation.confidence < config.min_confidence:
            removed["low_confidence_relation"] += 1
        else:
            relations.append(relation)
    return graph.model_copy(update={"entities": entities, "relations": relations}), removed


def _fact(relation, speakers: Sequence[str], schema: RelationSchema) -> tuple[str, str, str]:
    """A relation as the fact it states: names normalised, one key however it is restated. An end named for the
    other one (`speaker has_pet speaker's dog`) is keyed as the bare mention (`dog`): labellers differ in whether
    they name unnamed kin and pets for their owner, and both state the same fact."""
    subject, obj = normalize_name(relation.subject, speakers), normalize_name(relation.object, speakers)
    obj = obj.removeprefix(f"{subject} 's ")
    subject = subject.removeprefix(f"{obj} 's ")
    return schema.fact(subject, relation.predicate, obj)


def vote(graphs: Sequence[Graph], agree: int | None = None, *, speakers: Sequence[str] = (),
         schema: RelationSchema = CONVERSATION_SCHEMA, stated: Sequence[dict[str, Any]] | None = None,
         min_support: float | None = None) -> Graph:
    """Self-consistency over several labels of one utterance: the facts at least `agree` of `graphs` state (names
    compared normalised, a fact however restated: `A parent_of B` = `B child_of A`), the entities they connect and
    the entities at least `agree` graphs name. Names, types and confidences come from the first graph that has them
    (the main label); the graph's confidence is the share of facts confirmed. `agree` None: a majority.

    `min_support` instead of `agree`: keep the facts whose support, the mean of the share of labels stating them and
    the check's probability that the input states them (`stated`, from `check_union`), reaches it; the entities a
    majority names stay."""
    if min_support is not None:
        if agree is not None:
            raise InvalidInputError("vote keeps facts by agree or by min_support, not both")
        if stated is None:
            raise InvalidInputError("min_support needs the check's probabilities (stated, from check_union)")
        if not 0.0 <= min_support <= 1.0:
            raise InvalidInputError(f"min_support is between 0 and 1, not {min_support!r}")
    agree = len(graphs) // 2 + 1 if agree is None else agree
    if not 1 <= agree <= len(graphs):
        raise InvalidInputError(f"agree must be between 1 and the number of labels, {len(graphs)}: got {agree}")
    probabilities = {_fact(Relation(subject=f["subject"], predicate=f["predicate"], object=f["object"]), speakers,
                           schema): f["stated"] for f in stated or ()}
    entities: dict[str, Entity] = {}
    entity_votes: Counter = Counter()
    first_statement: dict[tuple[str, str, str], Any] = {}
    fact_votes: Counter = Counter()
    for graph in graphs:
        named = {normalize_name(entity.name, speakers): entity for entity in graph.entities}
        for key, entity in named.items():
            entities.setdefault(key, entity)
        entity_votes.update(named.keys())
        facts = {}
        for relation in graph.relations:
            fact = _fact(relation, speakers, schema)
            facts.setdefault(fact, (normalize_name(relation.subject, speakers), relation,
                                    normalize_name(relation.object, speakers)))
        for fact, statement in facts.items():
            first_statement.setdefault(fact, statement)
        fact_votes.update(facts.keys())

    def kept_fact(fact: tuple[str, str, str], votes: int) -> bool:
        if min_support is None:
            return votes >= agree
        return (votes / len(graphs) + probabilities.get(fact, 0.0)) / 2 >= min_support

    relations, ends = [], set()
    for fact, votes in fact_votes.items():
        subject, relation, obj = first_statement[fact]
        if kept_fact(fact, votes) and subject in entities and obj in entities:
            ends.update((subject, obj))
            relations.append(relation.model_copy(update={"subject": entities[subject].name,
                                                         "object": entities[obj].name}))
    kept = [entity for key, entity in entities.items() if entity_votes[key] >= agree or key in ends]
    confidence = len(relations) / len(fact_votes) if fact_votes else 1.0
    return Graph(entities=kept, relations=relations, confidence=round(confidence, 3))


def union_checker(extractor, schema: RelationSchema = CONVERSATION_SCHEMA
                  ) -> Callable[[Sequence[Graph], Sequence[Turn]], list[dict[str, Any]]]:
    """`check_union` with `extractor`'s teacher's verify step, for the labels of some turns: what `min_support`
    votes with. Fails now, before any labelling, when the program has no verify step."""
    backend = getattr(extractor, "backend", extractor)
    if not getattr(getattr(backend, "program", None), "verifies", False):
        raise InvalidInputError("min_support checks the labels' facts with the teacher's verify step: use a program "
                                "that verifies (hotmem optimize --verify)")

    def checked(labels: Sequence[Graph], turns: Sequence[Turn]) -> list[dict[str, Any]]:
        return check_union(labels, partial(backend.stated_probabilities, turns), speakers=speakers_of(turns),
                           schema=schema)

    return checked


def check_union(graphs: Sequence[Graph], check: Callable[[list[Relation]], list[float]], *,
                speakers: Sequence[str] = (), schema: RelationSchema = CONVERSATION_SCHEMA) -> list[dict[str, Any]]:
    """Every fact any of `graphs` states, once, with `check`'s probability that the input states it (a teacher's
    verify step: `TeacherBackend.stated_probabilities`), as `vote(..., stated=)` reads them and rows keep them."""
    union = vote(graphs, 1, speakers=speakers, schema=schema).relations
    probabilities = check(union) if union else []
    return [{"subject": r.subject, "predicate": r.predicate, "object": r.object, "stated": round(p, 4)}
            for r, p in zip(union, probabilities)]


def _voted(item: dict[str, Any], graph: Graph, turns: Sequence[Turn], schema: RelationSchema,
           config: LabelConfig, removed: Counter) -> Graph:
    """The facts enough of an item's labels agree on (the main label alone when it has no samples)."""
    if not item.get("samples"):
        return graph
    labels_of_item = [graph] + [Graph.model_validate(sample) for sample in item["samples"]]
    if config.min_support is not None and item.get("stated") is None:
        raise InvalidInputError(f"{item['id']} was labelled without min_support: its facts were not checked "
                                "together; label into a new folder")
    voted = vote(labels_of_item, config.agree, speakers=speakers_of(turns), schema=schema,
                 stated=item.get("stated") if config.min_support is not None else None,
                 min_support=config.min_support)
    facts = [{_fact(r, speakers_of(turns), schema) for r in g.relations} for g in (graph, voted)]
    removed["unconfirmed_relation"] += len(facts[0] - facts[1])
    return voted


def kept_label(item: dict[str, Any], schema: RelationSchema, config: LabelConfig,
               dropped: Counter | None = None, removed: Counter | None = None) -> Graph | None:
    """What the data set keeps of one stored label (after the vote and the filters), or None when it drops it;
    why is counted into `dropped` (whole labels) and `removed` (items)."""
    dropped = Counter() if dropped is None else dropped
    removed = Counter() if removed is None else removed
    if item.get("error"):
        dropped["failed"] += 1
        return None
    turns = [Turn(**t) for t in item["turns"]]
    graph = _voted(item, Graph.model_validate(item["graph"]), turns, schema, config, removed)
    if config.clean_items:
        graph, removed_here = clean_label(graph, turns, schema, config)
        removed.update(removed_here)
        return graph
    problems = label_problems(graph, turns, schema, config)
    dropped.update(problems)
    return None if problems else graph


def build_dataset(labels: Iterable[dict[str, Any]], schema: RelationSchema, config: LabelConfig):
    """The kept labels as a `datasets.Dataset` (columns id, text, turns, graph as JSON), the counts of labels
    dropped and of items removed, by reason."""
    from datasets import Dataset

    rows, dropped, removed = [], Counter(), Counter()
    for item in labels:
        graph = kept_label(item, schema, config, dropped, removed)
        if graph is None:
            continue
        rows.append({"id": item["id"], "text": render_turns([Turn(**t) for t in item["turns"]]),
                     "turns": item["turns"], "graph": graph.to_json(), "n_relations": len(graph.relations),
                     "source": item.get("source", "")})
    dataset = Dataset.from_list(rows) if rows else Dataset.from_dict(
        {"id": [], "text": [], "turns": [], "graph": [], "n_relations": [], "source": []}
    )
    return dataset, {k: v for k, v in dropped.items() if v}, {k: v for k, v in removed.items() if v}


def reference_scores(labels: Iterable[dict[str, Any]], schema: RelationSchema,
                     config: LabelConfig) -> dict[str, Any] | None:
    """Relation precision / recall / F1 of the stored labels that have an annotation (`Utterance.reference`),
    micro-averaged, at three stages: `label` (the teacher's main label as it came), `filtered` (through the
    filters), `kept` (what the data set keeps: voted over the samples, then filtered; a dropped label counts as
    empty). Matching is the evaluation's (`score_graph`). Predictions of predicates the annotation cannot hold
    (`Utterance.annotates`) are left out. An annotation may state fewer facts than the utterance (PersonaExt: one a
    line): precision is then a lower bound. None when no label has an annotation."""
    from hotmem.pipeline.metric import prf, score_graph

    counts = {stage: [0, 0, 0] for stage in ("label", "filtered", "kept")}  # correct, predicted, annotated
    scored = 0
    for item in labels:
        if item.get("reference") is None:
            continue
        scored += 1
        turns = [Turn(**t) for t in item["turns"]]
        text, speakers = render_turns(turns), speakers_of(turns)
        main = Graph() if item.get("error") else Graph.model_validate(item["graph"])
        stages = {"label": main, "filtered": clean_label(main, turns, schema, config)[0],
                  "kept": kept_label(item, schema, config) or Graph()}
        for stage, graph in stages.items():
            score = score_graph(Graph.model_validate(item["reference"]), graph, text=text, speakers=speakers,
                                schema=schema, scored_predicates=item.get("annotates"))
            for i, n in enumerate((score.relation_tp, score.relation_pred, score.relation_gold)):
                counts[stage][i] += n
    if not scored:
        return None
    result: dict[str, Any] = {"utterances": scored}
    for stage, (correct, predicted, annotated) in counts.items():
        p, r, f = prf(correct, predicted, annotated)
        result[stage] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "correct": correct,
                         "predicted": predicted, "annotated": annotated}
    return result


def _save_dataset(dataset, target: Path) -> None:
    """Save beside the target, then swap, so a reader never sees half a data set."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    dataset.save_to_disk(str(staging))
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def total_usage(extractors: Sequence[Any]) -> dict[str, int]:
    """The calls and tokens the extractors' LMs have answered so far, each LM counted once: labels on one LM (the
    main label and its demo pages, `TeacherBackend.with_demo_page`) would count its whole history once each."""
    by_lm: dict[int, Any] = {}
    for extractor in extractors:
        backend = getattr(extractor, "backend", extractor)
        by_lm.setdefault(id(getattr(backend, "lm", backend)), extractor)
    usages = [extractor.usage() for extractor in by_lm.values()]
    return {key: sum(int(usage.get(key, 0)) for usage in usages) for key in ("calls", "prompt_tokens", "output_tokens")}


def _words(turns: Sequence[Turn | dict[str, Any]]) -> tuple[tuple[str | None, str], ...]:
    """What an utterance says, for spotting a repeat: each turn's speaker and words, case and spacing aside."""
    turns = [Turn(**turn) if isinstance(turn, dict) else turn for turn in turns]
    return tuple((turn.speaker, " ".join(turn.text.split()).casefold()) for turn in turns)


def label_corpus(
    extractor,
    utterances: Iterable[Utterance],
    *,
    schema: RelationSchema = CONVERSATION_SCHEMA,
    config: LabelConfig | None = None,
    samplers: Sequence[Any] = (),
    progress: bool = True,
) -> LabelReport:
    """Label every utterance not yet in `out_dir/labels.jsonl` with `extractor` (a `GraphExtractor`, usually on the
    teacher), then write the filtered data set and a report. A killed run started again loses and repeats nothing.
    An utterance with the same words as one labelled already is left out (`LabelReport.repeated`).

    `samplers`: more extractors (the teacher sampling at a temperature, e.g. on `lm.copy(rollout_id=i,
    temperature=0.7)`, or greedy on another page of its retrieved demos, `TeacherBackend.with_demo_page`) whose
    labels are stored beside the main one; the data set keeps the facts `config.agree` of them state (`vote`), or
    with `config.min_support` those the extractor's verify step, run once on the union of the labels, supports
    (`check_union`; build the extractors with the check off, `TeacherBackend(check=False)`: it would check each
    label's facts again)."""
    config = config or LabelConfig()
    if config.min_support is not None and not samplers:
        raise InvalidInputError("min_support votes over several labels: pass samplers")
    check = union_checker(extractor, schema) if config.min_support is not None else None
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(out / LABELS_FILE)
    earlier_runs = json.loads((out / REPORT_FILE).read_text()) if (out / REPORT_FILE).is_file() else {}
    labels: dict[str, dict[str, Any]] = {}
    for item in log:
        labels.setdefault(item["id"], item)
    todo, seen = [], set(labels)
    said = {_words(item["turns"]) for item in labels.values()}
    repeated = 0
    for utterance in read_corpus(utterances, config.limit):
        if utterance.id in seen:
            continue
        seen.add(utterance.id)
        words = _words(utterance.turns)
        if words in said:  # labelled once already (chat corpora repeat "hi , how are you ?", personas repeat)
            repeated += 1
            continue
        said.add(words)
        todo.append(utterance)
    if labels:
        logger.info("resuming: %d labels already in %s, %d to go", len(labels), log.path, len(todo))

    write_lock = threading.Lock()
    everyone = [extractor, *samplers]
    before = total_usage(everyone)["output_tokens"]
    started = time.perf_counter()
    done_now = 0

    def label_one(utterance: Utterance) -> dict[str, Any]:
        try:
            graph, error = extractor(utterance.turns), None
            samples = [sampler(utterance.turns) for sampler in samplers]
            stated = None if check is None else check([graph, *samples], utterance.turns)
            samples = [sample.model_dump() for sample in samples]
        except ConfigurationError:
            raise  # nothing will label: stop at once
        except Exception as exc:  # a failed label is recorded (and filtered), not fatal to the run
            logger.warning("%s failed: %s", utterance.id, exc)
            graph, samples, stated, error = Graph(), [], None, f"{type(exc).__name__}: {exc}"[:300]
        item = {"id": utterance.id, "source": utterance.source,
                "turns": [t.model_dump() for t in utterance.turns], "graph": graph.model_dump(), "error": error}
        if samplers:
            item["samples"] = samples
        if stated is not None:
            item["stated"] = stated
        if utterance.reference is not None:
            item["reference"] = utterance.reference.model_dump()
            if utterance.annotates is not None:
                item["annotates"] = utterance.annotates
        return item

    with log.writer() as write, tqdm(total=len(todo), desc="labelling", unit="utt", disable=not progress) as bar:

        def keep(item: dict[str, Any]) -> None:
            nonlocal done_now
            with write_lock:
                write(item)
                labels[item["id"]] = item
                done_now += 1
                bar.update(1)

        if config.threads > 1:
            with ThreadPoolExecutor(config.threads) as pool:
                for item in pool.map(label_one, todo):
                    keep(item)
        else:
            for utterance in todo:
                keep(label_one(utterance))

    dataset, dropped, removed = build_dataset(labels.values(), schema, config)
    _save_dataset(dataset, out / DATASET_DIR)
    after = total_usage(everyone)["output_tokens"]
    report = LabelReport(
        labelled=len(labels),
        failed=sum(1 for item in labels.values() if item.get("error")),
        kept=len(dataset),
        dropped=dropped,
        removed=removed,
        kept_with_relations=sum(1 for n in dataset["n_relations"] if n) if len(dataset) else 0,
        against_reference=reference_scores(labels.values(), schema, config),
        repeated=repeated,
    )
    report.add_run(round(time.perf_counter() - started, 2), done_now, after - before, earlier_runs)
    write_atomic(out / REPORT_FILE, json.dumps(report.to_dict(), indent=1) + "\n")
    logger.info("labels: %s", report.to_dict())
    return report


def load_labels(out_dir: str | os.PathLike):
    """The filtered data set a labelling run saved."""
    from datasets import load_from_disk

    return load_from_disk(str(Path(out_dir) / DATASET_DIR))
