"""What the memory returns: facts with their validity and strength, their provenance, and the merges it made."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AddResult", "Fact", "Mention", "Merge"]


class Fact(BaseModel):
    """One stored relation over a validity interval. A repeated mention strengthens it (`mentions`, `confidence`);
    a functional predicate's new value or a negation ends it (`valid_to`, `ended_by`) instead of deleting it."""

    model_config = ConfigDict(frozen=True)

    id: int
    subject: str
    predicate: str
    object: str
    subject_type: str = "MISC"
    object_type: str = "MISC"
    valid_from: datetime
    valid_to: datetime | None = None
    #: "superseded" (a functional predicate took a new value), "negated" (stated as no longer true), None if valid.
    ended_by: str | None = None
    #: How often it was said (each time with a `Mention`).
    mentions: int = 1
    #: Noisy-or of the mentions' confidences: 1 - prod(1 - c); more mentions, more confidence.
    confidence: float = Field(ge=0.0, le=1.0)
    max_confidence: float = Field(ge=0.0, le=1.0)
    first_seen: datetime
    last_seen: datetime
    #: The session whose working memory holds it; None for the persistent graph.
    session: str | None = None

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.subject, self.predicate, self.object)

    @property
    def is_valid(self) -> bool:
        return self.valid_to is None

    def __str__(self) -> str:
        until = self.valid_to.date().isoformat() if self.valid_to else "now"
        return (f"{self.subject} --{self.predicate}--> {self.object} "
                f"[{self.valid_from.date().isoformat()} .. {until}] x{self.mentions} {self.confidence:.2f}")


class Mention(BaseModel):
    """Provenance: one time a fact was said (or given), by whom, where, and which extractor read it."""

    model_config = ConfigDict(frozen=True)

    fact_id: int
    session: str
    turn: int
    speaker: str | None
    text: str
    at: datetime
    extractor: str
    model_version: str | None = None
    confidence: float


class Merge(BaseModel):
    """A record that a name was folded into an entity, and why: `speaker` (I/me/the speaker's name),
    `kinship` (a possessive name resolved through its possessor, or a kin named later), `alias` (stated: the name
    said that is not the entity's), `first_name` (a unique person's first name), `entity` (a stored entity an alias
    reached under another name, by its own name: "Maria is Joey" where Maria named Ross records Maria and Ross)."""

    model_config = ConfigDict(frozen=True)

    entity: str
    merged: str
    reason: str
    session: str | None = None
    at: datetime


class AddResult(BaseModel):
    """What one `Memory.add` changed."""

    added: list[Fact] = Field(default_factory=list)
    strengthened: list[Fact] = Field(default_factory=list)
    ended: list[Fact] = Field(default_factory=list)
    merges: list[Merge] = Field(default_factory=list)
    #: Extracted relations not stored because their clause negates them.
    negated: list[tuple[str, str, str]] = Field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.strengthened or self.ended or self.merges)

    def __str__(self) -> str:
        lines = [f"+ {f}" for f in self.added] + [f"^ {f}" for f in self.strengthened]
        lines += [f"- {f}" for f in self.ended] + [f"= {m.merged} -> {m.entity} ({m.reason})" for m in self.merges]
        return "\n".join(lines) if lines else "(nothing new)"
