"""The student's contract: its system prompt, the compact graph it writes, the JSON schema that constrains it, and
the parse back into a `Graph`. Shared by training (`hotmem.pipeline.distill`) and every student backend.

    {"e":[["Potola","ANIMAL"],["speaker","PERSON"]],"r":[["speaker","has_pet","Potola"]]}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hotmem.assemble import MAX_ENTITIES, MAX_NAME_CHARS, ExtractedEntity, ExtractedRelation, assemble_graph
from hotmem.errors import InvalidInputError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Graph, Turn, render_turns, speakers_of

__all__ = ["STUDENT_SYSTEM_PROMPT", "graph_to_target", "parse_student_output", "schema_prompt",
           "student_json_schema", "student_messages"]

#: Short on purpose: the student pays for every prompt token on every call. A student trained with
#: `prompt: "schema"` reads the schema after it (`schema_prompt`); the first shipped one knew this line only.
STUDENT_SYSTEM_PROMPT = (
    "Extract the knowledge graph of the conversation as JSON: e = entities [name, TYPE], r = relations "
    "[subject, predicate, object]. I/me/my is the speaker (their name, else \"speaker\"); resolve pronouns; "
    "only facts stated as true; {\"e\":[],\"r\":[]} when there are none."
)


def schema_prompt(schema: RelationSchema, predicates: Sequence[str] | None = None) -> str:
    """The system prompt of a schema-reading student: the instructions, the entity types and the predicates it may
    use (`predicates`, or the whole schema), grouped by their endpoint types (`PERSON>PERSON: married_to dating`).
    Names and types, not the teacher's descriptions: every prompt token is paid in training on 2 cores, and grouping
    writes the conversation schema in 560 tokens instead of 1,009 a predicate a line. Fixed per schema, so
    llama.cpp's prefix cache processes it once per process."""
    groups: dict[str, list[str]] = {}
    for name in schema.predicates if predicates is None else predicates:
        relation = schema.get(name)
        if relation is None:
            raise InvalidInputError(f"{name!r} is not a predicate of schema {schema.name!r}")
        types = f"{'|'.join(relation.head_types) or 'ANY'}>{'|'.join(relation.tail_types) or 'ANY'}"
        groups.setdefault(types, []).append(name)
    inventory = "\n".join(f"{types}: {' '.join(names)}" for types, names in groups.items())
    return (f"{STUDENT_SYSTEM_PROMPT}\nEntity types: {' '.join(schema.entity_types)}\n"
            f"Relations by SUBJECT>OBJECT types:\n{inventory}")


def graph_to_target(graph: Graph) -> str:
    """The compact JSON the student learns to write (no confidences: they are derived, as for the teacher)."""
    return json.dumps(
        {"e": [[e.name, e.type] for e in graph.entities], "r": [[r.subject, r.predicate, r.object] for r in graph.relations]},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def student_json_schema(schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                        max_items: int = MAX_ENTITIES) -> dict[str, Any]:
    """JSON schema of the compact format, for constrained decoding (types and, closed, predicates enumerated).

    The teacher's list bounds and a bound on names apply: where a small model would loop inside a list or a name
    until `max_tokens` cut the JSON, the grammar closes it."""
    predicate: dict[str, Any] = {"type": "string", "enum": list(schema.predicates)} if closed else {"type": "string"}
    name = {"type": "string", "maxLength": MAX_NAME_CHARS}
    return {
        "type": "object",
        "properties": {
            "e": {"type": "array", "maxItems": max_items, "items": {
                "type": "array", "prefixItems": [name, {"type": "string", "enum": list(schema.entity_types)}],
                "minItems": 2, "maxItems": 2}},
            "r": {"type": "array", "maxItems": max_items, "items": {
                "type": "array", "prefixItems": [name, predicate, name],
                "minItems": 3, "maxItems": 3}},
        },
        "required": ["e", "r"],
    }


def student_messages(turns: Sequence[Turn], system: str = STUDENT_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat the student sees: its system prompt (`schema_prompt` for a schema-reading student), then the
    conversation."""
    return [{"role": "system", "content": system}, {"role": "user", "content": render_turns(turns)}]


def parse_student_output(text: str, turns: Sequence[Turn], schema: RelationSchema, closed: bool = True) -> Graph:
    """The compact `{"e": [[name, TYPE]], "r": [[s, p, o]]}` answer as a clean `Graph`."""
    data = json.loads(text)
    entities = [ExtractedEntity(name=name, type=type_) for name, type_ in data.get("e", [])]
    relations = [ExtractedRelation(subject=s, predicate=p, object=o) for s, p, o in data.get("r", [])]
    return assemble_graph(entities, relations, text=render_turns(turns), speakers=speakers_of(turns), schema=schema,
                          closed=closed)
