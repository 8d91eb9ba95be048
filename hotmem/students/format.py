"""The student's contract: its system prompt, the compact graph it writes, the grammar that constrains it, and the
parse back into a `Graph`. Shared by training (`hotmem.pipeline.distill`) and every student backend.

Two answer formats (`ANSWER_FORMATS`); a student's `student.json` names the one it was trained on:

    json:  {"e":[["Potola","ANIMAL"],["speaker","PERSON"]],"r":[["speaker","has_pet","Potola"]]}
    lines: speaker|PERSON|has_pet|Potola|ANIMAL

`lines` writes a fact a line with its endpoints' types, and an entity in no relation as `name|TYPE`: a third fewer
output tokens than `json` on the gold graphs (35.6 against 52.0), and output tokens are a CPU student's latency.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hotmem.assemble import MAX_ENTITIES, MAX_NAME_CHARS, ExtractedEntity, ExtractedRelation, assemble_graph
from hotmem.errors import InvalidInputError
from hotmem.names import SPEAKER
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Graph, Turn, render_turns, speakers_of

__all__ = ["ANSWER_FORMATS", "STUDENT_SYSTEM_PROMPT", "check_answer_format", "forced_continuation", "graph_to_target",
           "lines_grammar", "parse_student_output", "schema_prompt", "student_json_schema", "student_messages"]

ANSWER_FORMATS = ("json", "lines")

#: Short on purpose: the student pays for every prompt token on every call. A student trained with
#: `prompt: "schema"` reads the schema after it (`schema_prompt`); the first shipped one knew this line only.
STUDENT_SYSTEM_PROMPT = (
    "Extract the knowledge graph of the conversation as JSON: e = entities [name, TYPE], r = relations "
    "[subject, predicate, object]. I/me/my is the speaker (their name, else \"speaker\"); resolve pronouns; "
    "only facts stated as true; {\"e\":[],\"r\":[]} when there are none."
)

_LINES_SYSTEM_PROMPT = (
    "Extract the knowledge graph of the conversation, a fact a line: subject|TYPE|predicate|object|TYPE, or "
    "name|TYPE for an entity in no fact. I/me/my is the speaker (their name, else \"speaker\"); resolve pronouns; "
    "only facts stated as true; nothing when there are none."
)


def check_answer_format(answer_format: str) -> str:
    """`answer_format`, if it is one of `ANSWER_FORMATS`; else `InvalidInputError`."""
    if answer_format not in ANSWER_FORMATS:
        raise InvalidInputError(f"answer_format is one of {ANSWER_FORMATS}, not {answer_format!r}")
    return answer_format


def schema_prompt(schema: RelationSchema, predicates: Sequence[str] | None = None,
                  answer_format: str = "json") -> str:
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
    instructions = STUDENT_SYSTEM_PROMPT if check_answer_format(answer_format) == "json" else _LINES_SYSTEM_PROMPT
    return (f"{instructions}\nEntity types: {' '.join(schema.entity_types)}\n"
            f"Relations by SUBJECT>OBJECT types:\n{inventory}")


def _line_field(name: str) -> str:
    """A name as a `lines` field: no separator, no line break."""
    return " ".join(name.replace("|", "/").split())


def graph_to_target(graph: Graph, answer_format: str = "json") -> str:
    """The compact answer the student learns to write (no confidences: they are derived, as for the teacher)."""
    if check_answer_format(answer_format) == "json":
        return json.dumps(
            {"e": [[e.name, e.type] for e in graph.entities],
             "r": [[r.subject, r.predicate, r.object] for r in graph.relations]},
            ensure_ascii=False,
            separators=(",", ":"),
        )
    types = {e.name: e.type for e in graph.entities}
    lines = [f"{_line_field(r.subject)}|{types.get(r.subject, 'MISC')}|{r.predicate}|{_line_field(r.object)}|"
             f"{types.get(r.object, 'MISC')}\n" for r in graph.relations]
    in_facts = {name for r in graph.relations for name in (r.subject, r.object)}
    lines += [f"{_line_field(e.name)}|{e.type}\n" for e in graph.entities if e.name not in in_facts]
    return "".join(lines)


def _gbnf_alternatives(words: Sequence[str]) -> str:
    return " | ".join(json.dumps(word) for word in words)


def lines_grammar(schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                  max_lines: int = 2 * MAX_ENTITIES) -> str:
    """The GBNF grammar of a `lines` answer: at most `max_lines` lines (as many as the `json` format's two lists
    hold), types (and, closed, predicates) from the schema, names bounded (a small model would otherwise loop
    inside one until `max_tokens`)."""
    predicate = _gbnf_alternatives(schema.predicates) if closed else "[a-z] [a-z_]{0,40}"
    return "\n".join([
        f"root ::= line{{0,{max_lines}}}",
        'line ::= name "|" type ("|" predicate "|" name "|" type)? "\\n"',
        f'name ::= [^|\\n] [^|\\n]{{0,{MAX_NAME_CHARS - 1}}}',
        f"type ::= {_gbnf_alternatives(schema.entity_types)}",
        f"predicate ::= {predicate}",
    ])


def _typed_names(lines: Sequence[str]) -> dict[str, str]:
    """The type each name got where a `lines` answer first wrote it."""
    types: dict[str, str] = {}
    for fields in (line.split("|") for line in lines):
        for name, type_ in zip(fields[0:4:3], fields[1:5:3]):
            types.setdefault(name, type_)
    return types


def forced_continuation(answer: str, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True) -> str:
    """The text that follows `answer` in a `lines_grammar(schema, closed)` answer, whatever the model would prefer.

    What the grammar forces: the rest of a type or (closed) a predicate once one name alone starts that way, the line
    break after an object's type. And what the graph would keep anyway: a name written before has the type it was
    first given (graph assembly keeps the first), the speaker is a PERSON. The engine feeds this text to the model in
    one batch instead of decoding it a token at a time."""
    *done, line = answer.split("\n")
    fields = line.split("|")
    partial = fields[-1]
    if len(fields) in (2, 5):  # a subject's or an object's type
        if not partial:  # the name before it is complete
            name = fields[-2]
            known = "PERSON" if name == SPEAKER else _typed_names([*done, line] if len(fields) == 5 else done).get(name)
            types = [known] if known in schema.entity_types else []
        else:
            types = [t for t in schema.entity_types if t.startswith(partial)]
        if len(types) != 1:
            return ""
        # after the subject's type come `|predicate` or a line break; after the object's, the line break
        return types[0][len(partial):] + ("\n" if len(fields) == 5 else "")
    if len(fields) == 3 and closed:
        predicates = [p for p in schema.predicates if p.startswith(partial)]
        # not the `|` after it: the tokenizer often joins it to the next name (`|M` `arseille`)
        return predicates[0][len(partial):] if len(predicates) == 1 else ""
    return ""


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


def parse_student_output(text: str, turns: Sequence[Turn], schema: RelationSchema, closed: bool = True,
                         answer_format: str = "json") -> Graph:
    """The compact answer (`json` or `lines`) as a clean `Graph`."""
    if check_answer_format(answer_format) == "json":
        data = json.loads(text)
        entities = [ExtractedEntity(name=name, type=type_) for name, type_ in data.get("e", [])]
        relations = [ExtractedRelation(subject=s, predicate=p, object=o) for s, p, o in data.get("r", [])]
    else:
        entities, relations = [], []
        for fields in (line.split("|") for line in text.splitlines()):
            fields = [f.strip() for f in fields]
            if len(fields) == 5 and all(fields):
                subject, subject_type, predicate, object_, object_type = fields
                entities += [ExtractedEntity(name=subject, type=subject_type),
                             ExtractedEntity(name=object_, type=object_type)]
                relations.append(ExtractedRelation(subject=subject, predicate=predicate, object=object_))
            elif len(fields) == 2 and all(fields):
                entities.append(ExtractedEntity(name=fields[0], type=fields[1]))
    return assemble_graph(entities, relations, text=render_turns(turns), speakers=speakers_of(turns), schema=schema,
                          closed=closed)
