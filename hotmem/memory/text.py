"""What the memory reads from names and text: entity keys, kinship words, name candidates, and negation.

The negation rule is a documented heuristic over the words of a turn, not a model: a clause that carries a negation
("don't", "no longer", "not ... any more", "used to") and names both an object and a word of the predicate
("live" for `lives_in`), or an ending verb that implies the predicate ("left Google", "moved out of Oslo",
"divorced"), ends that fact. It reads English only.

So is the kinship rule (`kin_said_of`): a kin word said next to a name ("my sister Maria", "Maria, my sister") says
what that person is, which a relation alone (`sibling_of`) does not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from hotmem.names import SPEAKER, normalize_name
from hotmem.schema import RelationSchema

__all__ = [
    "KIN_WORDS", "Kin", "entity_key", "kin_said_of", "name_candidates", "negated_clauses", "predicate_cues", "says",
    "stem",
]

POSSESSIVE = " 's "


class Kin(NamedTuple):
    """What a kinship word says of the person it names: the relation to its possessor (`predicate`, and whether the
    kin is its subject; symmetric predicates match either direction), the gender it says if any ("f", "m"), and its
    `role`, the word its synonyms share ("mom" and "mum" are "mother")."""

    predicate: str
    kin_is_subject: bool
    gender: str | None
    role: str


_KIN_RELATIONS: dict[str, tuple[str, bool]] = {
    **{w: ("sibling_of", False) for w in ("sister", "brother", "sibling")},
    **{w: ("married_to", False) for w in ("wife", "husband", "spouse")},
    **{w: ("dating", False) for w in ("girlfriend", "boyfriend", "partner")},
    **{w: ("parent_of", True) for w in ("mother", "mom", "mum", "father", "dad", "parent")},
    **{w: ("parent_of", False) for w in ("son", "daughter", "child", "kid")},
    **{w: ("manages", True) for w in ("boss", "manager")},
    **{w: ("relative_of", False) for w in ("cousin", "aunt", "uncle", "grandmother", "grandfather", "niece", "nephew")},
}
_FEMALE = frozenset({
    "sister", "wife", "girlfriend", "mother", "mom", "mum", "daughter", "aunt", "grandmother", "niece",
})
_MALE = frozenset({"brother", "husband", "boyfriend", "father", "dad", "son", "uncle", "grandfather", "nephew"})
_SAME_ROLE = {"mom": "mother", "mum": "mother", "dad": "father", "kid": "child"}

#: Kinship words of a possessive name ("Anna's sister") and what each says of the person it names.
KIN_WORDS: dict[str, Kin] = {
    word: Kin(predicate, kin_is_subject, "f" if word in _FEMALE else "m" if word in _MALE else None,
              _SAME_ROLE.get(word, word))
    for word, (predicate, kin_is_subject) in _KIN_RELATIONS.items()
}

#: Aliases a graph may state as a relation: the two names are one entity (DialogRE's `per:alternate_names`).
ALIAS_PREDICATES = frozenset(
    {"alternate_names", "per_alternate_names", "alias", "alias_of", "also_known_as", "known_as", "same_as"}
)


@lru_cache(maxsize=65_536)
def entity_key(name: str, speaker: str | None) -> str:
    """The comparison key, with the turn's speaker folded in: "I", "me", "speaker" and the speaker's own name key to
    the speaker's name, "my sister" to "anna 's sister"."""
    if not speaker:
        return normalize_name(name)
    key = normalize_name(name, [speaker])
    own = normalize_name(speaker)
    if key == SPEAKER:
        return own
    if key.startswith(SPEAKER + POSSESSIVE):
        return own + key[len(SPEAKER):]
    return key


def split_possessive(key: str) -> tuple[str, str] | None:
    """`anna 's sister` -> (`anna`, `sister`); None for a plain name."""
    head, sep, rest = key.partition(POSSESSIVE)
    return (head, rest) if sep and head and rest else None


def _words(key: str) -> list[str]:
    return [w.rstrip("'") for w in key.split() if w != "'s"]  # "Anna's." normalises to "anna'"


def says(text: str, keys: Iterable[str]) -> bool:
    """Whether `text` says one of the name keys: its words in a row, any case or punctuation ("Anna's sister" and
    "Anna Smith" say `anna`; "Annabel" does not)."""
    words = _words(normalize_name(text))
    for key in keys:
        wanted = _words(key)
        if wanted and any(words[i:i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1)):
            return True
    return False


_WORD = re.compile(r"[\w'\u2019-]+")


#: Words that may stand between a kin word and the name it gives: "Maria, my little sister", "my brother is Tom".
_KIN_LINKS = frozenset({
    "my", "our", "your", "his", "her", "their", "is", "was", "named", "called", "little", "big", "older", "younger",
    "elder", "twin",
})


def kin_said_of(text: str, key: str) -> set[str]:
    """The kin words `text` gives the name `key` in one breath, within a sentence: next to it, or with at most three
    link words or possessors between ("my sister Maria", "Maria, my little sister", "Maria is Anna's sister"); never
    a kin word or a name that is a possessor ("Maria's sister", "my sister's friend Maria"). A heuristic over English
    words, as the negation rule is."""
    name = [w for w in key.split() if w != "'s"]
    found: set[str] = set()
    if not name:
        return found
    for sentence in re.split(r"(?<=[.!?;])\s+|\n", text):
        tokens: list[tuple[str, str, bool]] = []  # (word as said, as keyed, is a possessor)
        for word in _WORD.findall(sentence):
            word = word.casefold().replace("\u2019", "'")
            possessor = word.endswith("'s")
            parts = normalize_name(word.removesuffix("'s")).split()
            tokens += [(word, part, possessor and i == len(parts) - 1) for i, part in enumerate(parts)]
        keyed = [t[1] for t in tokens]
        for start in range(len(tokens) - len(name) + 1):
            if keyed[start:start + len(name)] != name:
                continue
            end = start + len(name)
            for i, (_, kin, possessor) in enumerate(tokens):
                if kin not in KIN_WORDS or possessor or start <= i < end:
                    continue
                between = tokens[i + 1:start] if i < start else tokens[end:i]
                if i > start and tokens[end - 1][2]:  # "Maria's sister" is not Maria
                    continue
                if len(between) <= 3 and all(w in _KIN_LINKS or p for w, _, p in between):
                    found.add(kin)
    return found


def name_candidates(text: str, speaker: str | None, longest: int = 4) -> list[str]:
    """Keys of every run of up to `longest` words of `text`: what `about()` looks up as possible entity names."""
    words = _WORD.findall(text)
    keys: dict[str, None] = {}
    for size in range(1, longest + 1):
        for start in range(len(words) - size + 1):
            key = entity_key(" ".join(words[start:start + size]), speaker)
            if key:
                keys[key] = None
    return list(keys)


def stem(word: str) -> str:
    """A crude English stem, enough to meet `lives` / `living` / `live` and `married` / `marry`."""
    word = word.casefold().replace("\u2019", "'")
    for suffix in ("ing", "ied", "ies", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix in ("ied", "ies") else "")
    return word


_FUNCTION = frozenset("in at of to for on with has have is the a an by as from".split())
#: Words that speak of a predicate beyond its own name and synonyms.
_EXTRA_CUES = {
    "lives_in": "home house flat apartment",
    "married_to": "husband wife marriage",
    "dating": "date together boyfriend girlfriend",
    "works_at": "job employed",
    "works_as": "job work",
    "studies_at": "study student school",
}


def predicate_cues(schema: RelationSchema, predicate: str) -> frozenset[str]:
    """Stems of the words that name a predicate: its name's and synonyms' content words and a few more."""
    spec = schema.get(predicate)
    words = predicate.split("_")
    if spec is not None:
        for synonym in spec.synonyms:
            words += synonym.split("_")
    words += _EXTRA_CUES.get(predicate, "").split()
    return frozenset(stem(w) for w in words if w and w not in _FUNCTION)


#: Cues that end a fact only with a word of its predicate in the clause ("I don't live in Oslo any more").
_NEGATION = re.compile(r"\b(?:not|no longer|never|any ?more|used to|stopped|none)\b|n't\b", re.IGNORECASE)
#: Ending verbs: the predicate is implied ("I left Google", "we moved out of Oslo", "they divorced").
_ENDINGS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    (re.compile(r"\b(?:left|quit|resigned from|was fired from|got fired from|dropped out of)\b", re.I),
     frozenset({"works_at", "studies_at", "lives_in", "member_of", "plays_for", "works_as"})),
    (re.compile(r"\bmoved (?:away |out )?(?:from|of)\b|\bmoved out\b", re.I), frozenset({"lives_in"})),
    (re.compile(r"\b(?:divorced|broke up|split up|separated)\b", re.I), frozenset({"married_to", "dating"})),
)
_CLAUSE_END = re.compile(r"[.;!?,\n]|\b(?:but|instead|now|although|though|whereas)\b", re.IGNORECASE)
_MOVE_TARGET = re.compile(r"\b(?:to|into)\b", re.IGNORECASE)


class NegatedClause:
    """The words after a negation cue, up to the end of its clause; `predicates` is set for an ending verb."""

    __slots__ = ("predicates", "sentence", "words")

    def __init__(self, sentence: str, clause: str, predicates: frozenset[str] | None) -> None:
        self.sentence = sentence
        self.words = [w.casefold() for w in _WORD.findall(clause)]
        self.predicates = predicates

    def names(self, key: str) -> bool:
        """Whether every word of an entity key is in the clause."""
        tokens = [t for t in key.split() if t != "'s"]
        said = {normalize_name(w) for w in self.words}
        return bool(tokens) and all(t in said for t in tokens)

    def speaks_of(self, predicate: str, cues: Iterable[str]) -> bool:
        if self.predicates is not None:
            return predicate in self.predicates
        stems = {stem(w) for w in self.words}
        return any(c in stems for c in cues)


def _clause(text: str, start: int, moved: bool) -> str:
    tail = text[start:]
    cut = _CLAUSE_END.search(tail)
    tail = tail[: cut.start()] if cut else tail
    if moved:  # "moved from Oslo to Bergen": Bergen is where they live now
        cut = _MOVE_TARGET.search(tail)
        tail = tail[: cut.start()] if cut else tail
    return tail


def negated_clauses(text: str) -> list[NegatedClause]:
    """The clauses of `text` that end a fact (see the module docstring)."""
    found: list[NegatedClause] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text):
        for match in _NEGATION.finditer(sentence):
            if match.group(0).lower().replace(" ", "") == "anymore":
                # "... live in Oslo any more": the predicate and object come before the trailing cue
                head = sentence[: match.start()]
                starts = [m.end() for m in _CLAUSE_END.finditer(head)]
                clause = head[starts[-1] if starts else 0:]
            else:
                clause = _clause(sentence, match.start(), False)
            found.append(NegatedClause(sentence, clause, None))
        for pattern, predicates in _ENDINGS:
            for match in pattern.finditer(sentence):
                moved = "moved" in match.group(0).lower()
                found.append(NegatedClause(sentence, _clause(sentence, match.end(), moved), predicates))
    return found


def fold(names: Sequence[str], speaker: str | None) -> list[str]:
    return [entity_key(n, speaker) for n in names]
