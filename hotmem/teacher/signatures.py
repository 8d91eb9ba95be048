"""Typed DSPy signatures of the four extraction steps and the optional check of each fact. Each docstring is the
instruction GEPA rewrites.

The LM-facing output types are compact on purpose (no confidences, short keys): on CPU every output token costs
~50 ms. `signatures_for(schema)` narrows entity types and, in closed extraction, predicates to the schema's names,
so constrained decoding cannot produce anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import dspy
from pydantic import WithJsonSchema, create_model

from hotmem.assemble import (  # the raw output contract and its bounds, shared with the students
    MAX_ENTITIES,
    MAX_REFERENCES,
    MAX_RELATIONS,
    MAX_STATEMENTS,
    ExtractedEntity,
    ExtractedRelation,
    Reference,
)
from hotmem.schema import RelationSchema


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


class VerifyRelation(dspy.Signature):
    """Decide whether the statements say that the fact is true.

    The fact is `subject predicate object`; the predicate's meaning follows it. Answer true only when a statement
    says this fact about this subject and this object, in this direction. Answer false when the fact is only
    asked about, wished for, planned or imagined, when the two are related in another way than the predicate
    means, or when the statements do not say it."""

    statements: list[str] = dspy.InputField()
    fact: str = dspy.InputField()
    stated: bool = dspy.OutputField()


def one_of(names: tuple[str, ...]) -> type:
    """A string the decoding grammar restricts to `names`, but that parsing accepts as any string.

    The grammar keeps an in-process model inside the schema. A served model may ignore the schema (llama-cpp-python's
    server does, for OpenAI-style `json_schema` requests): then an unknown name is dropped during graph assembly,
    instead of one bad predicate failing the whole answer.
    """
    return Annotated[str, WithJsonSchema({"enum": list(names), "type": "string"})]


@dataclass(frozen=True)
class Signatures:
    """The step signatures narrowed to one schema."""

    coref: type[dspy.Signature]
    decompose: type[dspy.Signature]
    entities: type[dspy.Signature]
    relations: type[dspy.Signature]
    verify: type[dspy.Signature] = VerifyRelation


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
