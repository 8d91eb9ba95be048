"""Schema alignment: a declarative map from another corpus's predicates to a hotmem schema's, shipped as data.

A map (`hotmem/alignments/<source>/<target schema>.json`) decides for each predicate of the source corpus: it becomes
one of our predicates (optionally with subject and object swapped, and with a fixed type for the source tail), or it
stays out (`null`) because none of ours means the same. Listing the ones left out makes each a decision, not an
omission. The demonstration pool, labelling and evaluation read corpora through the same map, so they agree.

    alignment = SchemaAlignment.load("personaext")   # onto the built-in conversation schema
    alignment.map_graph(record.graph)             # a PersonaExt gold graph in hotmem-conversation predicates
    alignment.coverage(records)["kept"]           # how many of a corpus's triples carry over, schema-valid

A map holds our decisions keyed by the source's predicate names, never the corpus itself: its inventory is read where
the data lies (`expand`), and no text, entity or triple of it is stored here.

Runtime-side: imports only the contract modules (no data loaders, no DSPy, no torch).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from hotmem.errors import AlignmentNotFoundError, SchemaMismatchError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Entity, Graph, Record, Relation

__all__ = [
    "AlignmentNotFoundError",
    "PredicateMapping",
    "SchemaAlignment",
    "StaleAlignmentWarning",
    "shipped_alignments",
]

#: Schemas a shipped map may name as its target without the caller passing one.
_KNOWN_TARGETS: dict[str, RelationSchema] = {CONVERSATION_SCHEMA.name: CONVERSATION_SCHEMA}


class StaleAlignmentWarning(UserWarning):
    """The target schema changed since the map was written (its fingerprint differs): review the map."""


class PredicateMapping(BaseModel):
    """Where one source predicate goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    predicate: str = Field(min_length=1, description="Target schema predicate.")
    #: Type given to the source triple's tail (its object), wherever it ends up after a flip. None keeps the type
    #: the graph already has (for sources whose objects mix types, e.g. titles, genres and artists).
    tail_type: str | None = None
    #: Swap subject and object: the source's tail becomes the subject ("i have_chidren son" -> "son child_of i").
    flip: bool = False


class Rule(BaseModel):
    """Source predicates matching a glob pattern (`like_*`) go where `predicate` says (None: they stay out)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: str
    predicate: str | None
    tail_type: str | None = None
    flip: bool = False
    #: type the tail by the source predicate's last word (`like_food` -> FOOD) through the map's suffix table
    typed_by_suffix: bool = False


class SchemaAlignment(BaseModel):
    """A map from a source corpus's predicates to a target schema's. The contract of `hotmem/alignments/*/*.json`.

    Loading checks the map against the target schema and fails with `SchemaMismatchError` when a target predicate or
    entity type does not exist, or a `tail_type` is not one the target predicate allows at that end: such a map
    would produce invalid labels. The target schema's fingerprint is stored too; when it differs at load the map
    still loads but a `StaleAlignmentWarning` is issued (or `SchemaMismatchError` with `strict=True`). A warning,
    not an error, because the fingerprint changes with any rewording or new predicate anywhere in the schema; the
    structural checks above already catch every change that makes the map produce invalid triples, while a
    reworded description only calls for a human review (re-run the review, then update `target_fingerprint`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    target: str
    target_fingerprint: str | None = None
    description: str = ""
    #: Source predicates by name: a mapping, or None when it stays out. Listed names win over `rules`.
    predicates: dict[str, PredicateMapping | None] = Field(default_factory=dict)
    #: Ordered rules (first match wins) for the names not listed: a map need not copy the source's inventory, which
    #: is read where the corpus lies (`expand`). Unmatched names stay out.
    rules: list[Rule] = Field(default_factory=list)
    #: Last word of a source predicate -> tail type, for rules with `typed_by_suffix`.
    tail_types_by_suffix: dict[str, str] = Field(default_factory=dict)
    #: Why, for the decisions that are not obvious (free text, keyed by one or more source predicates).
    notes: dict[str, str] = Field(default_factory=dict)

    _schema: RelationSchema | None = PrivateAttr(default=None)

    # loading -----------------------------------------------------------------
    @classmethod
    def load(
        cls, name_or_path: str | Path, schema: RelationSchema | None = None, *, strict: bool = False
    ) -> SchemaAlignment:
        """The shipped map from a source corpus (`"personaext"`) onto `schema`, or a JSON file by path; checked
        against `schema`.

        `schema` defaults to the built-in schema the map names as its target (for a shipped map: the conversation
        schema).
        """
        text, where = _read(name_or_path, schema.name if schema is not None else CONVERSATION_SCHEMA.name)
        try:
            alignment = cls.model_validate_json(text)
        except ValidationError as exc:
            raise SchemaMismatchError(f"{where}: not a valid schema alignment: {exc}") from None
        return alignment.bind(schema, strict=strict, where=where)

    def bind(self, schema: RelationSchema | None = None, *, strict: bool = False, where: str = "") -> SchemaAlignment:
        """Check the map against its target schema and remember the schema (`load` does this)."""
        where = where or f"{self.source}->{self.target} alignment"
        if schema is None:
            schema = _KNOWN_TARGETS.get(self.target)
            if schema is None:
                raise SchemaMismatchError(
                    f"{where}: target schema {self.target!r} is not built in; pass schema=... to load()"
                )
        elif schema.name != self.target:
            raise SchemaMismatchError(f"{where}: written for schema {self.target!r}, not {schema.name!r}")
        problems = list(self._problems(schema))
        if problems:
            raise SchemaMismatchError(f"{where}: does not fit schema {schema.name!r}: " + "; ".join(problems))
        fingerprint = schema.fingerprint()
        if self.target_fingerprint and self.target_fingerprint != fingerprint:
            message = (
                f"{where}: written for {self.target!r} fingerprint {self.target_fingerprint}, the schema is now "
                f"{fingerprint}; its predicates still exist, but review the map and update target_fingerprint"
            )
            if strict:
                raise SchemaMismatchError(message)
            warnings.warn(message, StaleAlignmentWarning, stacklevel=3)
        self._schema = schema
        return self

    def _problems(self, schema: RelationSchema) -> Iterable[str]:
        targets = dict(self.predicates)
        for rule in self.rules:
            if rule.predicate is None:
                continue
            types = [rule.tail_type] if rule.tail_type or not rule.typed_by_suffix else sorted(
                set(self.tail_types_by_suffix.values()))
            for tail_type in types or [None]:
                targets[f"{rule.match} ({tail_type})"] = PredicateMapping(predicate=rule.predicate,
                                                                          tail_type=tail_type, flip=rule.flip)
        for source, mapping in targets.items():
            if mapping is None:
                continue
            spec = schema.get(mapping.predicate)
            if spec is None:
                yield f"{source} -> {mapping.predicate!r}, which is not a predicate of the schema"
                continue
            if mapping.tail_type is None:
                continue
            if mapping.tail_type not in schema.entity_types:
                yield f"{source}: tail_type {mapping.tail_type!r} is not an entity type of the schema"
                continue
            allowed = spec.head_types if mapping.flip else spec.tail_types
            if allowed and mapping.tail_type not in allowed:
                end = "subject" if mapping.flip else "object"
                yield f"{source} -> {mapping.predicate}: {mapping.tail_type} is not an allowed {end} type {allowed}"

    @property
    def schema(self) -> RelationSchema:
        """The target schema the map was checked against."""
        if self._schema is None:
            self.bind()
        assert self._schema is not None
        return self._schema

    # lookups -----------------------------------------------------------------
    @property
    def mapped(self) -> dict[str, PredicateMapping]:
        return {k: v for k, v in self.predicates.items() if v is not None}

    @property
    def unmapped(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.predicates.items() if v is None)

    @property
    def targets(self) -> tuple[str, ...]:
        """The target predicates the map can produce, in the target schema's order: what a mapped corpus annotates
        (`schema.restrict(alignment.targets)` is the part of the schema its labels speak for)."""
        named = {m.predicate for m in self.mapped.values()} | {r.predicate for r in self.rules if r.predicate}
        return tuple(p for p in self.schema.predicates if p in named)

    def produces(self, source_predicates: Iterable[str]) -> tuple[str, ...]:
        """The target predicates these source predicates map to, in the target schema's order: what a corpus whose
        data uses them annotates. A rule for a predicate the data never uses adds none (PersonaExt's schema.json
        lists `has_profession`, its data never uses it: a mapped PersonaExt line says nothing about `works_as`)."""
        named = {mapping.predicate for mapping in map(self.mapping, set(source_predicates)) if mapping is not None}
        return tuple(p for p in self.schema.predicates if p in named)

    def lists(self, predicate: str) -> bool:
        """Whether the map decides this source predicate (by name or by a rule)."""
        return predicate in self.predicates or any(fnmatch.fnmatchcase(predicate, r.match) for r in self.rules)

    def mapping(self, predicate: str) -> PredicateMapping | None:
        """The mapping of a source predicate; None when it stays out or the map does not decide it."""
        if predicate in self.predicates:
            return self.predicates[predicate]
        rule = next((r for r in self.rules if fnmatch.fnmatchcase(predicate, r.match)), None)
        if rule is None or rule.predicate is None:
            return None
        tail_type = rule.tail_type
        if tail_type is None and rule.typed_by_suffix and "_" in predicate:
            tail_type = self.tail_types_by_suffix.get(predicate.rsplit("_", 1)[1])
        return PredicateMapping(predicate=rule.predicate, tail_type=tail_type, flip=rule.flip)

    def expand(self, source_predicates: Iterable[str]) -> SchemaAlignment:
        """The map with every source predicate listed (the corpus's inventory, read where the data lies), decided by
        name or rule: what `mapped`, `unmapped` and coverage reports enumerate."""
        listed = {name: self.mapping(name) for name in source_predicates}
        expanded = self.model_copy(update={"predicates": {**listed, **self.predicates}})
        expanded._schema = self._schema
        return expanded

    def map_relation(self, relation: Relation) -> Relation | None:
        """The relation in the target schema's predicates (flipped when the map says so), or None."""
        mapping = self.mapping(relation.predicate)
        if mapping is None:
            return None
        subject, obj = (relation.object, relation.subject) if mapping.flip else (relation.subject, relation.object)
        return Relation(subject=subject, predicate=mapping.predicate, object=obj, confidence=relation.confidence)

    # graphs ------------------------------------------------------------------
    def map_graph(
        self,
        graph: Graph,
        schema: RelationSchema | None = None,
        *,
        keep_orphans: bool = True,
        tally: Counter | None = None,
    ) -> Graph:
        """The graph in the target schema: mapped relations kept, the rest dropped, tails retyped per the map.

        Every kept relation is schema-valid (`schema.allows(relation, head_type, tail_type)`); a mapped relation
        that is not (a head of the wrong type, say "we" typed MISC for a PERSON-only predicate) is dropped and
        counted as `invalid`; a fact already kept (the same triple, or its symmetric or inverse restatement: DialogRE
        lists both) is counted as `duplicate`, one edge per fact as assembly keeps it. Entities kept: the endpoints
        of kept relations, plus (`keep_orphans`) entities that were in no relation of the input. Entities that only
        took part in dropped relations go: as labels they would teach extracting things nothing is said about.
        `tally`, when given, is updated with one count per input relation under its outcome (`kept`, `unmapped`,
        `invalid`, `duplicate`), plus `triples`, `mapped` and `unlisted` (not in the map at all; also counted as
        `unmapped`).
        """
        mapped_graph, outcomes = self._align(graph, schema or self.schema, keep_orphans)
        if tally is not None:
            for relation, outcome in zip(graph.relations, outcomes):
                tally["triples"] += 1
                tally[outcome] += 1
                if outcome != "unmapped":
                    tally["mapped"] += 1
                elif not self.lists(relation.predicate):
                    tally["unlisted"] += 1
        return mapped_graph

    def _align(self, graph: Graph, schema: RelationSchema, keep_orphans: bool) -> tuple[Graph, list[str]]:
        """The mapped graph and, per input relation, what became of it."""
        types = {e.name.casefold(): e.type for e in graph.entities}
        retyped: dict[str, str] = {}  # first retype of an entity wins; a relation that disagrees is invalid
        mapped: list[Relation | None] = []
        for relation in graph.relations:
            mapping = self.mapping(relation.predicate)
            mapped.append(self.map_relation(relation))
            if mapping is not None and mapping.tail_type is not None:
                retyped.setdefault(relation.object.casefold(), mapping.tail_type)

        added: dict[str, str] = {}  # endpoints the input does not list as entities: the type they get

        def type_of(name: str) -> str | None:
            key = name.casefold()
            return retyped.get(key) or types.get(key) or added.get(key)

        def guessed(allowed: tuple[str, ...]) -> str:
            return allowed[0] if len(allowed) == 1 else "MISC"

        kept: list[Relation] = []
        said: set[tuple[str, str, str]] = set()
        outcomes: list[str] = []
        for relation, new in zip(graph.relations, mapped):
            if new is None:
                outcomes.append("unmapped")
                continue
            forced = self.mapping(relation.predicate).tail_type  # type: ignore[union-attr]
            spec = schema.get(schema.canonical(new.predicate) or "")
            head = type_of(new.subject) or guessed(spec.head_types if spec else ())
            tail = type_of(new.object) or guessed(spec.tail_types if spec else ())
            conflicting = forced is not None and retyped.get(relation.object.casefold()) != forced
            if conflicting or not schema.allows(new, head, tail):
                outcomes.append("invalid")
            elif new.triple in said:  # two source predicates, or a fact and its inverse, land on one fact
                outcomes.append("duplicate")
            else:
                kept.append(new)
                outcomes.append("kept")
                # one edge per fact, as assembly keeps it: its symmetric or inverse restatement is the same fact
                said.add(new.triple)
                inverse = schema.inverse_of(new.predicate)
                if inverse:
                    said.add((new.object, inverse, new.subject))
                for name, type_ in ((new.subject, head), (new.object, tail)):
                    if name.casefold() not in types:
                        added.setdefault(name.casefold(), type_)

        endpoints = {name.casefold() for r in kept for name in (r.subject, r.object)}
        in_relations = {name.casefold() for r in graph.relations for name in (r.subject, r.object)}
        entities: list[Entity] = []
        seen: set[str] = set()
        for entity in graph.entities:
            key = entity.name.casefold()
            if key in seen or not (key in endpoints or (keep_orphans and key not in in_relations)):
                continue
            seen.add(key)
            new_type = retyped.get(key) if key in endpoints else None
            entities.append(entity.model_copy(update={"type": new_type}) if new_type else entity)
        for relation in kept:  # endpoints the input graph did not list as entities
            for name in (relation.subject, relation.object):
                if name.casefold() not in seen:
                    seen.add(name.casefold())
                    entities.append(Entity(name=name, type=type_of(name) or "MISC", confidence=relation.confidence))
        return Graph(entities=entities, relations=kept, confidence=graph.confidence), outcomes

    def coverage(self, graphs: Iterable[Graph | Record], schema: RelationSchema | None = None) -> dict[str, Any]:
        """How much of a corpus the map carries over, counted in triples (`Record`s are read through `.graph`).

        Totals: `graphs`, `graphs_with_mapped` (graphs keeping at least one relation), `triples`, `mapped`,
        `unmapped`, `invalid` (mapped but not schema-valid, dropped), `duplicate`, `kept`. Then `by_source` (per
        source predicate: its target and the same counts), `by_target` (kept triples per target predicate) and
        `unlisted` (source predicates the map does not list, with counts: the map needs a decision for them).
        """
        schema = schema or self.schema
        keys = ("triples", "mapped", "unmapped", "invalid", "duplicate", "kept")
        totals: Counter = Counter()
        by_source: dict[str, Counter] = {}
        by_target: Counter = Counter()
        unlisted: Counter = Counter()
        for item in graphs:
            graph = item.graph if isinstance(item, Record) else item
            mapped_graph, outcomes = self._align(graph, schema, keep_orphans=True)
            totals["graphs"] += 1
            totals["graphs_with_mapped"] += bool(mapped_graph.relations)
            by_target.update(r.predicate for r in mapped_graph.relations)
            for relation, outcome in zip(graph.relations, outcomes):
                row = by_source.setdefault(relation.predicate, Counter())
                for counter in (row, totals):
                    counter["triples"] += 1
                    counter[outcome] += 1
                    counter["mapped"] += outcome != "unmapped"
                if not self.lists(relation.predicate):
                    unlisted[relation.predicate] += 1
        return {
            "source": self.source,
            "target": self.target,
            "graphs": totals["graphs"],
            "graphs_with_mapped": totals["graphs_with_mapped"],
            **{key: totals[key] for key in keys},
            "by_source": {
                predicate: {"target": _target(self.mapping(predicate)), **{key: row[key] for key in keys}}
                for predicate, row in sorted(by_source.items(), key=lambda kv: (-kv[1]["triples"], kv[0]))
            },
            "by_target": dict(sorted(by_target.items(), key=lambda kv: (-kv[1], kv[0]))),
            "unlisted": dict(sorted(unlisted.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _target(mapping: PredicateMapping | None) -> str | None:
    return mapping.predicate if mapping is not None else None


# --------------------------------------------------------------------------- shipped maps


def shipped_alignments(target: str = CONVERSATION_SCHEMA.name) -> tuple[str, ...]:
    """The source corpora with a shipped map onto the schema named `target`."""
    folder = _folder()
    if folder is None:
        return ()
    return tuple(sorted(source.name for source in folder.iterdir()
                        if source.is_dir() and source.joinpath(f"{target}.json").is_file()))


def _folder():
    try:
        folder = resources.files("hotmem").joinpath("alignments")
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return folder if folder.is_dir() else None


def _read(name_or_path: str | Path, target: str) -> tuple[str, str]:
    """The map's text and where it came from: a path when one exists there, else the shipped map of a source."""
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.suffix == ".json" or len(path.parts) > 1:
        if not path.is_file():
            raise AlignmentNotFoundError(f"no schema alignment file at {path}")
        return path.read_text(encoding="utf-8"), str(path)
    folder = _folder()
    file = folder.joinpath(str(name_or_path), f"{target}.json") if folder is not None else None
    if file is None or not file.is_file():
        raise AlignmentNotFoundError(
            f"no shipped map from {str(name_or_path)!r} onto schema {target!r}; shipped sources: "
            f"{', '.join(shipped_alignments(target)) or 'none'}"
        )
    return file.read_text(encoding="utf-8"), f"alignments/{name_or_path}/{target}.json"
