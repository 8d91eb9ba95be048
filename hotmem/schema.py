"""Relation schemas: the predicates a graph may use, their meaning, endpoint types, synonyms and inverses.

`CONVERSATION_SCHEMA` is the built-in one (76 predicates over six conversation categories); pass your own
`RelationSchema` to extract any other inventory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from hotmem.errors import InvalidInputError
from hotmem.names import snake_case
from hotmem.types import Relation

__all__ = ["CATEGORIES", "CONVERSATION_SCHEMA", "ENTITY_TYPES", "RelationSchema", "RelationType", "relation_type"]

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
    #: One value per subject at a time (`lives_in`, `works_at`): in a memory, a new value ends the old one's validity.
    functional: bool = False


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

    def fact(self, subject: str, predicate: str, obj: str) -> tuple[str, str, str]:
        """One key for a fact however it is stated: the canonical predicate, and of a symmetric or inverse pair of
        statements (`A parent_of B`, `B child_of A`) always the same one."""
        predicate = self.canonical(predicate) or predicate
        inverse = self.inverse_of(predicate)
        return min((subject, predicate, obj), (obj, inverse, subject)) if inverse else (subject, predicate, obj)

    def distinct(self, relations: Iterable[Relation], key: Callable[[str], str] | None = None) -> list[Relation]:
        """The first statement of each fact among `relations` (`fact`), in order; `key` normalises names first."""
        key = key or (lambda name: name)
        facts: dict[tuple[str, str, str], Relation] = {}
        for relation in relations:
            facts.setdefault(self.fact(key(relation.subject), relation.predicate, key(relation.object)), relation)
        return list(facts.values())

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

    def render(self, predicates: Sequence[str] | None = None, descriptions: bool = True) -> str:
        """Compact inventory for prompts: `predicate(HEAD>TAIL): description`, one per line; `predicates` (in their
        order) instead of the whole schema; `descriptions=False` for names and types only."""
        chosen = self.relations if predicates is None else [self._index()[p] for p in predicates]
        lines = []
        for r in chosen:
            head = "|".join(r.head_types) or "ANY"
            tail = "|".join(r.tail_types) or "ANY"
            lines.append(f"{r.name}({head}>{tail})" + (f": {r.description}" if descriptions else ""))
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """A short stable id of everything a program reads from the schema: entity types and each predicate's name,
        description, endpoint types, synonyms, inverse and symmetry. Recorded with optimized programs and students,
        so one made for other wording is not silently applied (prompts carry the rendered descriptions)."""
        read = ("name", "description", "head_types", "tail_types", "synonyms", "inverse", "symmetric")
        payload = json.dumps(
            {"entity_types": self.entity_types,
             "relations": [{key: getattr(r, key) for key in read} for r in self.relations]},
            sort_keys=True,
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:12]

    def functional_predicates(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.relations if r.functional)

    def restrict(self, predicates: Iterable[str]) -> RelationSchema:
        """The same schema with only `predicates` (kept in the schema's order; every entity type stays): what a
        corpus mapped onto this schema annotates, so training shows a model only predicates whose absence means
        something. An inverse outside the subset is dropped from the predicate that names it."""
        keep = set(predicates)
        unknown = keep - set(self.predicates)
        if unknown:
            raise InvalidInputError(f"not predicates of schema {self.name!r}: {sorted(unknown)}")
        relations = tuple(r if r.inverse in keep or r.inverse is None else r.model_copy(update={"inverse": None})
                          for r in self.relations if r.name in keep)
        # built anew, not model_copy: the lookup caches live in the instance dict and would be copied stale
        return type(self)(name=self.name, entity_types=self.entity_types, relations=relations,
                          description=self.description)


def relation_type(
    name: str,
    description: str,
    head: str,
    tail: str,
    category: str | None = None,
    synonyms: str = "",
    inverse: str | None = None,
    symmetric: bool = False,
    functional: bool = False,
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
        functional=functional,
    )


_D, _W, _E, _S, _F, _N = CATEGORIES
_ANYTHING = "PERSON ORGANIZATION LOCATION EVENT WORK PRODUCT ANIMAL FOOD ACTIVITY MISC"

_CONVERSATION_RELATIONS = (
    # Daily Life
    relation_type("lives_in", "resides in a place", "PERSON ANIMAL", "LOCATION", _D, "resides_in lives_at live_in", functional=True),
    relation_type("from", "comes from or grew up in a place", "PERSON", "LOCATION", _D, "comes_from grew_up_in origin"),
    relation_type("born_in", "was born in a place", "PERSON ANIMAL", "LOCATION", _D, "birthplace", functional=True),
    relation_type("born_on", "was born on a date", "PERSON ANIMAL", "DATE", _D, "birthday date_of_birth", functional=True),
    relation_type("has_age", "is this old", "PERSON ANIMAL", "QUANTITY", _D, "age is_aged", functional=True),
    relation_type("married_to", "is the spouse of", "PERSON", "PERSON", _D, "spouse_of wife_of husband_of spouse", symmetric=True, functional=True),
    relation_type("dating", "is the partner, boyfriend or girlfriend of", "PERSON", "PERSON", _D,
         "partner_of boyfriend_of girlfriend_of", symmetric=True, functional=True),
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
         "employed_by works_for employee_of", functional=True),
    relation_type("works_as", "has this job or profession", "PERSON", "MISC", _W, "has_profession job profession", functional=True),
    relation_type("founded", "started an organization", "PERSON ORGANIZATION", "ORGANIZATION", _W, "founder_of cofounded"),
    relation_type("leads", "is the head, CEO or owner-manager of", "PERSON", "ORGANIZATION", _W, "ceo_of head_of runs"),
    relation_type("manages", "is the boss of", "PERSON", "PERSON", _W, "boss_of supervises", inverse="reports_to"),
    relation_type("reports_to", "works under", "PERSON", "PERSON", _W, "subordinate_of works_under", inverse="manages"),
    relation_type("colleague_of", "works with", "PERSON", "PERSON", _W, "coworker_of works_with", symmetric=True),
    relation_type("mentors", "guides or trains someone professionally", "PERSON", "PERSON", _W, "mentor_of"),
    relation_type("studies_at", "attends a school or university", "PERSON", "ORGANIZATION", _W,
         "attends attend_school goes_to_school student_at", functional=True),
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
    relation_type("headquartered_in", "has its head office in", "ORGANIZATION", "LOCATION", _N, "based_in", functional=True),
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


