"""The teacher's demonstration pool: annotated examples written as the entities and relations steps read them.

Those steps read simple statements in which the speaker is named (the decompose step's output). An annotated
example's statements are made without an LM: its sentences, each first-person word replaced by its turn's speaker
("i have two dogs" -> "speaker have two dogs": the steps extract, grammar does not matter). An example whose
entities its statements do not all mention is left out, so no demo answers with what its input lacks.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

from hotmem.errors import InvalidInputError
from hotmem.names import SPEAKER, is_grounded
from hotmem.pipeline.mixture import SOURCES
from hotmem.schema import RelationSchema
from hotmem.types import Record, Turn, render_turns, speakers_of

__all__ = ["POOL_SOURCES", "demo_pool", "pool_example", "pool_from", "speaker_statements"]

logger = logging.getLogger(__name__)

#: Mixture sources in the conversation schema whose records may be shown as demos (no evaluation slice in them).
POOL_SOURCES = ("gold", "personaext-conversation")
#: First-person forms -> how a statement names the speaker ({s}).
_FIRST_PERSON = {"i": "{s}", "me": "{s}", "myself": "{s}", "my": "{s}'s", "mine": "{s}'s", "i'm": "{s} is",
                 "im": "{s} is", "i've": "{s} has", "ive": "{s} has", "i'd": "{s} would", "i'll": "{s} will"}
_FIRST_PERSON_WORD = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _FIRST_PERSON), key=len, reverse=True))
                                + r")\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def speaker_statements(turns: Sequence[Turn]) -> list[str]:
    """Each turn's sentences with first-person words replaced by the turn's speaker."""
    statements = []
    for turn in turns:
        name = turn.speaker or SPEAKER
        for sentence in _SENTENCE_END.split(turn.text.strip()):
            if sentence.strip():
                statements.append(_FIRST_PERSON_WORD.sub(lambda m: _FIRST_PERSON[m.group(0).casefold()]
                                                         .format(s=name), sentence.strip()))
    return statements


def pool_example(record: Record, source: str | None = None) -> dict[str, Any] | None:
    """A pool entry for an annotated record, or None when it has no relation or its statements miss an entity."""
    if not record.graph.relations:
        return None
    statements = speaker_statements(record.turns)
    said, speakers = " ".join(statements), speakers_of(record.turns)
    if not all(is_grounded(e.name, said, speakers) for e in record.graph.entities):
        return None
    return {"conversation": render_turns(record.turns), "statements": statements,
            "entities": [{"name": e.name, "type": e.type} for e in record.graph.entities],
            "relations": [{"subject": r.subject, "predicate": r.predicate, "object": r.object}
                          for r in record.graph.relations],
            "source": source or record.source}


def demo_pool(records: Iterable[Record], source: str | None = None) -> list[dict[str, Any]]:
    """Pool entries for the records that qualify (see `pool_example`), one per distinct conversation, tagged with
    `source` (default: each record's own)."""
    pool: dict[str, dict[str, Any]] = {}
    seen = 0
    for record in records:
        seen += 1
        entry = pool_example(record, source)
        if entry is not None:
            pool.setdefault(entry["conversation"], entry)
    logger.info("demonstration pool: %d of %d records qualify", len(pool), seen)
    return list(pool.values())


def pool_from(sources: Sequence[str], schema: RelationSchema) -> list[dict[str, Any]]:
    """Pool entries from mixture sources (`POOL_SOURCES` by default) in `schema`, tagged with the source's name."""
    pool = []
    for name in sources:
        if name not in SOURCES:
            raise InvalidInputError(f"unknown pool source {name!r}; known: {sorted(SOURCES)}")
        # a mapped corpus comes with the part of the schema it annotates: its records are in `schema` all the same
        pool += demo_pool((record for record, its_schema in SOURCES[name].read(None)
                           if its_schema.name == schema.name and set(its_schema.predicates) <= set(schema.predicates)),
                          source=name)
    return pool
