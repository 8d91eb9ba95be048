"""PersonaExt: ConvAI2 utterances with re-annotated Dialogue-NLI triples, and its relation schema."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hotmem.data.common import (
    _GraphBuilder,
    _id_prefix,
    _iter_jsonl,
    _resolve_file,
    _schema_from_relations,
    _take,
)
from hotmem.errors import DatasetFormatError, DatasetNotFoundError
from hotmem.names import FIRST_PERSON_WORDS, SPEAKER
from hotmem.schema import ENTITY_TYPES, RelationSchema, RelationType
from hotmem.types import Graph, Record, Turn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- PersonaExt / DNLI (shared)

_MY = re.compile(r"^my\s+(?=\S)", re.IGNORECASE)
#: DNLI placeholders for "no value"; a triple holding one states no fact.
_DNLI_PLACEHOLDERS = frozenset({"<none>", "<blank>", ""})
#: Nouns that make an endpoint a person ("my mom", "best friend", "my parents").
_PERSON_WORDS = frozenset(
    "mom mum mother dad father parent brother sister sibling wife husband spouse boyfriend girlfriend bf gf fiance "
    "fiancee partner friend son daughter kid child children family grandma grandmother grandpa grandfather "
    "grandparent aunt uncle cousin niece nephew ex peep roommate neighbor neighbour boss coworker baby".split()
)
#: DNLI/PersonaExt object types that map plainly onto hotmem entity types. Anything else is MISC (colours,
#: professions, traits...), and the open-ended ones in `_DNLI_ANY` mean "any type".
_DNLI_TYPE_MAP = {
    "person": "PERSON",
    "family": "PERSON",
    "close_people": "PERSON",
    "name_type": "PERSON",
    "music_artist": "PERSON",
    "movie_artist": "PERSON",
    "read_author": "PERSON",
    "company": "ORGANIZATION",
    "organization": "ORGANIZATION",
    "school_name": "ORGANIZATION",
    "citystate": "LOCATION",
    "country": "LOCATION",
    "district": "LOCATION",
    "location": "LOCATION",
    "general_location": "LOCATION",
    "food": "FOOD",
    "drink": "FOOD",
    "cuisine": "FOOD",
    "animal": "ANIMAL",
    "activity": "ACTIVITY",
    "sport_type": "ACTIVITY",
    "movie_title": "WORK",
    "read_title": "WORK",
    "vehicle": "PRODUCT",
    "number": "QUANTITY",
}
_DNLI_ANY = frozenset({"other", "noun", "media_other", "read_other"})


def _dnli_name(raw: str) -> str:
    """hotmem's naming convention: "i"/"me"/"my" is the speaker; "my X" is "speaker's X" (kin keep their possessor)."""
    text = " ".join(raw.split())
    if text.casefold() in FIRST_PERSON_WORDS:
        return SPEAKER
    return _MY.sub(f"{SPEAKER}'s ", text)


def _dnli_type(name: str, declared: tuple[str, ...] = ()) -> str:
    """Best type we can tell: the speaker is a PERSON, then the relation's single allowed type, then kin words."""
    if name == SPEAKER:
        return "PERSON"
    if len(declared) == 1:
        return declared[0]
    words = re.findall(r"[a-z]+", name.casefold().removeprefix(f"{SPEAKER}'s "))
    return "PERSON" if any(w in _PERSON_WORDS or w.removesuffix("s") in _PERSON_WORDS for w in words) else "MISC"


def _is_placeholder(triple: Sequence[str]) -> bool:
    return bool(set(triple) & _DNLI_PLACEHOLDERS)


def _dnli_graph(triples: Iterable[Sequence[str]], tail_types: Mapping[str, tuple[str, ...]]) -> Graph:
    """Gold graph of one DNLI-style utterance. Placeholder triples (`<blank>`, `<none>`) state nothing: dropped."""
    builder = _GraphBuilder()
    for head, predicate, tail in triples:
        if _is_placeholder((head, predicate, tail)):
            logger.debug("dropping placeholder triple %r", (head, predicate, tail))
            continue
        subject, obj = _dnli_name(head), _dnli_name(tail)
        subject_type, object_type = _dnli_type(subject), _dnli_type(obj, tail_types.get(predicate, ()))
        builder.relation(subject, predicate, obj, subject_type, object_type)
    return builder.build()


def _check_triple(value: Any, file: Path, line: int) -> tuple[str, str, str]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, str) for v in value)):
        raise DatasetFormatError(file, f"expected a [head, relation, tail] of strings, got {value!r}", line=line)
    return value[0].strip(), value[1].strip(), value[2].strip()


_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
# Each pattern matches a whole string literal first and puts it back unchanged, so nothing inside strings is touched.
_JSON_COMMENT = re.compile(rf"(?P<string>{_JSON_STRING})|//[^\n]*")
_JSON_COMMAS = re.compile(
    rf"""
      (?P<string>{_JSON_STRING})
    | ,(?=\s*[\]}}])                      # a trailing comma before ] or }}
    | (?<=[\]}}"])(?P<gap>\s+)(?=["{{\[])  # a string/object/array followed by the next one without a comma
    """,
    re.VERBOSE,
)


def lenient_json_loads(text: str) -> Any:
    """Parse the almost-JSON of PersonaExt's schema.json: drop // comments and trailing commas, add missing commas.

    The upstream file was hand-edited: trailing commas, a `// Obsessive-compulsive disorder` comment, and two missing
    commas (after "quitting" in the job_status values, and between two entity-type objects near the end). Comments
    go first so that a comment between a trailing comma and its bracket does not hide it. Strict JSON is unchanged.
    """
    text = _JSON_COMMENT.sub(lambda m: m["string"] or "", text)
    text = _JSON_COMMAS.sub(lambda m: m["string"] or ("," + m["gap"] if m["gap"] is not None else ""), text)
    return json.loads(text)


def _dnli_map_types(object_types: Sequence[str]) -> tuple[str, ...]:
    """hotmem tail types of a DNLI relation's object types; () (= any) when an open-ended type is allowed."""
    if not object_types or any(t in _DNLI_ANY for t in object_types):
        return ()
    mapped = {_DNLI_TYPE_MAP.get(t, "MISC") for t in object_types}
    return tuple(t for t in ENTITY_TYPES if t in mapped)


def _humanize(predicate: str) -> str:
    return predicate.replace("_", " ")


def _relation_types_from_schema_json(file: Path) -> dict[str, RelationType]:
    """Relations of a DNLI-style schema.json: display names as descriptions, hierarchies as categories.

    Relations named only in `e2_constraints` (dislike_music, do_not_do, pre_employed_by_*) are part of the
    inventory too (101 listed + 4 = the 105 relation types PersonaExt reports).
    """
    try:
        raw = lenient_json_loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(file, f"cannot parse even leniently: {exc.msg}", line=exc.lineno) from exc
    constraints: Mapping[str, Sequence[str]] = raw.get("e2_constraints", {})
    relations: dict[str, RelationType] = {}

    def add(name: str, description: str, category: str | None) -> None:
        if name not in relations:
            relations[name] = RelationType(
                name=name,
                description=description,
                head_types=("PERSON",),
                tail_types=_dnli_map_types(constraints.get(name, ())),
                category=category,
            )

    for hierarchy in raw.get("relation_types", []):
        for entry in hierarchy.get("types", []):
            add(entry["type"], entry.get("display") or _humanize(entry["type"]), hierarchy.get("display"))
    for name in constraints:
        add(name, _humanize(name), None)
    return relations


def _with_unseen(relations: Mapping[str, RelationType], names: Iterable[str]) -> list[RelationType]:
    """The schema's relations plus names the data uses but the schema lacks (typos like have_children included)."""
    out = dict(relations)
    for name in sorted(set(names)):  # sorted: the schema (and its fingerprint) must not depend on data order
        if name not in out and name not in _DNLI_PLACEHOLDERS:
            out[name] = RelationType(name=name, description=_humanize(name), head_types=("PERSON",))
    return list(out.values())


def _tail_types(relations: Mapping[str, RelationType]) -> dict[str, tuple[str, ...]]:
    return {name: relation.tail_types for name, relation in relations.items()}


# --------------------------------------------------------------------------- PersonaExt


def _personaext_rows(file: Path) -> Iterator[tuple[int, str, list[tuple[str, str, str]]]]:
    for number, row in _iter_jsonl(file):
        if not (isinstance(row, dict) and isinstance(row.get("text"), str) and isinstance(row.get("triples"), list)):
            raise DatasetFormatError(file, 'expected {"text": str, "triples": [...]}', line=number)
        yield number, row["text"], [_check_triple(t, file, number) for t in row["triples"]]


def _personaext_schema_relations(folder: Path) -> dict[str, RelationType]:
    file = folder / "schema.json"
    return _relation_types_from_schema_json(file) if file.is_file() else {}


def load_personaext(path: Path | str, limit: int | None = None) -> list[Record]:
    """PersonaExt utterances as single-turn records: first-person persona facts in real chat wording.

    Tail entity types come from schema.json's relation -> object-type map when it sits beside the data.
    """
    file = _resolve_file(path, "personaext")
    prefix, split = _id_prefix("personaext", file)
    tail_types = _tail_types(_personaext_schema_relations(file.parent))
    records = (
        Record(
            id=f"{prefix}-{number:05d}",
            turns=[Turn(text=text)],
            graph=_dnli_graph(triples, tail_types),
            split=split,
            source="personaext",
        )
        for number, text, triples in _personaext_rows(file)
    )
    return _take(records, limit)


def personaext_schema(path: Path | str) -> RelationSchema:
    """PersonaExt's inventory: schema.json's relations plus any the data uses without declaring them.

    `path` is the data set's folder or any file in it. Heads are PERSON (the schema constrains heads to persons and
    animals, and the data's heads are the speaker or their kin); tails come from the object-type map.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    schema_file = folder / "schema.json"
    if not schema_file.is_file():
        raise DatasetNotFoundError("PersonaExt schema.json", [schema_file])
    relations = _relation_types_from_schema_json(schema_file)
    from hotmem.data.registry import DATASETS  # the registry imports every loader

    data_file = folder / DATASETS["personaext"].files["dev"]
    seen = (p for _, _, triples in _personaext_rows(data_file) for _, p, _ in triples) if data_file.is_file() else ()
    return _schema_from_relations(
        "personaext",
        _with_unseen(relations, seen),
        "PersonaExt (PAED, ACL 2023) persona attributes of ConvAI2 speakers.",
    )
