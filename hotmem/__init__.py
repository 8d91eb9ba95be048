"""hotmem: conversation to knowledge graph, fast and locally.

>>> from hotmem import GraphExtractor
>>> GraphExtractor()("Did I tell you that Potola is five years old? She's my cat.")

Pipeline, one module per stage, each importing only earlier ones:
schema -> signatures -> teacher -> metric -> evaluate -> optimize -> label -> extractor
(distill and student follow).
"""

import logging

from hotmem.lm import configure, make_lm
from hotmem.schema import (
    CATEGORIES,
    CONVERSATION_SCHEMA,
    ENTITY_TYPES,
    SPEAKER,
    Entity,
    Graph,
    HotmemError,
    InvalidInputError,
    Record,
    Relation,
    RelationSchema,
    RelationType,
    SchemaMismatchError,
    Turn,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):
    # Heavier stages load on first use, so `import hotmem` stays fast.
    if name in {"GraphExtractor", "ExtractionError"}:
        from hotmem import extractor

        return getattr(extractor, name)
    if name == "Teacher":
        from hotmem.teacher import Teacher

        return Teacher
    if name == "GraphMetric":
        from hotmem.metric import GraphMetric

        return GraphMetric
    if name == "load_program":
        from hotmem.optimize import load_program

        return load_program
    raise AttributeError(f"module 'hotmem' has no attribute {name!r}")


__all__ = [
    "CATEGORIES",
    "CONVERSATION_SCHEMA",
    "ENTITY_TYPES",
    "SPEAKER",
    "Entity",
    "ExtractionError",
    "Graph",
    "GraphExtractor",
    "GraphMetric",
    "HotmemError",
    "InvalidInputError",
    "Record",
    "Relation",
    "RelationSchema",
    "RelationType",
    "SchemaMismatchError",
    "Teacher",
    "Turn",
    "configure",
    "load_program",
    "make_lm",
]
