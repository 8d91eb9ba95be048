"""The teacher program: coref -> decompose -> entities -> relations, assembled into a typed `Graph`.

Quality first (it labels data for the student), but it skips the later calls when an earlier step finds nothing:
chit-chat costs two short calls, not four. A teacher that reads sentences (`reads="sentences"`) skips coref and
decompose: the later steps read the conversation's own sentences, the speaker named for each first-person word.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Literal

import dspy

from hotmem.assemble import assemble_graph
from hotmem.errors import InvalidInputError
from hotmem.names import FIRST_PERSON_WORDS, PRONOUNS, SPEAKER, WORDS, split_sentences
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.teacher.demos import DemoRetriever
from hotmem.teacher.signatures import Reference, signatures_for
from hotmem.types import Turn, render_turns, speakers_of

logger = logging.getLogger(__name__)

#: Hand-written demonstrations: a complex sentence, a multi-turn pronoun case, chit-chat. Small models decoding
#: greedily otherwise repeat list items until the bound. Demos whose types or predicates a schema lacks are left out.
SEED_DEMOS = (
    {
        "turns": [(None, "Did I tell you that Potola is five years old? She's my cat.")],
        "references": [{"mention": "I", "refers_to": "speaker"}, {"mention": "She", "refers_to": "Potola"},
                       {"mention": "my", "refers_to": "speaker"}],
        "statements": ["Potola is five years old.", "Potola is speaker's cat."],
        "entities": [{"name": "Potola", "type": "ANIMAL"}, {"name": "five years", "type": "QUANTITY"},
                     {"name": "speaker", "type": "PERSON"}],
        "relations": [{"subject": "Potola", "predicate": "has_age", "object": "five years"},
                      {"subject": "speaker", "predicate": "has_pet", "object": "Potola"}],
    },
    {
        "turns": [("Anna", "My brother Tom just started at Equinor."), ("Ben", "Does he like it?"),
                  ("Anna", "He loves it. He even moved to Stavanger for it.")],
        "references": [{"mention": "My", "refers_to": "Anna"}, {"mention": "he", "refers_to": "Tom"},
                       {"mention": "it", "refers_to": "Equinor"}, {"mention": "He", "refers_to": "Tom"}],
        "statements": ["Tom is Anna's brother.", "Tom works at Equinor.", "Tom lives in Stavanger."],
        "entities": [{"name": "Tom", "type": "PERSON"}, {"name": "Anna", "type": "PERSON"},
                     {"name": "Equinor", "type": "ORGANIZATION"}, {"name": "Stavanger", "type": "LOCATION"}],
        "relations": [{"subject": "Tom", "predicate": "sibling_of", "object": "Anna"},
                      {"subject": "Tom", "predicate": "works_at", "object": "Equinor"},
                      {"subject": "Tom", "predicate": "lives_in", "object": "Stavanger"}],
    },
    {
        "turns": [(None, "hey! how was your weekend?")],
        "references": [],
        "statements": [],
        "entities": [],
        "relations": [],
    },
)

#: What a teacher's entities and relations steps read: the decompose step's statements, or the sentences as said.
READS = ("statements", "sentences")
#: First-person forms -> how a statement names the speaker ({s}).
_FIRST_PERSON = {"i": "{s}", "me": "{s}", "myself": "{s}", "my": "{s}'s", "mine": "{s}'s", "i'm": "{s} is",
                 "im": "{s} is", "i've": "{s} has", "ive": "{s} has", "i'd": "{s} would", "i'll": "{s} will"}
_FIRST_PERSON_WORD = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _FIRST_PERSON), key=len, reverse=True))
                                + r")\b", re.IGNORECASE)


def speaker_statements(turns: Sequence[Turn]) -> list[str]:
    """Each turn's sentences with first-person words replaced by the turn's speaker (no LM: pronouns stay)."""
    statements = []
    for turn in turns:
        name = turn.speaker or SPEAKER
        for sentence in split_sentences(turn.text):
            statements.append(_FIRST_PERSON_WORD.sub(lambda m: _FIRST_PERSON[m.group(0).casefold()].format(s=name),
                                                     sentence))
    return statements


def first_person_references(turns: Sequence[Turn]) -> list[Reference] | None:
    """References when only first-person pronouns occur (each is its turn's speaker); None if coref is needed."""
    references: dict[tuple[str, str], Reference] = {}
    for turn in turns:
        for word in WORDS.findall(turn.text):
            folded = word.casefold()
            if folded in PRONOUNS:
                return None
            if folded in FIRST_PERSON_WORDS:
                target = turn.speaker or SPEAKER
                references.setdefault((word, target), Reference(mention=word, refers_to=target))
    return list(references.values())


def step_demos(statements: list[str], entities: list[dict], relations: list[dict]) -> dict[str, dspy.Example]:
    """One demonstration each for the entities and relations steps, answered as the LM writes answers
    (`entities`: `{"name", "type"}` dicts; `relations`: `{"subject", "predicate", "object"}` dicts)."""
    return {
        "entities": dspy.Example(statements=statements, entities=entities),
        "relations": dspy.Example(statements=statements, entities=[e["name"] for e in entities], relations=relations),
    }


def fact_text(subject: str, predicate: str, obj: str, schema: RelationSchema) -> str:
    """A fact as the verify step reads it: the triple, then what its predicate means (when the schema knows it)."""
    spec = schema.get(predicate)
    return f"{subject} {predicate} {obj}" + (f" ({predicate}: {spec.description})" if spec is not None else "")


#: Alternatives read at the verdict token: enough to hold every casing and spacing of `true` and `false`.
VERDICT_TOP = 20


def stated_probability(prediction: dspy.Prediction) -> float:
    """P(stated) from a verify prediction with log-probabilities: at the first token that spells `true` or `false`,
    the softmax of the two answers' summed probabilities over the alternatives; the answer itself (1.0 or 0.0) when
    the LM reported none."""
    content = ((getattr(prediction, "logprobs", None) or {}).get("content")) or []
    for entry in content:
        if _verdict(entry["token"]) is None:
            continue
        scored = {alternative["token"]: alternative["logprob"] for alternative in entry.get("top_logprobs") or []}
        scored[entry["token"]] = entry["logprob"]  # the answer, whether or not it is among the alternatives
        mass = {True: 0.0, False: 0.0}
        for token, logprob in scored.items():
            verdict = _verdict(token)
            if verdict is not None:
                mass[verdict] += math.exp(logprob)
        return mass[True] / (mass[True] + mass[False])
    if content:
        logger.debug("no true/false token among the verify step's log-probabilities: its answer decides")
    return 1.0 if prediction.stated else 0.0


def _verdict(token: str) -> bool | None:
    word = token.strip().lower()
    return {"true": True, "false": False}.get(word)


def _seed_demos(schema: RelationSchema, reads: str) -> dict[str, list[dspy.Example]]:
    demos: dict[str, list[dspy.Example]] = {"coref": [], "decompose": [], "entities": [], "relations": []}
    for seed in SEED_DEMOS:
        turns = [Turn(speaker=speaker, text=text) for speaker, text in seed["turns"]]
        conversation, speakers = render_turns(turns), speakers_of(turns)
        demos["decompose"].append(dspy.Example(conversation=conversation, speakers=speakers,
                                               references=seed["references"], statements=seed["statements"]))
        if not seed["statements"]:
            continue  # the later steps never see a fact-free conversation: the teacher stops before them
        demos["coref"].append(dspy.Example(conversation=conversation, speakers=speakers,
                                           references=seed["references"]))
        statements = seed["statements"] if reads == "statements" else speaker_statements(turns)
        later = step_demos(statements, seed["entities"], seed["relations"])
        if all(e["type"] in schema.entity_types for e in seed["entities"]):
            demos["entities"].append(later["entities"])
        if all(r["predicate"] in schema.predicates for r in seed["relations"]):
            demos["relations"].append(later["relations"])
    return demos


class Teacher(dspy.Module):
    """The multi-step extraction program GEPA optimizes and whose labels the student learns from."""

    def __init__(self, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                 retriever: DemoRetriever | None = None, reads: Literal["statements", "sentences"] = "statements",
                 verify: bool = False, verify_threshold: float | None = None):
        """`retriever`: annotated examples nearest to each input, shown to the entities and relations steps after
        their own demos (`hotmem.teacher.demos`). `reads`: what those steps read, the decompose step's statements
        (coref and decompose run first) or the sentences as said, the speaker named for "I" (two LM calls fewer;
        on the 1.5B it finds more facts: `optimized/teacher/report.md`). `verify`: one more call per proposed
        fact, which keeps only the facts the statements say (precision for labelling, at a call a fact).
        `verify_threshold`: keep a fact when the check's probability that it is stated (`stated_probabilities`)
        reaches this, instead of when its answer says so; the LM must report log-probabilities."""
        super().__init__()
        if reads not in READS:
            raise InvalidInputError(f"reads is one of {READS}, not {reads!r}")
        self.schema = schema
        self.closed = closed
        self.retriever = retriever
        self.reads = reads
        if verify_threshold is not None and not (verify and 0.0 <= verify_threshold <= 1.0):
            raise InvalidInputError(f"verify_threshold is a probability for a teacher that verifies, not "
                                    f"{verify_threshold!r} (verify={verify})")
        self.verify_threshold = verify_threshold
        signatures = signatures_for(schema, closed)
        self.coref = dspy.Predict(signatures.coref)
        self.decompose = dspy.Predict(signatures.decompose)
        self.entities = dspy.Predict(signatures.entities)
        self.relations = dspy.Predict(signatures.relations)
        if verify:  # zero-shot: on gold dev, three hand-written checks as demos kept no more right facts
            self.verify = dspy.Predict(signatures.verify)
        for name, demos in _seed_demos(schema, reads).items():
            getattr(self, name).demos = demos

    @property
    def verifies(self) -> bool:
        """Whether each proposed fact is checked by one more call (`verify=True`)."""
        return isinstance(getattr(self, "verify", None), dspy.Predict)

    def verified(self, statements: list[str], relations: list) -> tuple[list, list]:
        """The proposed relations the verify step finds stated, and those it rejects. It decodes greedily whatever
        the sampling (`config`), so self-consistency votes on sampled proposals checked the same way each time."""
        if self.verify_threshold is None:
            verdicts = [self.verify(statements=statements, config={"temperature": 0.0},
                                    fact=fact_text(r.subject, r.predicate, r.object, self.schema)).stated
                        for r in relations]
        else:
            verdicts = [p >= self.verify_threshold for p in self.stated_probabilities(statements, relations)]
        return ([r for r, stated in zip(relations, verdicts) if stated],
                [r for r, stated in zip(relations, verdicts) if not stated])

    def stated_probabilities(self, statements: list[str], relations: list) -> list[float]:
        """Per relation, the verify step's probability that the statements state it: at its answer's first token,
        the mass of `true` against `false` in every casing and spacing the LM gives them (a small LM leans to
        Python's `True`, which the JSON grammar forbids, so the answer alone flips on near-ties)."""
        probabilities = []
        for relation in relations:
            fact = fact_text(relation.subject, relation.predicate, relation.object, self.schema)
            prediction = self.verify(statements=statements, fact=fact,
                                     config={"temperature": 0.0, "logprobs": True, "top_logprobs": VERDICT_TOP})
            probabilities.append(stated_probability(prediction))
        return probabilities

    def statements(self, turns: Sequence[Turn]) -> tuple[list[Reference], list[str]]:
        """The first two steps: references (coref) and the simple statements the later steps read."""
        if self.reads == "sentences":
            return first_person_references(turns) or [], speaker_statements(turns)
        conversation = render_turns(turns)
        speakers = speakers_of(turns)
        # Coref only runs when there is something beyond "I/me/my" to resolve.
        references = first_person_references(turns)
        if references is None:
            references = self.coref(conversation=conversation, speakers=speakers).references
        statements = self.decompose(conversation=conversation, speakers=speakers, references=references).statements
        return references, [s for s in dict.fromkeys(statements) if s.strip()]  # a small model may repeat one

    def forward(self, turns: list[Turn], check: bool = True) -> dspy.Prediction:
        """`check=False` skips the verify step (a caller checking several labels' facts once, together)."""
        conversation = render_turns(turns)
        speakers = speakers_of(turns)
        references, statements = self.statements(turns)
        entities: list = []
        relations: list = []
        retrieved = self.retriever(conversation) if self.retriever is not None and statements else {}
        if statements:
            entities = self.entities(statements=statements,
                                     demos=self.entities.demos + retrieved.get("entities", [])).entities
        if entities:
            relations = self.relations(statements=statements, entities=[e.name for e in entities],
                                       demos=self.relations.demos + retrieved.get("relations", [])).relations
        rejected: list = []
        if relations and self.verifies and check:
            relations, rejected = self.verified(statements, relations)
        graph = assemble_graph(
            entities,
            relations,
            text=conversation,
            speakers=speakers,
            schema=self.schema,
            closed=self.closed,
            references=references,
        )
        # the raw step outputs too: the metric tells the relations step what assembly had to drop
        return dspy.Prediction(graph=graph, references=references, statements=statements,
                               extracted_entities=entities, extracted_relations=relations,
                               rejected_relations=rejected)
