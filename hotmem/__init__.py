"""hotmem: conversation to knowledge graph, fast and locally.

>>> from hotmem import GraphExtractor
>>> GraphExtractor()("Did I tell you that Potola is five years old? She's my cat.")

The runtime (this package's top level, `hotmem.teacher`, `hotmem.students`, `hotmem.llama`, `hotmem.memory`) never
imports the pipeline that trains it (`hotmem.pipeline`, `hotmem.data`).
"""

import logging

from hotmem.errors import (
    ConfigurationError,
    ExtractionError,
    HotmemError,
    InvalidInputError,
    ModelNotAvailableError,
    SchemaMismatchError,
    StudentNotFoundError,
)
from hotmem.names import SPEAKER
from hotmem.schema import CATEGORIES, CONVERSATION_SCHEMA, ENTITY_TYPES, RelationSchema, RelationType
from hotmem.types import Entity, Graph, Record, Relation, Turn

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Loaded on first use, so `import hotmem` stays light (pydantic only) and an app pays only for what it runs.
_LAZY = {
    "GraphExtractor": "hotmem.extractor",
    "Memory": "hotmem.memory",
    "Teacher": "hotmem.teacher",
    "configure": "hotmem.lm",
    "load_program": "hotmem.teacher",
    "make_lm": "hotmem.lm",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hotmem' has no attribute {name!r}")


__all__ = [
    "CATEGORIES",
    "CONVERSATION_SCHEMA",
    "ENTITY_TYPES",
    "SPEAKER",
    "ConfigurationError",
    "Entity",
    "ExtractionError",
    "Graph",
    "GraphExtractor",
    "HotmemError",
    "InvalidInputError",
    "Memory",
    "ModelNotAvailableError",
    "Record",
    "Relation",
    "RelationSchema",
    "RelationType",
    "SchemaMismatchError",
    "StudentNotFoundError",
    "Teacher",
    "Turn",
    "configure",
    "load_program",
    "make_lm",
]
