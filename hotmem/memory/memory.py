"""`Memory`: conversation in, a temporal knowledge graph out, on DuckDB (embedded) or PostgreSQL (shared).

Each `add` extracts a graph (outside any transaction: the model is slow), then merges it in one transaction:
names resolve to entities (normalised names, the speaker, aliases, kinship), facts are strengthened or opened,
functional predicates and negations end the facts they replace, and every mention keeps its provenance.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hotmem.errors import InvalidInputError
from hotmem.memory.models import AddResult, Fact, Mention, Merge
from hotmem.memory.store import Cache, Store, marks, open_store
from hotmem.memory.text import (
    ALIAS_PREDICATES,
    KIN_WORDS,
    POSSESSIVE,
    NegatedClause,
    entity_key,
    kin_said_of,
    name_candidates,
    negated_clauses,
    predicate_cues,
    says,
    split_possessive,
)
from hotmem.names import SPEAKER, is_grounded, names_nothing, normalize_name, snake_case
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Entity, Graph, Relation, Turn, as_turns

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SESSION", "Memory"]

DEFAULT_SESSION = "default"

_FACT_COLUMNS = (
    "f.id, s.name, f.predicate, o.name, s.type, o.type, f.valid_from, f.valid_to, f.ended_by, f.mentions, "
    "f.confidence, f.max_confidence, f.first_seen, f.last_seen, f.scope"
)
_FACT_NAMES = "JOIN hm_entities s ON s.id = f.subject_id JOIN hm_entities o ON o.id = f.object_id"
_FACT_FROM = f"hm_facts f {_FACT_NAMES}"
_MENTION_COLUMNS = "fact_id, session, turn, speaker, text, said_at, extractor, model_version, confidence"
_LABEL_PREFIX = "speaker"  # "Speaker 2": a transcript's label; a real name found later replaces it for display


def _facts_by(column: str, ids: Sequence[Any]) -> str:
    """The facts whose `column` is one of `ids`, as a subquery to filter further: its OFFSET 0 keeps other filters
    above the index lookup, since DuckDB scans the whole table rather than use an index for a scan with more filters
    than the indexed one."""
    return f"(SELECT * FROM hm_facts WHERE {column} IN {marks(ids)} OFFSET 0)"


def _one_of(keys: set[str]) -> Callable[[str], bool]:
    """Whether a key is one of `keys` or a name through one ("anna 's sister", "anna 's sister 's husband")."""
    owned = tuple(k + POSSESSIVE for k in keys)
    return lambda key: key in keys or key.startswith(owned)


def _may_say(columns: Sequence[str], keys: Iterable[str]) -> tuple[str, list[str]]:
    """A filter that keeps every row whose `columns` may say one of the name keys (`says` decides): each key's longest
    ASCII run of letters and digits, in the lower-cased column, so that the database scans and Python reads only the
    candidates. A key with no such run keeps every row; no keys, none."""
    stems = []
    for key in keys:
        runs = re.findall(r"[a-z0-9]+", key)
        if not runs:
            return "TRUE", []
        stem = max(runs, key=len)
        stems.append(stem.removesuffix("y"))  # "Henries" keys to "henry"
    tests = [f"strpos(lower({c}), ?) > 0" for c in columns for _ in stems]
    return "(" + (" OR ".join(tests) or "FALSE") + ")", [stem for _ in columns for stem in stems]


def _utc(value: datetime | date | str | None, what: str = "at") -> datetime:
    """Naive UTC, as stored. Naive inputs are taken as UTC."""
    if value is None:
        return datetime.now(UTC).replace(tzinfo=None)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError(f"{what} must be an ISO date or time, got {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, date or ISO string, got {type(value).__name__}")
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _name(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid Unicode text") from None
    return value


def _fact(row: Sequence[Any]) -> Fact:
    return Fact(
        id=row[0], subject=row[1], predicate=row[2], object=row[3], subject_type=row[4], object_type=row[5],
        valid_from=_aware(row[6]), valid_to=_aware(row[7]), ended_by=row[8], mentions=row[9],
        confidence=min(1.0, row[10]), max_confidence=min(1.0, row[11]), first_seen=_aware(row[12]),
        last_seen=_aware(row[13]), session=row[14],
    )


@dataclass(eq=False, slots=True)
class _Entity:
    id: int
    key: str
    name: str
    type: str


@dataclass(slots=True)
class _Open:
    """An open (valid) fact as the writer sees it."""

    id: int
    subject: int
    predicate: str
    object: int
    scope: str | None
    valid_from: datetime
    mentions: int
    confidence: float
    max_confidence: float
    first_seen: datetime
    last_seen: datetime
    valid_to: datetime | None = None
    ended_by: str | None = None


@dataclass
class _Said:
    """One relation of the incoming graph, with its turn."""

    relation: Relation
    turn: int
    speaker: str | None
    subject: _Entity | None = None
    object: _Entity | None = None
    predicate: str = ""
    swapped: bool = False  # the canonical predicate runs the other way: `object` is the relation's subject


@dataclass
class _Changes:
    added: dict[int, _Open] = field(default_factory=dict)
    strengthened: dict[int, _Open] = field(default_factory=dict)
    ended: dict[int, tuple[_Open, datetime, str]] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)
    negated: list[tuple[str, str, str]] = field(default_factory=list)


class _ExportLine(BaseModel):
    kind: str
    data: dict[str, Any]


class Memory:
    """A knowledge graph remembered across conversations.

    >>> memory = Memory("memory.duckdb")                 # or Memory("postgresql://user@host/db")
    >>> memory.add("I moved to Bergen.", speaker="Anna", session="s2")
    >>> memory.history("Anna", "lives_in")               # Oslo until s2, Bergen since

    `extractor` is any callable `(text_or_turns, speaker=...) -> Graph`; by default hotmem's `GraphExtractor()`,
    built on the first `add` that needs it. `first_names=True` folds a person's lone first name into the one stored
    person with that first name (and the other way round), when exactly one fits.

    The only writer of a DuckDB file keeps what its adds read and wrote (names, open facts; up to about 60 MB), so
    an add about things it has seen reads nothing; a second `Memory` writing the same file in this process turns
    that off while both are open.
    """

    def __init__(
        self,
        target: str | Path = "memory.duckdb",
        *,
        extractor: Callable[..., Graph] | None = None,
        schema: RelationSchema = CONVERSATION_SCHEMA,
        read_only: bool = False,
        first_names: bool = True,
    ) -> None:
        if not isinstance(target, (str, Path)) or not str(target).strip():
            raise InvalidInputError(f"a memory is a DuckDB file path or a postgresql:// URL, got {target!r}")
        self.schema = schema
        self.first_names = first_names
        self._extractor = extractor
        self._store: Store = open_store(target, read_only=read_only)
        self._functional = frozenset(schema.functional_predicates())
        self._symmetric = frozenset(p for p in schema.predicates if schema.get(p).symmetric)
        self._cues: dict[str, frozenset[str]] = {}

    # ------------------------------------------------------------------------------------------------ lifecycle
    @property
    def store(self) -> str:
        """`duckdb` or `postgresql`."""
        return self._store.kind

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Memory({self._store.target!r}, store={self.store!r})"

    @property
    def extractor(self) -> Callable[..., Graph]:
        if self._extractor is None:
            from hotmem import GraphExtractor

            self._extractor = GraphExtractor()
        return self._extractor

    def _extractor_info(self) -> tuple[str, str | None]:
        extractor = self._extractor
        backend = getattr(extractor, "backend", None) or type(extractor).__name__
        if not isinstance(backend, str):  # an engine object rather than its name
            backend = getattr(backend, "name", None) or type(backend).__name__
        version = getattr(extractor, "model_version", None)
        if version is None:
            lm = getattr(extractor, "lm", None)
            version = getattr(lm, "model", None) or getattr(getattr(extractor, "student", None), "name", None)
        return str(backend), (str(version) if version is not None else None)

    # ------------------------------------------------------------------------------------------------ add
    def add(
        self,
        text_or_turns: str | Turn | Sequence[Turn | dict | tuple[str, str]] | None = None,
        *,
        speaker: str | None = None,
        session: str = DEFAULT_SESSION,
        at: datetime | date | str | None = None,
        graph: Graph | dict | None = None,
        turn: int | None = None,
        persist: bool = True,
        extractor: str | None = None,
        model_version: str | None = None,
    ) -> AddResult:
        """Remember what was said: extract a graph from `text_or_turns` (or take `graph`, then the text is only
        provenance) and merge it, all in one transaction.

        `speaker` is who says it ("I", "me" and "my ..." are them; keep the same name across sessions), `at` when
        (default now; adds are expected in time order), `turn` the first turn's number in the session (default: the
        session's running count). `persist=False` keeps the facts in the session's working memory only, until
        `end_session`. `extractor` / `model_version` name where a ready `graph` came from. Bad input raises
        `InvalidInputError` and changes nothing.
        """
        session = _name(session, "session")
        speaker = _name(speaker, "speaker", optional=True)
        when = _utc(at)
        if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool) or turn < 0):
            raise InvalidInputError(f"turn must be a non-negative int, got {turn!r}")
        if text_or_turns is None and graph is None:
            raise InvalidInputError("add() needs text, turns or a graph")
        turns = as_turns(text_or_turns, speaker=speaker) if text_or_turns is not None else []
        turns = [t if t.speaker or not speaker else Turn(speaker=speaker, text=t.text) for t in turns]
        if graph is not None:
            if isinstance(graph, dict):
                try:
                    graph = Graph.model_validate(graph)
                except ValidationError as exc:
                    raise InvalidInputError(f"not a graph: {exc.errors()[0]['msg']}") from None
            if not isinstance(graph, Graph):
                raise InvalidInputError(f"graph must be a hotmem Graph, got {type(graph).__name__}")
            source, version = extractor or "graph", model_version
        else:
            if not any(t.text.strip() for t in turns):
                return AddResult()
            graph = self.extractor(turns, speaker=speaker)
            if not isinstance(graph, Graph):
                raise InvalidInputError(f"the extractor returned {type(graph).__name__}, not a Graph")
            source, version = self._extractor_info()
            source, version = extractor or source, model_version or version
        said = self._attribute(graph, turns, speaker)
        scope = None if persist else session
        with self._store.transaction():
            return _Writer(self, session, when, scope, source, version).write(graph, said, turns, speaker, turn)

    def _attribute(self, graph: Graph, turns: list[Turn], speaker: str | None) -> list[_Said]:
        """Each relation's turn: the first that grounds both names, else its object, else its subject, else the last."""
        said = []
        for relation in graph.relations:
            index = len(turns) - 1 if turns else 0
            if len(turns) > 1:
                scores = []
                for i, t in enumerate(turns):
                    speakers = [t.speaker] if t.speaker else []
                    subject = is_grounded(relation.subject, t.text, speakers)
                    obj = is_grounded(relation.object, t.text, speakers)
                    scores.append((2 * obj + subject + (obj and subject) * 4, -i))
                best = max(scores)
                if best[0] > 0:
                    index = -best[1]
            who = turns[index].speaker if turns else speaker
            said.append(_Said(relation, index, who or speaker))
        return said

    # ------------------------------------------------------------------------------------------------ reads
    def _entity_ids(self, name: str, speaker: str | None = None) -> list[int]:
        name = _name(name, "entity")
        key = entity_key(name, speaker)
        keys = [key]
        parts = split_possessive(key)
        if parts:  # "Annie's sister" through Annie's entity
            row = self._store.fetchone(
                "SELECT e.key FROM hm_aliases a JOIN hm_entities e ON e.id = a.entity_id WHERE a.key = ?", (parts[0],)
            )
            if row:
                keys.append(f"{row[0]} 's {parts[1]}")
        rows = self._store.fetchall(f"SELECT DISTINCT entity_id FROM hm_aliases WHERE key IN {marks(keys)}", keys)
        return [r[0] for r in rows]

    def _facts_of(
        self, ids: Sequence[int], at: datetime | None, session: str | None, include_ended: bool,
        predicate: str | None = None, as_subject_only: bool = False,
    ) -> list[Fact]:
        if not ids:
            return []
        where, params = self._validity(at, include_ended, session)
        if predicate is not None:
            where += " AND f.predicate = ?"
            params.append(predicate)
        ids = sorted(set(ids))
        sides = ["subject_id"] if as_subject_only else ["subject_id", "object_id"]
        # one indexed lookup per side (an OR of the two would scan on PostgreSQL)
        parts, all_params = [], []
        for i, side in enumerate(sides):
            other = f"f.subject_id NOT IN {marks(ids)} AND " if i else ""
            parts.append(f"SELECT {_FACT_COLUMNS} FROM {_facts_by(side, ids)} f {_FACT_NAMES} WHERE {other}{where}")
            all_params += ids + (ids if i else []) + params
        rows = self._store.fetchall(" UNION ALL ".join(parts) + " ORDER BY 7, 1", all_params)
        return [_fact(r) for r in rows]

    @staticmethod
    def _validity(at: datetime | None, include_ended: bool, session: str | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if session is None:
            clauses.append("f.scope IS NULL")
        else:
            clauses.append("(f.scope IS NULL OR f.scope = ?)")
            params.append(session)
        if at is not None:
            clauses.append("f.valid_from <= ? AND (f.valid_to IS NULL OR f.valid_to > ?)")
            params += [at, at]
        elif not include_ended:
            clauses.append("f.valid_to IS NULL")
        return " AND ".join(clauses), params

    def facts(
        self, entity: str, at: datetime | date | str | None = None, *, session: str | None = None,
        include_ended: bool = False, speaker: str | None = None,
    ) -> list[Fact]:
        """Facts about `entity` (as subject or object) valid now, or at time `at`; `include_ended` adds the ended
        ones. `session` adds that session's working memory; `speaker` resolves "I" / "my sister"."""
        when = _utc(at) if at is not None else None
        return self._facts_of(self._entity_ids(entity, speaker), when, session, include_ended)

    def history(self, entity: str, predicate: str | None = None, *, speaker: str | None = None) -> list[Fact]:
        """Every fact, valid or ended, with `entity` as subject (and `predicate`, when given), oldest first:
        "where did Anna live, and when"."""
        pred = self._predicate(predicate)[0] if predicate is not None else None
        return self._facts_of(self._entity_ids(entity, speaker), None, None, True, pred, as_subject_only=True)

    def about(
        self, text: str, *, speaker: str | None = None, session: str | None = None, limit: int | None = 100,
    ) -> list[Fact]:
        """Valid facts relevant to a new utterance: those of the entities it names (the speaker too when it says
        "I"/"my") and so their 1-hop neighbourhood, most mentioned first."""
        _name(text, "text")
        keys = name_candidates(text, speaker)
        rows = self._store.fetchall(f"SELECT DISTINCT entity_id FROM hm_aliases WHERE key IN {marks(keys)}", keys)
        facts = self._facts_of([r[0] for r in rows], None, session, False)
        facts.sort(key=lambda f: (-f.mentions, -f.confidence, f.id))
        return facts[:limit] if limit else facts

    def graph(self, at: datetime | date | str | None = None, *, session: str | None = None) -> Graph:
        """The graph valid now (or at `at`) as a `hotmem.types.Graph`; `session` adds its working memory."""
        when = _utc(at) if at is not None else None
        where, params = self._validity(when, False, session)
        rows = self._store.fetchall(f"SELECT {_FACT_COLUMNS} FROM {_FACT_FROM} WHERE {where} ORDER BY f.id", params)
        return self._as_graph([_fact(r) for r in rows])

    def session_graph(self, session: str) -> Graph:
        """The session's working memory: its `persist=False` facts and the persistent facts said in it; empty once
        `end_session` cleared it."""
        session = _name(session, "session")
        rows = self._store.fetchall(
            f"SELECT {_FACT_COLUMNS} FROM {_FACT_FROM} WHERE f.valid_to IS NULL AND "
            "(f.scope = ? OR (f.scope IS NULL AND f.id IN (SELECT fact_id FROM hm_mentions WHERE session = ?) "
            "AND EXISTS (SELECT 1 FROM hm_sessions WHERE session = ?))) ORDER BY f.id",  # an ended session: empty
            (session, session, session),
        )
        return self._as_graph([_fact(r) for r in rows])

    @staticmethod
    def _as_graph(facts: Iterable[Fact]) -> Graph:
        entities: dict[str, Entity] = {}
        relations = []
        for f in facts:
            entities.setdefault(f.subject, Entity(name=f.subject, type=f.subject_type))
            entities.setdefault(f.object, Entity(name=f.object, type=f.object_type))
            relations.append(Relation(subject=f.subject, predicate=f.predicate, object=f.object,
                                      confidence=f.confidence))
        return Graph(entities=list(entities.values()), relations=relations)

    def provenance(self, fact: Fact | int) -> list[Mention]:
        """Every mention of a fact: session, turn, speaker, text, time, extractor, model version, confidence."""
        fact_id = fact.id if isinstance(fact, Fact) else fact
        rows = self._store.fetchall(
            f"SELECT {_MENTION_COLUMNS} FROM hm_mentions WHERE fact_id = ? ORDER BY said_at, id", (fact_id,)
        )
        return [Mention(fact_id=r[0], session=r[1], turn=r[2], speaker=r[3], text=r[4], at=_aware(r[5]),
                        extractor=r[6], model_version=r[7], confidence=r[8]) for r in rows]

    def merges(self, entity: str | None = None) -> list[Merge]:
        """What was folded into which entity, and why (all entities, or one)."""
        where, params = "", []
        if entity is not None:
            ids = self._entity_ids(entity)
            if not ids:
                return []
            where, params = "WHERE m.entity_id IN (SELECT unnest(?::BIGINT[]))", [ids]
        rows = self._store.fetchall(
            f"SELECT e.name, m.merged, m.reason, m.session, m.said_at FROM hm_merges m "
            f"JOIN hm_entities e ON e.id = m.entity_id {where} ORDER BY m.id", params
        )
        return [Merge(entity=r[0], merged=r[1], reason=r[2], session=r[3], at=_aware(r[4])) for r in rows]

    def entities(self) -> list[Entity]:
        rows = self._store.fetchall("SELECT name, type FROM hm_entities ORDER BY id")
        return [Entity(name=r[0], type=r[1]) for r in rows]

    def resolve(self, name: str, *, speaker: str | None = None) -> str | None:
        """The stored entity a name means, or None."""
        ids = self._entity_ids(name, speaker)
        row = self._store.fetchone("SELECT name FROM hm_entities WHERE id = ?", (ids[0],)) if ids else None
        return row[0] if row else None

    def stats(self) -> dict[str, int]:
        counts = {}
        for table in ("entities", "aliases", "facts", "mentions", "merges", "sessions"):
            counts[table] = self._store.fetchone(f"SELECT count(*) FROM hm_{table}")[0]
        counts["valid_facts"] = self._store.fetchone(
            "SELECT count(*) FROM hm_facts WHERE valid_to IS NULL")[0]
        return counts

    def _predicate(self, predicate: str) -> tuple[str, bool]:
        """Canonical predicate, and whether subject and object swap: a declared inverse pair is stored one way
        (the predicate the schema lists first), so `child_of(a, b)` and `parent_of(b, a)` are one fact."""
        predicate = _name(predicate, "predicate")
        name = self.schema.normalize_predicate(predicate)
        spec = self.schema.get(name)
        if spec is not None and spec.inverse and not spec.symmetric:
            order = self.schema.predicates
            if order.index(spec.inverse) < order.index(name):
                return spec.inverse, True
        return name, False

    def _predicate_cues(self, predicate: str) -> frozenset[str]:
        if predicate not in self._cues:
            self._cues[predicate] = predicate_cues(self.schema, predicate)
        return self._cues[predicate]

    # ------------------------------------------------------------------------------------------------ sessions, privacy
    def _uncache(self) -> None:
        """Before a change the writer's cache does not follow (see `Store.cache`)."""
        if self._store.cache is not None:
            self._store.cache.clear()

    def end_session(self, session: str, *, keep: bool = False) -> int:
        """Clear the session's working memory (`keep=True` moves it into the persistent graph instead).
        Returns how many facts it held."""
        session = _name(session, "session")
        with self._store.transaction():
            self._uncache()
            ids = [r[0] for r in self._store.fetchall("SELECT id FROM hm_facts WHERE scope = ?", (session,))]
            if keep:
                # each becomes persistent, or strengthens the persistent fact it repeats
                for fact_id in ids:
                    self._promote(fact_id)
            else:
                self._delete_facts(ids)
            self._store.execute("DELETE FROM hm_sessions WHERE session = ?", (session,))
        return len(ids)

    def _promote(self, fact_id: int) -> None:
        row = self._store.fetchone(
            "SELECT subject_id, predicate, object_id, mentions, confidence, max_confidence, first_seen, last_seen "
            "FROM hm_facts WHERE id = ?", (fact_id,))
        twin = self._store.fetchone(
            "SELECT id, mentions, confidence, max_confidence, first_seen, last_seen FROM hm_facts "
            "WHERE subject_id = ? AND predicate = ? AND object_id = ? AND scope IS NULL AND valid_to IS NULL",
            row[:3])
        if twin is None:
            self._store.execute("UPDATE hm_facts SET scope = NULL WHERE id = ?", (fact_id,))
            return
        self._store.execute(
            "UPDATE hm_facts SET mentions = ?, confidence = ?, max_confidence = ?, first_seen = ?, last_seen = ? "
            "WHERE id = ?",
            (twin[1] + row[3], 1 - (1 - twin[2]) * (1 - row[4]), max(twin[3], row[5]), min(twin[4], row[6]),
             max(twin[5], row[7]), twin[0]))
        self._store.execute("UPDATE hm_mentions SET fact_id = ? WHERE fact_id = ?", (twin[0], fact_id))
        self._store.execute("DELETE FROM hm_facts WHERE id = ?", (fact_id,))

    def _delete_facts(self, ids: list[int]) -> None:
        if ids:
            self._store.execute("DELETE FROM hm_mentions WHERE fact_id IN (SELECT unnest(?::BIGINT[]))", (ids,))
            self._store.execute("DELETE FROM hm_facts WHERE id IN (SELECT unnest(?::BIGINT[]))", (ids,))

    def _for_ids(self, statement: str, ids: list[Any]) -> None:
        """`statement` with its `{}` the IN list of `ids`; none, no statement."""
        if ids:
            self._store.execute(statement.format(marks(ids)), ids)

    def forget(self, entity: str, *, speaker: str | None = None) -> int:
        """Delete a person (or any entity) for a privacy request, in one transaction. Returns how many facts were
        deleted.

        * The entity goes with every fact it is part of (and their mentions), its names and its merge records.
        * So does every entity named only through it: possessive names such as "Anna's sister", "Anna's cat" or
          "Anna's sister's husband" that were never resolved to a name of their own, with their facts.
        * An entity such a name was resolved to stays: "Anna's sister" merged into Maria is Maria's. She loses the
          names through Anna (`resolve("Anna's sister")` is None afterwards), takes her earliest other name if she
          was displayed through Anna, and the merge records that name Anna ("Anna's sister" -> Maria) are deleted.
        * Provenance of the facts that stay keeps its rows (a fact keeps its mention count and confidence) but not
          her name: a mention she spoke loses its speaker and its text, and a mention whose text says one of her
          names, word for word ("Anna" in "Anna's sister" or "Anna Smith", not in "Annabel"), loses its text
          (it becomes "").

        Session names, chosen by the caller, stay as they are. Deleted rows leave the database's files as the
        database reclaims space (DuckDB's checkpoints, PostgreSQL's vacuum).

        >>> memory.forget("Anna")  # her facts, her sister's (unnamed), and her name in the provenance of the rest
        """
        store = self._store
        with store.transaction():
            ids = self._entity_ids(entity, speaker)
            if not ids:
                return 0
            self._uncache()
            keys = {r[0] for r in store.fetchall(
                f"SELECT key FROM hm_aliases WHERE entity_id IN {marks(ids)} "
                f"UNION SELECT key FROM hm_entities WHERE id IN {marks(ids)}", [*ids, *ids])}
            owned = [k + POSSESSIVE for k in sorted(keys)]
            hers = _one_of(keys)
            # what texts and records may say: not the key every unnamed "I" and "my ..." fold to, which names nobody
            names = {k for k in keys if k != SPEAKER and not k.startswith(SPEAKER + POSSESSIVE)}
            said_hers = _one_of(names)

            # entities with a name through hers: gone if every name they have is one, else they lose those names
            through = " OR ".join(["starts_with(key, ?)"] * len(owned))
            reached = [r[0] for r in store.fetchall(
                f"SELECT entity_id FROM hm_aliases WHERE {through} UNION SELECT id FROM hm_entities WHERE {through}",
                owned + owned) if r[0] not in ids]
            aliases: dict[int, list[tuple[str, str]]] = {i: [] for i in reached}
            for entity_id, key, name in store.fetchall(
                    f"SELECT entity_id, key, name FROM hm_aliases WHERE entity_id IN {marks(reached)} "
                    "ORDER BY said_at, key", reached):
                aliases[entity_id].append((key, name))
            gone = [*ids, *(i for i in reached if all(hers(k) for k, _ in aliases[i]))]
            facts = [r[0] for r in store.fetchall(
                "SELECT id FROM hm_facts WHERE subject_id IN (SELECT unnest(?::BIGINT[])) "
                "OR object_id IN (SELECT unnest(?::BIGINT[]))", (gone, gone))]
            self._delete_facts(facts)
            for table, column in (("hm_aliases", "entity_id"), ("hm_merges", "entity_id"), ("hm_entities", "id")):
                store.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT unnest(?::BIGINT[]))", (gone,))
            kept = [i for i in reached if i not in gone]
            self._for_ids("DELETE FROM hm_aliases WHERE key IN {}", [k for i in kept for k, _ in aliases[i] if hers(k)])
            for entity_id, key, name in store.fetchall(
                    f"SELECT id, key, name FROM hm_entities WHERE id IN {marks(kept)}", kept):
                if hers(key) or hers(normalize_name(name)):
                    store.execute("UPDATE hm_entities SET key = ?, name = ? WHERE id = ?",
                                  (*next(a for a in aliases[entity_id] if not hers(a[0])), entity_id))
            # what is left that carries her name: merge records of the entities kept, and provenance texts
            where, params = _may_say(("name", "merged"), names)
            self._for_ids("DELETE FROM hm_merges WHERE id IN {}", [
                r[0] for r in store.fetchall(f"SELECT id, name, merged FROM hm_merges WHERE {where}", params)
                if said_hers(normalize_name(r[1])) or said_hers(normalize_name(r[2]))])
            where, params = _may_say(("speaker", "text"), names)
            rows = store.fetchall(f"SELECT id, speaker, text FROM hm_mentions WHERE {where}", params)
            spoken = {r[0] for r in rows if r[1] is not None and said_hers(normalize_name(r[1]))}
            self._for_ids("UPDATE hm_mentions SET speaker = NULL WHERE id IN {}", sorted(spoken))
            self._for_ids("UPDATE hm_mentions SET text = '' WHERE id IN {}",
                          [r[0] for r in rows if r[0] in spoken or says(r[2], names)])
        # no name in the log: the request is to forget it
        logger.info("forgot an entity: %d entities, %d facts", len(gone), len(facts))
        return len(facts)

    # ------------------------------------------------------------------------------------------------ JSONL
    def export(self, path: str | Path) -> int:
        """Write the whole memory as JSON lines (entities with their names, facts with their mentions, merges,
        sessions). Returns the number of lines."""
        path = Path(path)
        store = self._store
        with store.lock:
            entities = store.fetchall("SELECT id, key, name, type, created_at FROM hm_entities ORDER BY id")
            aliases: dict[int, list] = {}
            for key, entity_id, name, reason, session, at in store.fetchall(
                    "SELECT key, entity_id, name, reason, session, said_at FROM hm_aliases ORDER BY said_at, key"):
                aliases.setdefault(entity_id, []).append(
                    {"key": key, "name": name, "reason": reason, "session": session, "at": at.isoformat()})
            keys = {r[0]: r[1] for r in entities}
            mentions: dict[int, list] = {}
            for r in store.fetchall(f"SELECT {_MENTION_COLUMNS} FROM hm_mentions ORDER BY id"):
                mentions.setdefault(r[0], []).append(
                    {"session": r[1], "turn": r[2], "speaker": r[3], "text": r[4], "at": r[5].isoformat(),
                     "extractor": r[6], "model_version": r[7], "confidence": r[8]})
            facts = store.fetchall(
                "SELECT id, subject_id, predicate, object_id, scope, valid_from, valid_to, ended_by, mentions, "
                "confidence, max_confidence, first_seen, last_seen FROM hm_facts ORDER BY id")
            merges = store.fetchall("SELECT entity_id, name, merged, reason, session, said_at FROM hm_merges ORDER BY id")
            sessions = store.fetchall("SELECT session, turns, started, last FROM hm_sessions ORDER BY session")
        iso = lambda t: t.isoformat() if t is not None else None  # noqa: E731
        lines = [{"kind": "entity", "data": {"key": r[1], "name": r[2], "type": r[3], "created_at": iso(r[4]),
                                             "aliases": aliases.get(r[0], [])}} for r in entities]
        lines += [{"kind": "fact", "data": {
            "subject": keys[r[1]], "predicate": r[2], "object": keys[r[3]], "session": r[4],
            "valid_from": iso(r[5]), "valid_to": iso(r[6]), "ended_by": r[7], "mentions": r[8], "confidence": r[9],
            "max_confidence": r[10], "first_seen": iso(r[11]), "last_seen": iso(r[12]),
            "provenance": mentions.get(r[0], [])}} for r in facts]
        lines += [{"kind": "merge", "data": {"entity": keys.get(r[0]), "name": r[1], "merged": r[2], "reason": r[3],
                                             "session": r[4], "at": iso(r[5])}} for r in merges]
        lines += [{"kind": "session", "data": {"session": r[0], "turns": r[1], "started": iso(r[2]),
                                               "last": iso(r[3])}} for r in sessions]
        with path.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        return len(lines)

    def import_(self, path: str | Path) -> int:
        """Read a JSONL export into this memory, in one transaction: entities join stored ones with the same name
        key, facts already here (same triple, session and start) are skipped. A malformed file raises
        `InvalidInputError` and changes nothing. Returns the number of facts added."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"no export at {path}")
        lines: list[_ExportLine] = []
        with path.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                try:
                    line = _ExportLine.model_validate_json(text)
                    _check_line(line)
                except (ValidationError, KeyError, TypeError, ValueError) as exc:
                    raise InvalidInputError(f"{path}:{number}: not a memory export line ({exc})") from None
                lines.append(line)
        with self._store.transaction():
            self._uncache()
            return _import(self._store, lines)


def _check_line(line: _ExportLine) -> None:
    need = {"entity": ("key", "name", "type"), "fact": ("subject", "predicate", "object", "valid_from", "mentions",
                                                          "confidence", "provenance"),
            "merge": ("entity", "merged", "reason", "at"), "session": ("session", "turns")}
    if line.kind not in need:
        raise ValueError(f"unknown kind {line.kind!r}")
    missing = [k for k in need[line.kind] if k not in line.data]
    if missing:
        raise ValueError(f"missing {missing}")
    for key in ("valid_from", "valid_to", "first_seen", "last_seen", "at", "created_at"):
        if line.data.get(key) is not None:
            datetime.fromisoformat(line.data[key])


def _import(store: Store, lines: list[_ExportLine]) -> int:
    now = _utc(None)
    when = lambda v, default=None: datetime.fromisoformat(v) if v else default  # noqa: E731
    ids: dict[str, int] = {}

    def entity(key: str, name: str, kind: str = "MISC") -> int:
        if key not in ids:
            row = store.fetchone("SELECT entity_id FROM hm_aliases WHERE key = ?", (key,))
            if row is None:
                row = (store.new_id(),)
                store.execute("INSERT INTO hm_entities (id, key, name, type, created_at) VALUES (?, ?, ?, ?, ?)",
                              (row[0], key, name, kind, now))
                store.execute("INSERT INTO hm_aliases (key, entity_id, name, reason, session, said_at) "
                              "VALUES (?, ?, ?, 'name', NULL, ?)", (key, row[0], name, now))
            ids[key] = row[0]
        return ids[key]

    for line in lines:
        if line.kind == "entity":
            d = line.data
            entity_id = entity(d["key"], d["name"], d["type"])
            for alias in d.get("aliases", []):
                store.execute(
                    "INSERT INTO hm_aliases (key, entity_id, name, reason, session, said_at) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key) DO NOTHING",
                    (alias["key"], entity_id, alias["name"], alias["reason"], alias.get("session"),
                     when(alias.get("at"), now)))
                ids.setdefault(alias["key"], entity_id)
    added = 0
    for line in lines:
        d = line.data
        if line.kind == "fact":
            s, o = entity(d["subject"], d["subject"]), entity(d["object"], d["object"])
            start = when(d["valid_from"])
            scope = d.get("session")
            exists = store.fetchone(
                "SELECT id FROM hm_facts WHERE subject_id = ? AND predicate = ? AND object_id = ? AND valid_from = ? "
                "AND (scope = ? OR (scope IS NULL AND ? IS NULL))", (s, d["predicate"], o, start, scope, scope))
            if exists:
                continue
            fact_id = store.new_id()
            store.execute(
                "INSERT INTO hm_facts (id, subject_id, predicate, object_id, scope, valid_from, valid_to, ended_by, "
                "mentions, confidence, max_confidence, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fact_id, s, d["predicate"], o, scope, start, when(d.get("valid_to")), d.get("ended_by"),
                 d["mentions"], d["confidence"], d.get("max_confidence", d["confidence"]),
                 when(d.get("first_seen"), start), when(d.get("last_seen"), start)))
            store.insert("hm_mentions", ("id", *_MENTION_COLUMNS.split(", ")), [
                (store.new_id(), fact_id, m["session"], m["turn"], m.get("speaker"), m["text"], when(m["at"]),
                 m["extractor"], m.get("model_version"), m["confidence"]) for m in d["provenance"]])
            added += 1
        elif line.kind == "merge" and d["entity"] in ids:
            store.execute(
                "INSERT INTO hm_merges (id, entity_id, name, merged, reason, session, said_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (store.new_id(), ids[d["entity"]], d.get("name") or d["entity"], d["merged"], d["reason"],
                 d.get("session"), when(d["at"])))
        elif line.kind == "session":
            store.execute(
                "INSERT INTO hm_sessions (session, turns, started, last) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (session) DO NOTHING",
                (d["session"], d["turns"], when(d.get("started"), now), when(d.get("last"), now)))
    return added


class _Writer:
    """One `add` inside its transaction. Reads first (session and names, then open facts), then writes in a few
    multi-row statements: every statement costs about a millisecond on DuckDB, and an add must stay within ten. The
    only writer of a DuckDB file answers the reads from what it learnt in earlier adds (`Store.cache`), so an add about
    things it has seen reads nothing."""

    _ENTITY = ("id", "key", "name", "type", "created_at")
    _ALIAS = ("key", "entity_id", "name", "reason", "session", "said_at")
    _MERGE = ("id", "entity_id", "name", "merged", "reason", "session", "said_at")
    _FACT = ("id", "subject_id", "predicate", "object_id", "scope", "valid_from", "valid_to", "ended_by", "mentions",
             "confidence", "max_confidence", "first_seen", "last_seen")
    _MENTION = ("id", *_MENTION_COLUMNS.split(", "))
    #: What strengthening or ending a stored fact changes, with the SQL type of each.
    _CHANGES = (("mentions", "INTEGER"), ("confidence", "FLOAT8"), ("max_confidence", "FLOAT8"),
                ("first_seen", "TIMESTAMP"), ("last_seen", "TIMESTAMP"), ("valid_from", "TIMESTAMP"),
                ("valid_to", "TIMESTAMP"), ("ended_by", "TEXT"))

    def __init__(self, memory: Memory, session: str, at: datetime, scope: str | None, source: str,
                 version: str | None) -> None:
        self.memory = memory
        self.store = memory._store
        self.session, self.at, self.scope = session, at, scope
        self.source, self.version = source, version
        self.cache: Cache | None = self.store.cache  # None: everything is read
        self.known: dict[str, _Entity] = {}  # alias key -> entity
        self.looked_up: set[str] = set()
        self.by_id: dict[int, _Entity] = {}  # every entity this add has met, one object each; merged ids: the keeper
        self.speaker_folds: dict[str, tuple[str, str]] = {}  # folded surface -> (surface, the speaker's key)
        self.created: set[int] = set()
        self.new_entities: list[_Entity] = []
        self.new_aliases: list[tuple] = []
        self.new_merges: list[tuple] = []
        self.new_facts: dict[int, _Open] = {}
        self.dirty: dict[int, _Open] = {}
        self.changes = _Changes()

    def new_id(self) -> int:
        return self.store.new_id()

    def flush(self) -> None:
        """Write the pending entities, names and merge records (before a statement that reads them)."""
        store = self.store
        store.insert("hm_entities", self._ENTITY, [(e.id, e.key, e.name, e.type, self.at) for e in self.new_entities])
        store.insert("hm_aliases", self._ALIAS, self.new_aliases)
        store.insert("hm_merges", self._MERGE, self.new_merges)
        self.new_entities, self.new_aliases, self.new_merges = [], [], []

    # entities ------------------------------------------------------------------------------------------------------
    def load(self, keys: Iterable[str], with_session: bool = False) -> int | None:
        """Look names up; `with_session` also reads the session's turn count (None for a new session), as one more
        row of the same statement. The cache answers what it knows."""
        keys = [k for k in dict.fromkeys(keys) if k and k not in self.known and k not in self.looked_up]
        self.looked_up.update(keys)
        turns = None
        if self.cache is not None:
            names = self.cache.names
            for key in keys:
                if names.get(key) is not None:
                    self.known[key] = self.entity(names[key])
            keys = [k for k in keys if k not in names]
            if with_session and self.session in self.cache.turns:
                turns, with_session = self.cache.turns[self.session], False
        if not keys and not with_session:
            return turns
        statement = ("SELECT a.key, e.id, e.key, e.name, e.type FROM hm_aliases a JOIN hm_entities e "
                     f"ON e.id = a.entity_id WHERE a.key IN {marks(keys)}")
        if with_session:
            statement += " UNION ALL SELECT NULL, turns, NULL, NULL, NULL FROM hm_sessions WHERE session = ?"
        for alias, *entity in self.store.fetchall(statement, [*keys, self.session] if with_session else keys):
            if alias is None:
                turns = entity[0]
            else:
                self.known[alias] = self.entity(*entity)
        return turns

    def entity(self, entity_id: int, *row: str) -> _Entity:
        """The one object for an entity (id, then key, name, type as read), in this add and in the cache: a change
        made to it shows wherever it is used."""
        entity = self.by_id.get(entity_id)
        if entity is None:
            entity = self.cache.entities.get(entity_id) if self.cache is not None else None
            self.by_id[entity_id] = entity = entity or _Entity(entity_id, *row)
        return entity

    def entities(self, ids: Iterable[int]) -> dict[int, _Entity]:
        """Entities by id, read if neither this add nor the cache has met them."""
        ids = set(ids)
        cached = self.cache.entities if self.cache is not None else {}
        missing = sorted(ids - self.by_id.keys() - cached.keys())
        if missing:
            for row in self.store.fetchall(
                    f"SELECT id, key, name, type FROM hm_entities WHERE id IN {marks(missing)}", missing):
                self.entity(*row)
        return {i: self.entity(i) for i in ids if i in self.by_id or i in cached}

    def uncache(self) -> None:
        """This add changes what the cache cannot follow (entities merged): empty it, and read from here on."""
        if self.cache is not None:
            self.cache.clear()
            self.cache = None

    def merge_record(self, entity: _Entity, merged: str, reason: str) -> None:
        self.new_merges.append((self.new_id(), entity.id, entity.name, merged, reason, self.session, self.at))
        self.changes.merges.append(Merge(entity=entity.name, merged=merged, reason=reason, session=self.session,
                                         at=_aware(self.at)))

    def add_alias(self, key: str, entity: _Entity, name: str, reason: str) -> None:
        # looked up in this transaction and absent; on PostgreSQL the write lock keeps it so
        self.new_aliases.append((key, entity.id, name, reason, self.session, self.at))
        self.known[key] = entity

    def canonical(self, raw: str) -> tuple[str, str | None]:
        """A possessive key through its possessor's entity: "annie 's sister" -> "anna 's sister" (kinship)."""
        parts = split_possessive(raw)
        if parts:
            owner = self.known.get(parts[0])
            if owner is not None and owner.key != parts[0]:
                return f"{owner.key} 's {parts[1]}", "kinship"
        return raw, None

    def resolve(self, name: str, kind: str, speaker: str | None) -> _Entity | None:
        raw = entity_key(name, speaker)
        if not raw or names_nothing(name) and raw != entity_key(SPEAKER, speaker):
            return None
        key, reason = self.canonical(raw)
        if key == entity_key(speaker or SPEAKER, None) and kind == "MISC":
            kind = "PERSON"  # whoever speaks is a person
        if key == entity_key(speaker or SPEAKER, None) and normalize_name(name) != key:
            self.speaker_folds.setdefault(name.strip().casefold(), (name.strip(), key))  # "I": once per session
        self.load([key])  # a no-op unless the key is new to this add (a possessive rewritten through an alias)
        entity = self.known.get(key)
        if entity is None and self.memory.first_names and kind == "PERSON":
            entity = self._by_first_name(key, name)
        if entity is None:
            display = name
            if key == entity_key(speaker or SPEAKER, None):  # "I" is the speaker, by name when known
                display = speaker or SPEAKER
            elif split_possessive(key):  # "my sister" said by Anna reads "Anna's sister"
                owner, kin = split_possessive(key)
                known = self.known.get(owner)
                if known is not None or owner == entity_key(speaker or SPEAKER, None):
                    display = f"{known.name if known else speaker or SPEAKER}'s {kin}"
            entity = self.entity(self.new_id(), key, display, kind)
            self.new_entities.append(entity)
            self.created.add(entity.id)
            self.add_alias(key, entity, display, "name")
        elif key not in self.known:
            self.add_alias(key, entity, name, "first_name")
        if reason:
            self.merge_record(entity, name, reason)
        if entity.type == "MISC" and kind != "MISC":
            entity.type = kind
            if entity not in self.new_entities:
                self.store.execute("UPDATE hm_entities SET type = ? WHERE id = ?", (kind, entity.id))
        return entity

    def _by_first_name(self, key: str, name: str) -> _Entity | None:
        """"chandler" -> the one stored person "chandler bing"; "chandler bing" -> a stored lone "chandler"."""
        if split_possessive(key) or not key.replace(" ", "").isalpha():
            return None
        tokens = key.split()
        first = tokens[0]
        rows = self.store.fetchall(
            "SELECT id, key, name, type FROM hm_entities WHERE type = 'PERSON' AND (key = ? OR key LIKE ?) "
            "AND key NOT LIKE ? LIMIT 3", (first, first + " %", "% 's %"))
        rows += [(e.id, e.key, e.name, e.type) for e in self.new_entities
                 if e.type == "PERSON" and (e.key == first or e.key.startswith(first + " ")) and "'s" not in e.key]
        fuller = [r for r in rows if r[1] != first and r[1] != key]
        lone = [r for r in rows if r[1] == first]
        if len(tokens) == 1 and len(fuller) == 1 and not lone:
            entity = self._entity(fuller[0])
            self.merge_record(entity, name, "first_name")
            return entity
        if len(tokens) > 1 and len(lone) == 1 and not fuller:
            entity = self._entity(lone[0])
            self.merge_record(entity, name, "first_name")
            entity.name, entity.key = name, key  # the fuller name reads better, and is the key kin hang on
            if entity not in self.new_entities:
                self.store.execute("UPDATE hm_entities SET name = ?, key = ? WHERE id = ?", (name, key, entity.id))
            return entity
        return None

    def _entity(self, row: Sequence[Any]) -> _Entity:
        entity = self.entity(*row)
        self.known.setdefault(row[1], entity)
        return entity

    def merge_entities(self, keep: _Entity, drop: _Entity, reason: str, said: Sequence[str] = (),
                       speaker: str | None = None) -> _Entity:
        """`drop` becomes `keep`: names, facts and records move over; facts that became one are merged. `said` are
        the names a stated alias gave `drop` and `keep` (by `speaker`): the record shows the one that is not the
        name `keep` ends with ("Speaker 2" -> Chandler Bing), and a second record (`entity`) the name of `drop`
        when the alias reached it under another ("Maria" -> Joey, where Maria named Ross: Ross -> Joey too)."""
        if keep.id == drop.id:
            return keep
        self.uncache()
        self.flush()
        store = self.store
        for statement in ("UPDATE hm_aliases SET entity_id = ? WHERE entity_id = ?",
                          "UPDATE hm_facts SET subject_id = ? WHERE subject_id = ?",
                          "UPDATE hm_facts SET object_id = ? WHERE object_id = ?",
                          "UPDATE hm_merges SET entity_id = ? WHERE entity_id = ?"):
            store.execute(statement, (keep.id, drop.id))
        store.execute("DELETE FROM hm_entities WHERE id = ?", (drop.id,))
        if keep.name.casefold().startswith(_LABEL_PREFIX) and not drop.name.casefold().startswith(_LABEL_PREFIX):
            keep.name = drop.name
            store.execute("UPDATE hm_entities SET name = ? WHERE id = ?", (keep.name, keep.id))
        if keep.type == "MISC" and drop.type != "MISC":
            keep.type = drop.type
            store.execute("UPDATE hm_entities SET type = ? WHERE id = ?", (keep.type, keep.id))
        # whatever led to `drop` leads to `keep` from now on: its names, and its id (`_current`)
        for table in (self.known, self.by_id):
            for k, entity in list(table.items()):
                if entity.id == drop.id:
                    table[k] = keep
        shown = normalize_name(keep.name)
        said_keys = {entity_key(name, speaker): name for name in said}
        self.merge_record(keep, next((n for k, n in said_keys.items() if k != shown), drop.name), reason)
        if said and normalize_name(drop.name) not in {shown, *said_keys}:
            self.merge_record(keep, drop.name, "entity")
        self._dedupe(keep.id)
        return keep

    def _dedupe(self, entity_id: int) -> None:
        rows = self.store.fetchall(
            "SELECT id, subject_id, predicate, object_id, scope, mentions, confidence, max_confidence, first_seen, "
            "last_seen, valid_from FROM hm_facts WHERE valid_to IS NULL AND (subject_id = ? OR object_id = ?) "
            "ORDER BY id", (entity_id, entity_id))
        first: dict[tuple, tuple] = {}
        for row in rows:
            key = (row[1], row[2], row[3], row[4])
            if key not in first:
                first[key] = row
                continue
            k = first[key]
            merged = (k[0], k[1], k[2], k[3], k[4], k[5] + row[5], 1 - (1 - k[6]) * (1 - row[6]), max(k[7], row[7]),
                      min(k[8], row[8]), max(k[9], row[9]), min(k[10], row[10]))
            first[key] = merged
            self.store.execute(
                "UPDATE hm_facts SET mentions = ?, confidence = ?, max_confidence = ?, first_seen = ?, last_seen = ?, "
                "valid_from = ? WHERE id = ?", (*merged[5:], k[0]))
            self.store.execute("UPDATE hm_mentions SET fact_id = ? WHERE fact_id = ?", (k[0], row[0]))
            self.store.execute("DELETE FROM hm_facts WHERE id = ?", (row[0],))

    # facts ---------------------------------------------------------------------------------------------------------
    def load_open(self, ids: set[int], predicates: set[str] | None) -> dict[int, _Open]:
        """The open facts this add may strengthen or end, by id. A fact is matched from its subject, so an entity's
        facts as object matter only under a symmetric predicate (a rival of `married_to` may name it on either
        side), or, with `predicates` None, to a negation, which may end any fact naming it. The cache keeps each
        entity's open facts as subject, and as object under a symmetric predicate."""
        ids = ids - {e.id for e in self.new_entities}  # those not written yet have no facts yet
        symmetric = self.memory._symmetric
        cache = self.cache
        if cache is None or predicates is None:
            facts = self.read_open(ids, predicates, None if predicates is None else predicates & symmetric)
            return {i: cache.open.get(i, f) for i, f in facts.items()} if cache is not None else facts
        missing = ids - cache.facts.keys()
        if missing:
            for entity_id in missing:
                cache.facts[entity_id] = set()
            for fact in self.read_open(missing, None, symmetric).values():
                fact = cache.open.setdefault(fact.id, fact)
                if fact.subject in missing:
                    cache.facts[fact.subject].add(fact.id)
                if fact.object in missing and fact.predicate in symmetric:
                    cache.facts[fact.object].add(fact.id)
        return {i: cache.open[i] for i in sorted({i for e in ids for i in cache.facts[e]})}

    def read_open(self, ids: set[int], as_subject: set[str] | frozenset[str] | None,
                  as_object: set[str] | frozenset[str] | None) -> dict[int, _Open]:
        """Open facts of `ids` under the predicates given for each side (None: any, empty: none), by id."""
        ids = sorted(ids)
        columns = ("id, subject_id, predicate, object_id, scope, valid_from, mentions, confidence, max_confidence, "
                   "first_seen, last_seen")
        parts, params = [], []
        for side, predicates in (("subject_id", as_subject), ("object_id", as_object)):
            if not ids or predicates is not None and not predicates:
                continue
            parts.append(f"SELECT {columns} FROM {_facts_by(side, ids)} f WHERE valid_to IS NULL"
                         + ("" if predicates is None else f" AND predicate IN {marks(predicates)}"))
            params += [*ids, *sorted(predicates or ())]
        rows = self.store.fetchall(" UNION ALL ".join(parts), params) if parts else []
        return {r[0]: _Open(*r) for r in sorted(rows, key=lambda r: r[0])}

    def end(self, fact: _Open, until: datetime, why: str, open_facts: dict[int, _Open]) -> None:
        fact.valid_to, fact.ended_by = until, why
        if fact.id not in self.new_facts:
            self.dirty[fact.id] = fact
        open_facts.pop(fact.id, None)
        self.changes.ended[fact.id] = (fact, until, why)

    def write(self, graph: Graph, said: list[_Said], turns: list[Turn], speaker: str | None,
              first_turn: int | None) -> AddResult:
        memory, store, at = self.memory, self.store, self.at
        types = {}
        for e in graph.entities:
            types.setdefault(e.name.casefold(), e.type)
        kind = lambda name: types.get(name.casefold(), "MISC")  # noqa: E731

        # 1. names -> entities (one lookup for every key this add can touch, and the session's turn count)
        keys = []
        for item in said:
            for name in (item.relation.subject, item.relation.object):
                raw = entity_key(name, item.speaker)
                keys.append(raw)
                if split_possessive(raw):
                    keys.append(split_possessive(raw)[0])
        keys += [entity_key(e.name, speaker) for e in graph.entities]
        keys += [entity_key(t.speaker or speaker or SPEAKER, None) for t in turns]
        turns_before = self.load(keys, with_session=True)
        for e in graph.entities:
            self.resolve(e.name, e.type, speaker)
        for item in said:
            item.subject = self.resolve(item.relation.subject, kind(item.relation.subject), item.speaker)
            item.object = self.resolve(item.relation.object, kind(item.relation.object), item.speaker)
            if item.subject is None or item.object is None:
                continue
            item.predicate, item.swapped = memory._predicate(item.relation.predicate)
            if item.swapped:
                item.subject, item.object = item.object, item.subject
        said = [s for s in said if s.subject is not None and s.object is not None]

        # 2. stated aliases and named kin make one entity of two
        facts: list[_Said] = []
        for item in said:
            if snake_case(item.relation.predicate) in ALIAS_PREDICATES:
                (older, older_as), (newer, newer_as) = sorted(
                    ((self._current(item.subject), item.relation.subject),
                     (self._current(item.object), item.relation.object)), key=lambda side: side[0].id)
                self.merge_entities(older, newer, "alias", said=(newer_as, older_as), speaker=item.speaker)
            else:
                facts.append(item)
        self._merge_kin(facts, turns)
        for item in facts:
            item.subject, item.object = self._current(item.subject), self._current(item.object)

        # 3. negations in the text end facts, and keep negated relations out
        turn_base = first_turn if first_turn is not None else turns_before or 0
        if turns_before is None:  # the speaker's "I" of a new session, recorded once
            for surface, key in self.speaker_folds.values():
                if key in self.known:
                    self.merge_record(self.known[key], surface, "speaker")
        negations = {i: negated_clauses(t.text) for i, t in enumerate(turns)}
        negations = {i: c for i, c in negations.items() if c}
        ids = {e.id for item in facts for e in (item.subject, item.object)}
        speakers = {self.known.get(entity_key(t.speaker or speaker or SPEAKER, None)) for t in turns}
        speakers.discard(None)
        ids |= {e.id for e in speakers}
        open_facts = self.load_open(ids, None if negations else {i.predicate for i in facts})
        if negations:
            facts = self._negate(facts, turns, negations, open_facts, speaker)

        # 4. strengthen, open, and end what a functional predicate replaces
        index: dict[tuple, _Open] = {(f.subject, f.predicate, f.object, f.scope): f for f in open_facts.values()}
        mentions = []
        for item in facts:
            s, p, o = item.subject.id, item.predicate, item.object.id
            symmetric = p in memory._symmetric
            c = item.relation.confidence
            fact = index.get((s, p, o, self.scope)) or (index.get((o, p, s, self.scope)) if symmetric else None)
            if fact is not None:
                fact.mentions += 1
                fact.confidence = 1 - (1 - fact.confidence) * (1 - c)
                fact.max_confidence = max(fact.max_confidence, c)
                fact.last_seen = max(fact.last_seen, at)
                fact.first_seen = min(fact.first_seen, at)
                fact.valid_from = min(fact.valid_from, at)
                if fact.id not in self.new_facts:
                    self.dirty[fact.id] = fact
                    self.changes.strengthened[fact.id] = fact
            else:
                until = None
                if p in memory._functional:
                    ends = {s, o} if symmetric else {s}
                    rivals = [f for f in open_facts.values() if f.predicate == p and f.scope == self.scope
                              and (f.subject in ends or (symmetric and f.object in ends))]
                    later = [f.valid_from for f in rivals if f.valid_from > at]
                    if later:  # said of the past: the stored value is newer, so this one ended when it began
                        until = min(later)
                    else:
                        for rival in rivals:
                            self.end(rival, at, "superseded", open_facts)
                fact = _Open(self.new_id(), s, p, o, self.scope, at, 1, c, c, at, at)
                self.new_facts[fact.id] = fact
                if until is None:
                    open_facts[fact.id] = fact
                    index[(s, p, o, self.scope)] = fact
                    self.changes.added[fact.id] = fact
                else:
                    self.end(fact, until, "superseded", open_facts)
            text = turns[item.turn].text if turns else ""
            mentions.append((self.new_id(), fact.id, self.session, turn_base + item.turn, item.speaker, text, at,
                             self.source, self.version, c))

        # 5. write: a handful of statements whatever the size of the graph
        self.flush()
        store.insert("hm_facts", self._FACT, [
            (f.id, f.subject, f.predicate, f.object, f.scope, f.valid_from, f.valid_to, f.ended_by, f.mentions,
             f.confidence, f.max_confidence, f.first_seen, f.last_seen) for f in self.new_facts.values()])
        self.update_facts()
        store.insert("hm_mentions", self._MENTION, mentions)
        turns_now = turn_base + max(len(turns), 1)
        if turns_before is None:
            store.insert("hm_sessions", ("session", "turns", "started", "last"), [(self.session, turns_now, at, at)])
        else:
            turns_now = max(turns_before, turns_now)
            store.execute("UPDATE hm_sessions SET turns = ?, last = ? WHERE session = ?", (turns_now, at, self.session))
        self.remember(turns_now)
        return self._result()

    def update_facts(self) -> None:
        """Write the strengthened and ended facts: one by its key (DuckDB updates a row by key in half the time of
        a join), several through a join with their new values."""
        changed = [(f.id, *(getattr(f, c) for c, _ in self._CHANGES)) for f in self.dirty.values()]
        if len(changed) == 1:
            self.store.execute(f"UPDATE hm_facts SET {', '.join(f'{c} = ?' for c, _ in self._CHANGES)} WHERE id = ?",
                               (*changed[0][1:], changed[0][0]))
        elif changed:
            typed = "(?::BIGINT, " + ", ".join(f"?::{t}" for _, t in self._CHANGES) + ")"
            self.store.execute(
                f"UPDATE hm_facts SET {', '.join(f'{c} = v.{c}' for c, _ in self._CHANGES)} FROM (VALUES "
                + ", ".join([typed] * len(changed))
                + f") AS v(id, {', '.join(c for c, _ in self._CHANGES)}) WHERE hm_facts.id = v.id",
                [value for row in changed for value in row])

    def remember(self, turns: int) -> None:
        """Teach the cache what this add wrote (inside the transaction: a rollback empties the cache)."""
        cache = self.cache
        if cache is None:
            return
        cache.entities.update(self.by_id)
        cache.names.update({key: None for key in self.looked_up})
        cache.names.update({key: entity.id for key, entity in self.known.items()})
        for entity_id in self.created:
            cache.facts[entity_id] = set()
        for fact in self.new_facts.values():
            if fact.valid_to is None:
                cache.open[fact.id] = fact
                sides = (fact.subject, fact.object) if fact.predicate in self.memory._symmetric else (fact.subject,)
                for entity_id in sides:
                    if entity_id in cache.facts:
                        cache.facts[entity_id].add(fact.id)
        for fact, _, _ in self.changes.ended.values():
            cache.open.pop(fact.id, None)
            for entity_id in (fact.subject, fact.object):
                cache.facts.get(entity_id, set()).discard(fact.id)
        cache.turns[self.session] = turns
        cache.trim()

    def _current(self, entity: _Entity) -> _Entity:
        """The entity `entity` is after this add's merges. By id: its own key may never have been looked up (it was
        reached through another name), so `known` may not have it."""
        return self.met(entity.id)

    def met(self, entity_id: int) -> _Entity:
        """An entity this add has met (created, looked up, or read by `entities`); any other id is a bug here."""
        entity = self.by_id.get(entity_id)
        if entity is None:
            raise AssertionError(f"internal error: entity {entity_id} was neither read nor created by this add")
        return entity

    def _merge_kin(self, facts: list[_Said], turns: list[Turn]) -> None:
        """"Anna's sister" stored before, `sibling_of(Anna, Maria)` now: the sister is Maria. Every stored, still
        unnamed kin of Anna the relation may name is a candidate ("Anna's sister", "Anna's brother", "Anna's
        sibling"); Maria becomes the one that fits (`_kin_fit`), when it is no other named relative's candidate and
        has no name of its own yet (two names are two people)."""
        asked: dict[tuple[int, int], tuple[_Entity, _Entity, list[str]]] = {}  # (owner, named) ids -> kin words
        for item in facts:
            s, o = self._current(item.subject), self._current(item.object)
            symmetric = item.predicate in self.memory._symmetric
            for word, kin in KIN_WORDS.items():
                if kin.predicate != item.predicate:
                    continue
                pairs = [(s, o), (o, s)] if symmetric else [(o, s)] if kin.kin_is_subject else [(s, o)]
                for owner, named in pairs:
                    if not split_possessive(named.key) and not split_possessive(owner.key):
                        words = asked.setdefault((owner.id, named.id), (owner, named, []))[2]
                        if word not in words:
                            words.append(word)
        if not asked:
            return
        self.load(f"{owner.key} 's {word}" for owner, _, words in asked.values() for word in words)
        options = []
        for owner, named, words in asked.values():
            stored = {w: kin for w in words if (kin := self.known.get(f"{owner.key} 's {w}")) is not None
                      and kin.id != named.id and split_possessive(kin.key)}  # a kin named already has a plain key
            if stored:
                options.append((named, stored))
        if not options:
            return
        said = self._kin_said(facts, turns)
        claims: dict[int, tuple[_Entity, list[_Entity]]] = {}  # kin id -> (kin, the named relatives it may be)
        for named, stored in options:
            for kin in self._kin_fit(stored, said.get(named.id, set())):
                claims.setdefault(kin.id, (kin, []))[1].append(named)
        claims = {i: c for i, c in claims.items() if len({n.id for n in c[1]}) == 1}
        named_already = self._named(list(claims))
        for kin_id, (kin, (named, *_)) in claims.items():
            if kin_id not in named_already:
                self.merge_entities(self._current(named), kin, "kinship")

    @staticmethod
    def _kin_fit(stored: dict[str, _Entity], said: set[str]) -> list[_Entity]:
        """Of the stored kin a named relative may be (by kin word), those they are: the only candidate whose word
        fits the gender said of them (a "sister" is no "brother"; "sibling" fits both), or several of one role
        ("Anna's mom" and "Anna's mother"); when more fit, the one role this add says of them ("my sister Maria").
        None when it stays ambiguous."""
        genders = {KIN_WORDS[w].gender for w in said} - {None}
        fit = {w: kin for w, kin in stored.items()
               if KIN_WORDS[w].gender is None or not genders or genders == {KIN_WORDS[w].gender}}
        roles = {KIN_WORDS[w].role for w in said}
        for chosen in (fit, {w: kin for w, kin in fit.items() if KIN_WORDS[w].role in roles}):
            kin = list({k.id: k for k in chosen.values()}.values())
            if len(kin) == 1 or (kin and len({KIN_WORDS[w].role for w in chosen}) == 1):
                return kin
        return []

    def _kin_said(self, facts: list[_Said], turns: list[Turn]) -> dict[int, set[str]]:
        """Kin words this add says of each entity (by id): the word of a gendered predicate for its subject
        (`sister_of`, `mother_of`), and those its turn's text gives its name ("my sister Maria"), which the
        relation alone (`sibling_of`) does not keep."""
        said: dict[int, set[str]] = {}
        for item in facts:
            subject, obj = (item.object, item.subject) if item.swapped else (item.subject, item.object)
            word, _, of = snake_case(item.relation.predicate).rpartition("_")
            if of == "of" and word in KIN_WORDS:
                said.setdefault(self._current(subject).id, set()).add(word)
            text = turns[item.turn].text if turns else ""
            for entity, name in ((subject, item.relation.subject), (obj, item.relation.object)):
                words = kin_said_of(text, entity_key(name, item.speaker)) if text else set()
                said.setdefault(self._current(entity).id, set()).update(words)
        return said

    def _named(self, ids: list[int]) -> set[int]:
        """Of `ids`, the entities with a name of their own: any name not through a possessor, nor a transcript's
        label ("Speaker 2") or the unnamed speaker."""
        if not ids:
            return set()
        rows = self.store.fetchall(f"SELECT entity_id, key FROM hm_aliases WHERE entity_id IN {marks(ids)}", ids)
        rows += [(a[1], a[0]) for a in self.new_aliases if a[1] in ids]  # not written yet
        return {i for i, key in rows if not split_possessive(key) and not key.startswith(_LABEL_PREFIX)}

    def _negate(self, facts: list[_Said], turns: list[Turn], negations: dict[int, list[NegatedClause]],
                open_facts: dict[int, _Open], speaker: str | None) -> list[_Said]:
        kept = []
        for item in facts:
            clauses = negations.get(item.turn, [])
            cues = self.memory._predicate_cues(item.predicate)
            if any(c.names(item.object.key) and c.speaks_of(item.predicate, cues) for c in clauses):
                self.changes.negated.append((item.subject.name, item.predicate, item.object.name))
            else:
                kept.append(item)
        self.entities({f.object for f in open_facts.values()})  # what the clauses must name
        for index, clauses in negations.items():
            turn = turns[index]
            who = self.known.get(entity_key(turn.speaker or speaker or SPEAKER, None))
            for fact in list(open_facts.values()):
                if fact.scope not in (None, self.scope):
                    continue
                subject = self.by_id.get(fact.subject)  # None: read for its object, a subject this add never met
                said_subject = subject is not None and (
                    (who is not None and subject.id == who.id) or any(c.names(subject.key) for c in clauses)
                    or is_grounded(subject.name, turn.text, [turn.speaker] if turn.speaker else []))
                if not said_subject:
                    continue
                cues = self.memory._predicate_cues(fact.predicate)
                if any(c.names(self.met(fact.object).key) and c.speaks_of(fact.predicate, cues) for c in clauses):
                    self.end(fact, self.at, "negated", open_facts)
        return kept

    def _result(self) -> AddResult:
        changes = self.changes
        ended = [f for f, _, _ in changes.ended.values()]
        self.entities({i for f in [*changes.added.values(), *changes.strengthened.values(), *ended]
                       for i in (f.subject, f.object)})  # an ended rival's object may be new to this add

        def fact(f: _Open) -> Fact:
            s, o = self.met(f.subject), self.met(f.object)
            return Fact(id=f.id, subject=s.name, predicate=f.predicate, object=o.name, subject_type=s.type,
                        object_type=o.type, valid_from=_aware(f.valid_from), valid_to=_aware(f.valid_to),
                        ended_by=f.ended_by, mentions=f.mentions, confidence=min(1.0, f.confidence),
                        max_confidence=min(1.0, f.max_confidence), first_seen=_aware(f.first_seen),
                        last_seen=_aware(f.last_seen), session=f.scope)

        return AddResult(
            added=[fact(f) for f in changes.added.values()],
            strengthened=[fact(f) for f in changes.strengthened.values()],
            ended=[fact(f) for f in ended],
            merges=changes.merges,
            negated=changes.negated,
        )
