"""The contract: typed graphs, conversation turns, annotated records and relation schemas.

Everything downstream (signatures, teacher, metric, student) speaks these pydantic types.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Canonical name of the person talking when the caller does not say who speaks.
SPEAKER = "speaker"

#: The conversation categories of the built-in schema (and of the gold data).
CATEGORIES = (
    "Daily Life",
    "Work & Career",
    "Entertainment",
    "Sports & Hobbies",
    "Food & Travel",
    "News & Events",
)

#: Entity types of the built-in conversational schema.
ENTITY_TYPES = (
    "PERSON",
    "ORGANIZATION",
    "LOCATION",
    "DATE",
    "EVENT",
    "WORK",
    "PRODUCT",
    "ANIMAL",
    "FOOD",
    "ACTIVITY",
    "QUANTITY",
    "MISC",
)


class HotmemError(Exception):
    """Base class of every error hotmem raises on purpose."""


class InvalidInputError(HotmemError, ValueError):
    """The caller's input cannot be extracted from (empty, wrong type, too long)."""


class SchemaMismatchError(HotmemError):
    """A saved program or data set does not fit the schema or program it is used with."""


def snake_case(predicate: str) -> str:
    """`Works At` / `works-at` / `worksAt` -> `works_at` (open extraction's predicate form)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", predicate.strip())
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")
    return text.lower()


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


def as_turns(text: str | Turn | Sequence[Turn | dict | tuple[str, str]], speaker: str | None = None) -> list[Turn]:
    """Normalise what callers pass (a string, turns, dicts or `(speaker, text)` pairs) into turns."""
    if isinstance(text, str):
        return [Turn(speaker=speaker, text=text)]
    if isinstance(text, Turn):
        return [text]
    if isinstance(text, (bytes, bytearray)) or not isinstance(text, Iterable):
        raise InvalidInputError(f"expected text or a list of turns, got {type(text).__name__}")
    turns: list[Turn] = []
    for item in text:
        if isinstance(item, Turn):
            turns.append(item)
        elif isinstance(item, dict):
            turns.append(Turn.model_validate(item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            turns.append(Turn(speaker=item[0], text=item[1]))
        elif isinstance(item, str):
            turns.append(Turn(speaker=speaker, text=item))
        else:
            raise InvalidInputError(f"cannot read a turn from {item!r}")
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

    @property
    def text(self) -> str:
        return render_turns(self.turns)

    @property
    def speakers(self) -> list[str]:
        return speakers_of(self.turns)


# --------------------------------------------------------------------------- relation schema


class RelationType(BaseModel):
    """One predicate of a schema: its meaning, allowed endpoint types, and how it matches others."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    head_types: tuple[str, ...] = ()
    tail_types: tuple[str, ...] = ()
    category: str | None = None
    synonyms: tuple[str, ...] = ()
    inverse: str | None = None
    symmetric: bool = False


class RelationSchema(BaseModel):
    """A relation inventory over entity types. Pass your own to extract DialogRE's, CoNLL04's or yours."""

    model_config = ConfigDict(frozen=True)

    name: str
    entity_types: tuple[str, ...]
    relations: tuple[RelationType, ...]
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> RelationSchema:
        names = [r.name for r in self.relations]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate predicates in schema {self.name!r}: {dupes}")
        known = set(self.entity_types)
        for relation in self.relations:
            unknown = set(relation.head_types + relation.tail_types) - known
            if unknown:
                raise ValueError(f"{relation.name}: entity types {sorted(unknown)} are not in the schema")
            if relation.inverse and relation.inverse not in names:
                raise ValueError(f"{relation.name}: inverse {relation.inverse!r} is not in the schema")
        return self

    @field_validator("entity_types")
    @classmethod
    def _nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a schema needs at least one entity type")
        return value

    # lookups -----------------------------------------------------------------
    @property
    def predicates(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.relations)

    def get(self, predicate: str) -> RelationType | None:
        return self._index().get(predicate)

    def _index(self) -> dict[str, RelationType]:
        # frozen model: cache on the instance dict without tripping validation
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {r.name: r for r in self.relations}
            self.__dict__["_index_cache"] = index
        return index

    def _aliases(self) -> dict[str, str]:
        aliases = self.__dict__.get("_alias_cache")
        if aliases is None:
            aliases = {}
            for relation in self.relations:
                for synonym in relation.synonyms:
                    aliases.setdefault(snake_case(synonym), relation.name)
            for relation in self.relations:
                aliases[relation.name] = relation.name
                aliases.setdefault(snake_case(relation.name), relation.name)
            self.__dict__["_alias_cache"] = aliases
        return aliases

    def canonical(self, predicate: str) -> str | None:
        """The schema predicate a name means (itself, or the one it is a synonym of); None if unknown."""
        aliases = self._aliases()
        return aliases.get(predicate) or aliases.get(snake_case(predicate))

    def normalize_predicate(self, predicate: str) -> str:
        """Canonical name when the schema knows it, else the snake_case form (open extraction)."""
        return self.canonical(predicate) or snake_case(predicate)

    def inverse_of(self, predicate: str) -> str | None:
        relation = self.get(self.canonical(predicate) or "")
        if relation is None:
            return None
        if relation.symmetric:
            return relation.name
        if relation.inverse:
            return relation.inverse
        # an inverse declared only on the other side still counts
        return next((r.name for r in self.relations if r.inverse == relation.name), None)

    def allows(self, relation: Relation, head_type: str | None, tail_type: str | None) -> bool:
        """Schema-valid: the predicate is known and the endpoint types (when known) are allowed."""
        spec = self.get(self.canonical(relation.predicate) or "")
        if spec is None:
            return False
        if head_type and spec.head_types and head_type not in spec.head_types:
            return False
        if tail_type and spec.tail_types and tail_type not in spec.tail_types:
            return False
        return True

    def render(self) -> str:
        """Compact inventory for prompts: `predicate(HEAD>TAIL): description`, one per line."""
        lines = []
        for r in self.relations:
            head = "|".join(r.head_types) or "ANY"
            tail = "|".join(r.tail_types) or "ANY"
            lines.append(f"{r.name}({head}>{tail}): {r.description}")
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """A short stable id of the inventory, recorded with optimized programs to catch mismatches."""
        import hashlib

        payload = json.dumps(
            {"entity_types": self.entity_types, "predicates": self.predicates}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:12]


def relation_type(
    name: str,
    description: str,
    head: str,
    tail: str,
    category: str | None = None,
    synonyms: str = "",
    inverse: str | None = None,
    symmetric: bool = False,
) -> RelationType:
    """Compact constructor: endpoint types and synonyms as space-separated words."""
    return RelationType(
        name=name,
        description=description,
        head_types=tuple(head.split()),
        tail_types=tuple(tail.split()),
        category=category,
        synonyms=tuple(synonyms.split()),
        inverse=inverse,
        symmetric=symmetric,
    )


_D, _W, _E, _S, _F, _N = CATEGORIES
_ANYTHING = "PERSON ORGANIZATION LOCATION EVENT WORK PRODUCT ANIMAL FOOD ACTIVITY MISC"

_CONVERSATION_RELATIONS = (
    # Daily Life
    relation_type("lives_in", "resides in a place", "PERSON ANIMAL", "LOCATION", _D, "resides_in lives_at live_in"),
    relation_type("from", "comes from or grew up in a place", "PERSON", "LOCATION", _D, "comes_from grew_up_in origin"),
    relation_type("born_in", "was born in a place", "PERSON ANIMAL", "LOCATION", _D, "birthplace"),
    relation_type("born_on", "was born on a date", "PERSON ANIMAL", "DATE", _D, "birthday date_of_birth"),
    relation_type("has_age", "is this old", "PERSON ANIMAL", "QUANTITY", _D, "age is_aged"),
    relation_type("married_to", "is the spouse of", "PERSON", "PERSON", _D, "spouse_of wife_of husband_of spouse", symmetric=True),
    relation_type("dating", "is the partner, boyfriend or girlfriend of", "PERSON", "PERSON", _D,
         "partner_of boyfriend_of girlfriend_of", symmetric=True),
    relation_type("parent_of", "is the mother or father of", "PERSON", "PERSON", _D, "mother_of father_of", inverse="child_of"),
    relation_type("child_of", "is the son or daughter of", "PERSON", "PERSON", _D, "son_of daughter_of", inverse="parent_of"),
    relation_type("sibling_of", "is the brother or sister of", "PERSON", "PERSON", _D, "brother_of sister_of", symmetric=True),
    relation_type("relative_of", "is other family (cousin, aunt, grandparent, in-law) of", "PERSON", "PERSON", _D,
         "family_of cousin_of grandparent_of", symmetric=True),
    relation_type("friends_with", "is a friend of", "PERSON", "PERSON", _D, "friend_of best_friends_with", symmetric=True),
    relation_type("neighbor_of", "lives next to", "PERSON", "PERSON", _D, "neighbour_of", symmetric=True),
    relation_type("roommate_of", "shares a home with", "PERSON", "PERSON", _D, "flatmate_of", symmetric=True),
    relation_type("has_pet", "owns an animal as a pet", "PERSON", "ANIMAL", _D, "pet owns_pet have_pet"),
    relation_type("takes_care_of", "looks after", "PERSON", "PERSON ANIMAL", _D, "cares_for looks_after"),
    relation_type("owns", "owns a thing or a home", "PERSON ORGANIZATION", "PRODUCT LOCATION ORGANIZATION MISC", _D,
         "has have own possesses"),
    relation_type("met_at", "met someone at a place or event", "PERSON", "LOCATION EVENT ORGANIZATION", _D, "met_through"),
    relation_type("has_trait", "has a personal attribute or health condition", "PERSON ANIMAL", "MISC", _D,
         "physical_attribute has_attribute"),
    relation_type("wants", "wants, plans or hopes to have or do", "PERSON", _ANYTHING, _D, "want wishes plans_to hopes_to"),
    # Work & Career
    relation_type("works_at", "is employed by or works at", "PERSON", "ORGANIZATION LOCATION", _W,
         "employed_by works_for employee_of"),
    relation_type("works_as", "has this job or profession", "PERSON", "MISC", _W, "has_profession job profession"),
    relation_type("founded", "started an organization", "PERSON ORGANIZATION", "ORGANIZATION", _W, "founder_of cofounded"),
    relation_type("leads", "is the head, CEO or owner-manager of", "PERSON", "ORGANIZATION", _W, "ceo_of head_of runs"),
    relation_type("manages", "is the boss of", "PERSON", "PERSON", _W, "boss_of supervises", inverse="reports_to"),
    relation_type("reports_to", "works under", "PERSON", "PERSON", _W, "subordinate_of works_under", inverse="manages"),
    relation_type("colleague_of", "works with", "PERSON", "PERSON", _W, "coworker_of works_with", symmetric=True),
    relation_type("mentors", "guides or trains someone professionally", "PERSON", "PERSON", _W, "mentor_of"),
    relation_type("studies_at", "attends a school or university", "PERSON", "ORGANIZATION", _W,
         "attends attend_school goes_to_school student_at"),
    relation_type("studies", "studies a subject", "PERSON", "MISC", _W, "majors_in major studying"),
    relation_type("graduated_from", "completed studies at", "PERSON", "ORGANIZATION", _W, "alumnus_of alumni_of"),
    relation_type("teaches_at", "teaches at a school", "PERSON", "ORGANIZATION", _W, "teacher_at"),
    relation_type("has_degree", "holds a degree or qualification", "PERSON", "MISC", _W, "degree"),
    # Entertainment
    relation_type("likes", "enjoys or loves", "PERSON", _ANYTHING, _E, "loves enjoys like like_general adores"),
    relation_type("dislikes", "does not like or hates", "PERSON", _ANYTHING, _E, "hates dislike"),
    relation_type("favorite", "names it as their favourite", "PERSON", _ANYTHING, _E, "favourite has_favorite"),
    relation_type("watched", "saw a film, show or performance", "PERSON", "WORK EVENT", _E, "watches saw like_watching"),
    relation_type("listens_to", "listens to music, an artist or a podcast", "PERSON", "WORK PERSON ORGANIZATION", _E,
         "listened_to"),
    relation_type("reads", "reads a book, author or publication", "PERSON", "WORK PERSON", _E, "read like_read"),
    relation_type("plays_game", "plays a video or board game", "PERSON", "WORK PRODUCT", _E, "played_game"),
    relation_type("created", "wrote, composed, painted or made a work", "PERSON ORGANIZATION", "WORK PRODUCT", _E,
         "wrote composed authored made"),
    relation_type("directed", "directed a film or show", "PERSON", "WORK", _E),
    relation_type("starred_in", "acted in a film or show", "PERSON", "WORK", _E, "acted_in played_in"),
    relation_type("fan_of", "is a fan or supporter of", "PERSON", "PERSON ORGANIZATION WORK", _E, "supports supports_team"),
    relation_type("attended", "went to an event", "PERSON", "EVENT", _E, "went_to_event"),
    relation_type("won", "won an award, prize, game or competition", "PERSON ORGANIZATION", "EVENT MISC", _E, "awarded"),
    # Sports & Hobbies
    relation_type("plays", "plays a sport or an instrument", "PERSON", "ACTIVITY MISC", _S, "plays_sport plays_instrument"),
    relation_type("practices", "does a hobby or exercise regularly", "PERSON", "ACTIVITY", _S,
         "like_activity does hobby exercises trains enjoys_doing"),
    relation_type("plays_for", "is a player of a team", "PERSON", "ORGANIZATION", _S),
    relation_type("coaches", "trains a team or athlete", "PERSON", "ORGANIZATION PERSON", _S, "coach_of"),
    relation_type("member_of", "belongs to a club, band, team or group", "PERSON", "ORGANIZATION", _S, "belongs_to"),
    relation_type("competes_in", "takes part in a competition", "PERSON ORGANIZATION", "EVENT", _S, "competed_in"),
    relation_type("collects", "collects things", "PERSON", "MISC PRODUCT", _S),
    relation_type("trains_at", "trains or exercises at a place", "PERSON", "LOCATION ORGANIZATION", _S, "works_out_at"),
    # Food & Travel
    relation_type("eats", "eats a food", "PERSON ANIMAL", "FOOD", _F, "like_food"),
    relation_type("drinks", "drinks a beverage", "PERSON", "FOOD", _F, "like_drink"),
    relation_type("cooks", "cooks or bakes a dish", "PERSON", "FOOD", _F, "bakes makes_food"),
    relation_type("allergic_to", "has an allergy to", "PERSON ANIMAL", "FOOD MISC", _F, "allergy_to"),
    relation_type("follows_diet", "keeps a diet such as vegan", "PERSON", "MISC", _F, "diet is_vegetarian"),
    relation_type("visited", "travelled to or visited a place", "PERSON", "LOCATION ORGANIZATION", _F,
         "traveled_to travelled_to went_to visited_place"),
    relation_type("plans_to_visit", "intends to travel to", "PERSON", "LOCATION", _F, "will_visit going_to"),
    relation_type("stayed_at", "stayed at a hotel or home", "PERSON", "LOCATION ORGANIZATION", _F),
    relation_type("located_in", "is situated in", "LOCATION ORGANIZATION EVENT", "LOCATION", _F, "is_in located_at"),
    relation_type("known_for", "is famous for", "PERSON ORGANIZATION LOCATION", _ANYTHING, _F, "famous_for"),
    relation_type("serves", "a restaurant or shop offers a food or product", "ORGANIZATION", "FOOD PRODUCT", _F, "sells"),
    # News & Events
    relation_type("holds_position", "holds an office or title", "PERSON", "MISC", _N, "elected elected_as appointed title"),
    relation_type("announced", "made something public", "PERSON ORGANIZATION", "EVENT PRODUCT MISC", _N, "announces"),
    relation_type("released", "launched or published", "PERSON ORGANIZATION", "PRODUCT WORK", _N, "launched published"),
    relation_type("acquired", "bought another organization", "ORGANIZATION PERSON", "ORGANIZATION", _N, "bought"),
    relation_type("headquartered_in", "has its head office in", "ORGANIZATION", "LOCATION", _N, "based_in"),
    relation_type("took_place_in", "an event happened in a place", "EVENT", "LOCATION", _N, "held_in happened_in"),
    relation_type("took_place_on", "an event happened on a date", "EVENT", "DATE", _N, "held_on happened_on"),
    relation_type("participated_in", "took part in an event", "PERSON ORGANIZATION", "EVENT", _N, "took_part_in joined"),
    relation_type("scheduled_for", "an event or plan is set for a date", "EVENT ACTIVITY", "DATE", _N, "planned_for"),
    relation_type("died_in", "died in a place or year", "PERSON ANIMAL", "LOCATION DATE", _N, "died"),
    relation_type("part_of", "is a part, branch or member state of", "ORGANIZATION LOCATION", "ORGANIZATION LOCATION", _N,
         "subsidiary_of"),
)

#: The built-in conversational schema: six categories, 76 predicates.
CONVERSATION_SCHEMA = RelationSchema(
    name="hotmem-conversation",
    entity_types=ENTITY_TYPES,
    relations=_CONVERSATION_RELATIONS,
    description="Facts people state about themselves and others in everyday conversation.",
)


# --------------------------------------------------------------------------- names

_ARTICLES = {"a", "an", "the"}
_FIRST_PERSON = {"i", "me", "my", "mine", "myself", "speaker", "user", "the speaker", "the user"}
#: Words that must never stand as an entity name: they point to one.
PRONOUNS = frozenset(
    "he him his himself she her hers herself it its itself they them their theirs themselves "
    "this that these those we us our ours ourselves you your yours yourself".split()
)
#: Function words: a name made only of these names nothing (small models emit them as entities).
FUNCTION_WORDS = frozenset(
    "a an the and or but if than then so as at by for from in into of off on onto out over to up with without "
    "is are was were be been being am do does did have has had not no yes very too also just about all some any "
    "here there when where why how what which who whom whose".split()
)
_POSSESSIVE_FIRST = re.compile(r"^(my|our)\s+", re.IGNORECASE)


def _singular(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def normalize_name(name: str, speakers: Sequence[str] = ()) -> str:
    """Comparison key of an entity name: case, articles, punctuation, simple plurals and speaker aliases folded.

    `I`, `me`, `speaker` and the named speaker(s) fold to `speaker` when there is one speaker; `my sister` and
    `speaker's sister` fold to the same key.
    """
    text = name.strip().replace("\u2019", "'").casefold()
    named = [s.casefold() for s in speakers if s and s.casefold() != SPEAKER]
    solo = len(set(speakers) - {SPEAKER}) <= 1
    if text in _FIRST_PERSON or (solo and named and text == named[0]):
        return SPEAKER
    text = _POSSESSIVE_FIRST.sub(f"{SPEAKER}'s ", text)
    if solo and named:
        text = re.sub(rf"^{re.escape(named[0])}'s\b", f"{SPEAKER}'s", text)
    text = text.replace("'s ", " 's ")
    tokens = [t for t in re.split(r"[^\w']+", text) if t and t != "'"]
    tokens = [t.strip("'") if t != "'s" else t for t in tokens]
    tokens = [t for t in tokens if t and t not in _ARTICLES]
    return " ".join(_singular(t) for t in tokens)


def is_pronoun(name: str) -> bool:
    return name.strip().casefold() in PRONOUNS


def names_nothing(name: str) -> bool:
    """True for a pronoun, or a name made only of function words ("than", "in and")."""
    words = re.findall(r"[\w']+", name.casefold())
    return not words or is_pronoun(name) or all(w in FUNCTION_WORDS or w in PRONOUNS for w in words)


def is_grounded(name: str, text: str, speakers: Sequence[str] = ()) -> bool:
    """Whether an entity is the speaker or said in the text (every content word of its name appears)."""
    key = normalize_name(name, speakers)
    if key == SPEAKER or not key:
        return key == SPEAKER
    said = set(normalize_name(text, speakers).split()) | {SPEAKER}
    if any(key == normalize_name(s, speakers) for s in speakers):
        return True
    words = [w for w in key.split() if w != "'s"]
    return bool(words) and all(w in said for w in words)


def merge_graphs(graphs: Iterable[Graph], speakers: Sequence[str] = ()) -> Graph:
    """Union of graphs (e.g. of the chunks of a long text): entities by normalised name, relations by triple."""
    entities: dict[str, Entity] = {}
    relations: dict[tuple[str, str, str], Relation] = {}
    confidences: list[float] = []
    for graph in graphs:
        confidences.append(graph.confidence)
        for entity in graph.entities:
            key = normalize_name(entity.name, speakers)
            if key not in entities or entity.confidence > entities[key].confidence:
                entities[key] = entity
        for relation in graph.relations:
            subject = entities.get(normalize_name(relation.subject, speakers))
            obj = entities.get(normalize_name(relation.object, speakers))
            relation = relation.model_copy(
                update={"subject": subject.name if subject else relation.subject,
                        "object": obj.name if obj else relation.object}
            )
            relations.setdefault(relation.triple, relation)
    confidence = sum(confidences) / len(confidences) if confidences else 1.0
    return Graph(entities=list(entities.values()), relations=list(relations.values()), confidence=round(confidence, 3))
