"""The contract: typed graphs, conversation turns and annotated records. Everything else speaks these types."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hotmem.errors import InvalidInputError
from hotmem.names import SPEAKER

__all__ = ["Entity", "Graph", "Record", "Relation", "Turn", "as_turns", "render_turns", "speakers_of"]


# --------------------------------------------------------------------------- graph


class Entity(BaseModel):
    """A node: a named thing the conversation is about."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, description="Surface name as said, with possessor for kin ('Anna's sister').")
    type: str = Field(default="MISC", description="Entity type from the schema, e.g. PERSON or LOCATION.")
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)


class Relation(BaseModel):
    """A directed edge `subject -predicate-> object` between two entity names."""

    model_config = ConfigDict(frozen=True)

    subject: str = Field(min_length=1)
    predicate: str = Field(min_length=1)
    object: str = Field(min_length=1)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.subject, self.predicate, self.object)


class Graph(BaseModel):
    """What hotmem returns: entities, relations between them, and an overall confidence."""

    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)

    @property
    def is_empty(self) -> bool:
        return not self.entities and not self.relations

    def entity(self, name: str) -> Entity | None:
        folded = name.casefold()
        return next((e for e in self.entities if e.name.casefold() == folded), None)

    def to_json(self, **kwargs: Any) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, data: str | bytes) -> Graph:
        return cls.model_validate_json(data)

    def to_networkx(self):
        """A `networkx.MultiDiGraph`: one node per entity (with `type`), one edge per relation (key = predicate)."""
        import networkx as nx

        graph = nx.MultiDiGraph(confidence=self.confidence)
        for entity in self.entities:
            graph.add_node(entity.name, type=entity.type, confidence=entity.confidence)
        for relation in self.relations:
            for endpoint in (relation.subject, relation.object):
                if endpoint not in graph:
                    graph.add_node(endpoint, type="MISC", confidence=relation.confidence)
            graph.add_edge(
                relation.subject,
                relation.object,
                key=relation.predicate,
                predicate=relation.predicate,
                confidence=relation.confidence,
            )
        return graph

    def __str__(self) -> str:
        lines = [f"{e.name} [{e.type}]" for e in self.entities]
        lines += [f"{r.subject} --{r.predicate}--> {r.object}" for r in self.relations]
        return "\n".join(lines) if lines else "(empty graph)"


# --------------------------------------------------------------------------- input


class Turn(BaseModel):
    """One turn of a conversation. `speaker=None` means the speaker is not named."""

    model_config = ConfigDict(frozen=True)

    speaker: str | None = None
    text: str


def _checked(turn: Turn) -> Turn:
    for field, value in (("speaker", turn.speaker), ("text", turn.text)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a broken decode upstream
            raise InvalidInputError(
                f"the turn's {field} is not valid Unicode text ({exc.reason} at position {exc.start})"
            ) from None
    return turn


def as_turns(text: str | Turn | Sequence[Turn | dict | tuple[str, str]], speaker: str | None = None) -> list[Turn]:
    """Normalise what callers pass (a string, turns, dicts or `(speaker, text)` pairs) into checked turns.

    Anything else, and text that is not valid Unicode, raises `InvalidInputError`.
    """
    if speaker is not None and not isinstance(speaker, str):
        raise InvalidInputError(f"speaker must be a string, got {type(speaker).__name__}")
    if isinstance(text, str):
        return [_checked(Turn(speaker=speaker, text=text))]
    if isinstance(text, Turn):
        return [_checked(text)]
    if isinstance(text, (bytes, bytearray)) or not isinstance(text, Iterable):
        raise InvalidInputError(f"expected text or a list of turns, got {type(text).__name__}")
    turns: list[Turn] = []
    for item in text:
        try:
            if isinstance(item, Turn):
                turn = item
            elif isinstance(item, dict):
                turn = Turn.model_validate(item)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                turn = Turn(speaker=item[0], text=item[1])
            elif isinstance(item, str):
                turn = Turn(speaker=speaker, text=item)
            else:
                raise InvalidInputError(f"cannot read a turn from {item!r}")
        except ValidationError as exc:
            raise InvalidInputError(f"cannot read a turn from {item!r}: {exc.errors()[0]['msg']}") from None
        turns.append(_checked(turn))
    return turns


def render_turns(turns: Sequence[Turn]) -> str:
    """The text an LM sees: one line per turn, `Speaker: text` when the speaker is named."""
    return "\n".join(f"{t.speaker}: {t.text}" if t.speaker else t.text for t in turns)


def speakers_of(turns: Sequence[Turn]) -> list[str]:
    """Named speakers in order of first appearance; `[SPEAKER]` when nobody is named."""
    names = list(dict.fromkeys(t.speaker for t in turns if t.speaker))
    return names or [SPEAKER]


class Record(BaseModel):
    """An annotated example: conversation turns and the gold graph (from our gold set or a loaded corpus)."""

    id: str
    turns: list[Turn]
    graph: Graph = Field(default_factory=Graph)
    category: str | None = None
    split: Literal["train", "dev", "test"] | None = None
    source: str = "hotmem-gold"
    #: Set when relations were annotated only between these argument pairs (DialogRE): a predicted relation
    #: between any other pair is unlabeled, neither right nor wrong, and is not scored.
    scored_pairs: list[tuple[str, str]] | None = None
    #: Set when the annotation holds only these predicates (a corpus mapped onto part of the schema): a predicted
    #: relation with another predicate (or the inverse of none of these) is unlabeled and is not scored.
    scored_predicates: list[str] | None = None

    @property
    def text(self) -> str:
        return render_turns(self.turns)

    @property
    def speakers(self) -> list[str]:
        return speakers_of(self.turns)
