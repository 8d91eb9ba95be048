"""Typed DSPy signatures of the four extraction steps. Each docstring is the instruction GEPA rewrites.

The LM-facing output types are compact on purpose (no confidences, short keys): on CPU every output token costs
~50 ms. `signatures_for(schema)` narrows entity types and, in closed extraction, predicates to the schema's names,
so constrained decoding cannot produce anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import dspy
from annotated_types import MaxLen
from dspy.adapters.utils import serialize_for_json
from pydantic import BaseModel, WithJsonSchema, create_model

from hotmem.schema import RelationSchema

#: Bounds on list outputs: they become `maxItems` in the decoding grammar.
#: Small models decoding greedily tend to repeat a list item until the bound: keep bounds near real needs.
MAX_REFERENCES = 8
MAX_STATEMENTS = 10
MAX_ENTITIES = 12
MAX_RELATIONS = 12
#: Bound on a name in the student's grammar: a small model can loop inside a string, and the grammar then closes it.
MAX_NAME_CHARS = 80


class Reference(BaseModel):
    """A mention (pronoun, 'I', 'you', 'my sister') and the entity it stands for."""

    mention: str
    refers_to: str


class ExtractedEntity(BaseModel):
    name: str
    type: str


class ExtractedRelation(BaseModel):
    subject: str
    predicate: str
    object: str


class ResolveReferences(dspy.Signature):
    """Resolve who or what each reference in the conversation points to.

    List every pronoun (he, she, it, they, him, her, them, his, their, this, that), every "I/me/my" and every
    "you/your", with the entity it refers to. "I/me/my" is the person speaking that turn (the given speaker name,
    or "speaker" when nobody is named); "you" is the other speaker. A pronoun refers to an entity named earlier,
    possibly in an earlier turn. Write an unnamed relative with their possessor ("speaker's sister",
    "Anna's brother"). Return an empty list when there is nothing to resolve."""

    conversation: str = dspy.InputField(desc="one turn per line, 'Name: text' when the speaker is named")
    speakers: list[str] = dspy.InputField(desc="who is speaking; 'speaker' when not named")
    references: list[Reference] = dspy.OutputField(max_length=MAX_REFERENCES)


class Decompose(dspy.Signature):
    """Rewrite the facts stated in the conversation as short, simple, self-contained statements, one fact each.

    Split complex sentences ("Did I tell you that Potola is five years old?" -> "Potola is five years old.").
    Replace every reference by what it refers to, using the references given, so no statement contains a
    pronoun: write the speaker's name (or "speaker") for I/me/my. Keep only facts stated as true; drop greetings,
    small talk, questions that only ask, and wishes about hypotheticals. Return an empty list when the conversation
    states no fact."""

    conversation: str = dspy.InputField()
    speakers: list[str] = dspy.InputField()
    references: list[Reference] = dspy.InputField()
    statements: list[str] = dspy.OutputField(max_length=MAX_STATEMENTS)


class ExtractEntities(dspy.Signature):
    """List the entities the statements are about, each once, with its type.

    Entities are people (the speaker too, by name or as "speaker"), organizations, places, dates, events, creative
    works, products, animals, foods, activities, quantities such as ages, and other concrete things. Use the name as
    written, without articles. Qualify an unnamed relative by the possessor ("speaker's sister"), never a bare
    "sister". Never list a pronoun."""

    statements: list[str] = dspy.InputField()
    entities: list[ExtractedEntity] = dspy.OutputField(max_length=MAX_ENTITIES)


class ExtractRelations(dspy.Signature):
    """Extract the relations the statements state between the entities, as subject-predicate-object triples.

    Use predicates from the relation inventory (under the output fields), with its direction:
    `predicate(SUBJECT_TYPES>OBJECT_TYPES)`. Subject and object must be names from the entity list, written exactly
    as there. Only facts stated as true; return an empty list when no relation holds."""

    statements: list[str] = dspy.InputField()
    entities: list[str] = dspy.InputField()
    relations: list[ExtractedRelation] = dspy.OutputField(max_length=MAX_RELATIONS)


def one_of(names: tuple[str, ...]) -> type:
    """A string the decoding grammar restricts to `names`, but that parsing accepts as any string.

    The grammar keeps an in-process model inside the schema. A served model may ignore the schema (llama-cpp-python's
    server does, for OpenAI-style `json_schema` requests): then an unknown name is dropped during graph assembly,
    instead of one bad predicate failing the whole answer.
    """
    return Annotated[str, WithJsonSchema({"enum": list(names), "type": "string"})]


@dataclass(frozen=True)
class Signatures:
    """The four signatures narrowed to one schema."""

    coref: type[dspy.Signature]
    decompose: type[dspy.Signature]
    entities: type[dspy.Signature]
    relations: type[dspy.Signature]


def signatures_for(schema: RelationSchema, closed: bool = True) -> Signatures:
    """Signatures whose entity types are the schema's and, when `closed`, whose predicates are too.

    The relation inventory goes in the `relations` field's description, not in an input: it is then part of the
    fixed prompt prefix (its KV state is reused), and GEPA's reflection prompts, which repeat every input of
    every example they show, stay short.
    """
    entity_type = create_model(
        "ExtractedEntity", __base__=ExtractedEntity, type=(one_of(schema.entity_types), ...)
    )
    entities = ExtractEntities.with_updated_fields("entities", type_=list[entity_type])
    relations = ExtractRelations
    if closed:
        relation_type = create_model(
            "ExtractedRelation", __base__=ExtractedRelation, predicate=(one_of(schema.predicates), ...)
        )
        relations = ExtractRelations.with_updated_fields("relations", type_=list[relation_type])
    else:
        relations = ExtractRelations.with_instructions(
            ExtractRelations.instructions
            + " When no inventory predicate fits a stated fact, write a short snake_case predicate instead."
        )
    relations = relations.with_updated_fields(
        "relations", desc="relation inventory, one `predicate(SUBJECT_TYPES>OBJECT_TYPES): meaning` per line:\n"
        + schema.render()
    )
    return Signatures(ResolveReferences, Decompose, entities, relations)


class CompactJSONAdapter(dspy.JSONAdapter):
    """DSPy's JSON adapter, with demonstrations answered in compact JSON and list bounds in the output schema.

    The model copies the demos' layout: indented JSON costs a newline-and-indent token per line, about a third of
    the output tokens on these small outputs.
    """

    def _prepare_response_format(self, lm, lm_kwargs, signature) -> None:
        # DSPy 3.4 builds the structured-output schema from the output fields' types alone and drops their
        # `max_length`. Without `maxItems` a server's grammar (llama.cpp, Ollama, vLLM) lets a small model list
        # items until the token limit (the 0.5B wrote "Speaker 1" ... "Speaker 94" for one DialogRE dialogue).
        super()._prepare_response_format(lm, lm_kwargs, signature)
        response_format = lm_kwargs.get("response_format")
        if not (isinstance(response_format, type) and issubclass(response_format, BaseModel)):
            return
        schema = response_format.model_json_schema()
        for name, field in signature.output_fields.items():
            bound = next((rule.max_length for rule in field.metadata if isinstance(rule, MaxLen)), None)
            output = schema.get("properties", {}).get(name, {})
            if bound is not None and output.get("type") == "array":
                output["maxItems"] = bound
        response_format.model_json_schema = lambda *args, **kwargs: schema

    def format_field_with_value(self, fields_with_values, role: str = "user") -> str:
        if role == "user":
            return super().format_field_with_value(fields_with_values, role)
        values = {field.name: value for field, value in fields_with_values.items()}
        return json.dumps(serialize_for_json(values), ensure_ascii=False, separators=(",", ":"))
