"""Names: the speaker, pronouns, the comparison key every stage (assembly, metric, memory) folds names to, and
where sentences end (a title's full stop does not end one)."""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Canonical name of the person talking when the caller does not say who speaks.
SPEAKER = "speaker"

#: First-person singular words: each names the speaker of its turn ("mine is blue" is the speaker's too).
FIRST_PERSON_WORDS = frozenset({"i", "me", "my", "mine", "myself"})
#: Everything that folds to the speaker: the first-person words and what models write for the speaker.
_SPEAKER_ALIASES = FIRST_PERSON_WORDS | {SPEAKER, "user", "the speaker", "the user"}
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
#: Words of a text, as the name rules read them.
WORDS = re.compile(r"[A-Za-z']+")

#: Abbreviations whose full stop does not end a sentence ("at St. Anne's", "Dr. Okafor"), matched folded.
_ABBREVIATIONS = frozenset(
    "mr mrs ms mx dr prof st mt ft jr sr rev fr sgt capt lt gov sen pres vs approx dept univ ave rd blvd inc ltd "
    "corp e.g i.e a.m p.m".split()  # not months or "hon": names and words that end sentences in chat ("Jan.")
)
#: A candidate sentence end: `.`, `!` or `?` (closing quotes and brackets with it), then space.
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+")
_LAST_WORD = re.compile(r"(\S+)\.$")
_INITIALS = re.compile(r"(?:[a-z]\.)*[a-z]")


def split_sentences(text: str) -> list[str]:
    """`text`'s sentences, split after `.`, `!` or `?` and space, except after a title or abbreviation
    (`_ABBREVIATIONS`) or an initial ("J. K. Rowling", "U.S.")."""
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        word = _LAST_WORD.search(text, start, end.start())
        if word:
            folded = word.group(1).casefold().lstrip("(\"'")
            if folded in _ABBREVIATIONS or _INITIALS.fullmatch(folded):
                continue
        sentences.append(text[start:end.start() + len(end.group(1))].strip())
        start = end.end()
    sentences.append(text[start:].strip())
    return [sentence for sentence in sentences if sentence]


_ARTICLES = {"a", "an", "the"}
_POSSESSIVE_FIRST = re.compile(r"^(my|our)\s+", re.IGNORECASE)


def snake_case(predicate: str) -> str:
    """`Works At` / `works-at` / `worksAt` -> `works_at` (open extraction's predicate form)."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", predicate.strip())
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")
    return text.lower()


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
    if text in _SPEAKER_ALIASES or (solo and named and text == named[0]):
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


def is_first_person(word: str) -> bool:
    return word.strip().casefold() in FIRST_PERSON_WORDS


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
