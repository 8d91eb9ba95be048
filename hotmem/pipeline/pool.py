"""The teacher's demonstration pool: annotated examples written as the entities and relations steps read them.

Those steps read simple statements in which the speaker is named. An annotated example's statements are made
without an LM, as a teacher that reads sentences makes its own (`speaker_statements`): its sentences, each
first-person word replaced by its turn's speaker ("i have two dogs" -> "speaker have two dogs": the steps extract,
grammar does not matter). An example whose entities its statements do not all mention is left out, so no demo
answers with what its input lacks. Chit-chat and questions that state no fact stay in: they are the nearest examples
of the inputs on which a teacher most often invents relations, and show it answering with none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from hotmem.errors import InvalidInputError
from hotmem.names import is_grounded
from hotmem.pipeline.mixture import SOURCES
from hotmem.schema import RelationSchema
from hotmem.teacher.program import speaker_statements
from hotmem.types import Record, render_turns, speakers_of

__all__ = ["POOL_SOURCES", "demo_pool", "pool_example", "pool_from"]

logger = logging.getLogger(__name__)

#: Mixture sources in the conversation schema whose records may be shown as demos (no evaluation slice in them).
POOL_SOURCES = ("gold", "personaext-conversation")


def pool_example(record: Record, source: str | None = None) -> dict[str, Any] | None:
    """A pool entry for an annotated record, or None when its statements miss one of its entities."""
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
