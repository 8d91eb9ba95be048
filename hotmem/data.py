"""Annotated data for hotmem: the gold set shipped in the package and public research corpora read in place.

Every loader returns `Record`s in one shape (turns + gold `Graph`) with a `RelationSchema` beside it, so the teacher,
the metric and the optimiser can run on our own gold data and on DialogRE, PersonaExt, ConvAI2/DNLI or CoNLL04 alike.

The research corpora are licensed for research only. They are read where they lie (`../shared/data` next to the
project, or `$HOTMEM_DATA_DIR`) and must never be copied into the repository or the package.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from hotmem.schema import (
    CATEGORIES,
    CONVERSATION_SCHEMA,
    ENTITY_TYPES,
    SPEAKER,
    Entity,
    Graph,
    HotmemError,
    InvalidInputError,
    Record,
    Relation,
    RelationSchema,
    RelationType,
    Turn,
    relation_type,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CONLL04_SCHEMA",
    "DATASETS",
    "DIALOGRE_SCHEMA",
    "DATA_DIR_ENV",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "data_root_candidates",
    "dataset_file",
    "dnli_schema",
    "find_data_root",
    "iter_convai2_utterances",
    "lenient_json_loads",
    "load_conll04",
    "load_convai2",
    "load_dataset",
    "load_dialogre",
    "load_gold",
    "load_personaext",
    "personaext_schema",
]

#: Environment variable that points at the folder holding the research data sets (`dialogre/`, `conll04/`, ...).
DATA_DIR_ENV = "HOTMEM_DATA_DIR"

#: Where the research data sets live relative to the project root (never inside the repository).
_RELATIVE_DATA_ROOT = Path("..") / "shared" / "data"

#: Record splits are train/dev/test; corpora call their dev split `valid` too.
_RECORD_SPLIT = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}
_SPLIT_IN_NAME = re.compile(r"^(train|dev|valid|test)(?=[._-]|$)", re.IGNORECASE)


# --------------------------------------------------------------------------- errors


class DatasetNotFoundError(HotmemError, FileNotFoundError):
    """A data set is not where we looked. Also a FileNotFoundError so generic file handling still catches it."""

    def __init__(self, what: str, tried: Sequence[Path | str], hint: str = "") -> None:
        self.tried = tuple(Path(p) for p in tried)
        where = ", ".join(str(p) for p in self.tried) or "(nowhere)"
        hint = hint or (
            f"pass path=... to the loader or load_dataset(), "
            f"or set {DATA_DIR_ENV} to the folder that holds the data sets"
        )
        super().__init__(f"{what} not found (tried: {where}); {hint}")


class DatasetFormatError(HotmemError, ValueError):
    """A data file does not have the shape its loader expects; says which file and which line (or item) is wrong."""

    def __init__(self, path: Path | str, reason: str, *, line: int | None = None, item: int | None = None) -> None:
        self.path = Path(str(path))
        self.line = line
        self.item = item
        self.reason = reason
        where = f"{path}:{line}" if line is not None else f"{path} [item {item}]" if item is not None else str(path)
        super().__init__(f"{where}: {reason}")


# --------------------------------------------------------------------------- shared helpers


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidInputError(f"limit must be a non-negative int or None, got {limit!r}")
    return limit


def _take(records: Iterable[Record], limit: int | None) -> list[Record]:
    """Stop reading as soon as `limit` records exist, so a small `limit` on a big corpus stays cheap."""
    limit = _check_limit(limit)
    out: list[Record] = []
    if limit == 0:
        return out
    for record in records:
        out.append(record)
        if limit is not None and len(out) >= limit:
            break
    return out


def _split_key(file: Path) -> str | None:
    """`dev.json` -> dev, `valid.CoNLL04.json` / `valid_dialogueNLI.txt` -> valid; None if the name says nothing."""
    match = _SPLIT_IN_NAME.match(file.name)
    return match.group(1).lower() if match else None


def _id_prefix(source: str, file: Path) -> tuple[str, str | None]:
    """Record ids are `<source>-<split as named in the file>-<position>`: stable across runs and readable."""
    key = _split_key(file)
    return f"{source}-{key or file.stem}", _RECORD_SPLIT.get(key or "")


def _read_json(file: Path) -> Any:
    try:
        with file.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(file, f"invalid JSON: {exc.msg}", line=exc.lineno) from exc


def _iter_lines(file: Path | Traversable) -> Iterator[tuple[int, str]]:
    """Non-blank lines with 1-based numbers (blank lines are padding, not records)."""
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.rstrip("\n")


def _iter_jsonl(file: Path) -> Iterator[tuple[int, Any]]:
    for number, line in _iter_lines(file):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(file, f"invalid JSON: {exc.msg}", line=number) from exc


class _GraphBuilder:
    """Collects entities and relations by name, so repeated mentions become one node and one edge.

    A graph is a set of facts about named things: the same triple annotated twice (CoNLL04 marks each mention) is
    still one fact. An entity first seen as MISC takes the first specific type it is seen with later.
    """

    def __init__(self) -> None:
        self._types: dict[str, str] = {}
        self._relations: dict[tuple[str, str, str], None] = {}

    def entity(self, name: str, type_: str = "MISC") -> None:
        if self._types.get(name, "MISC") == "MISC":
            self._types[name] = type_

    def relation(
        self, subject: str, predicate: str, obj: str, subject_type: str = "MISC", object_type: str = "MISC"
    ) -> None:
        self.entity(subject, subject_type)
        self.entity(obj, object_type)
        self._relations.setdefault((subject, predicate, obj), None)

    def build(self) -> Graph:
        return Graph(
            entities=[Entity(name=name, type=type_) for name, type_ in self._types.items()],
            relations=[Relation(subject=s, predicate=p, object=o) for s, p, o in self._relations],
        )


def _schema_from_relations(
    name: str, relations: Sequence[RelationType], description: str, always: Sequence[str] = ("PERSON", "MISC")
) -> RelationSchema:
    """Entity types = those the relations use plus `always`, in hotmem's canonical order (stable fingerprints)."""
    used = set(always)
    for relation in relations:
        used.update(relation.head_types + relation.tail_types)
    ordered = [t for t in ENTITY_TYPES if t in used] + sorted(used - set(ENTITY_TYPES))
    return RelationSchema(name=name, entity_types=tuple(ordered), relations=tuple(relations), description=description)


# --------------------------------------------------------------------------- data root and file resolution


def data_root_candidates() -> list[Path]:
    """Where the research data may live, in the order we look.

    `$HOTMEM_DATA_DIR` wins outright when set (an explicit setting that silently fell back elsewhere would hide
    mistakes). Otherwise `../shared/data` from the current directory (running from the project root), then from the
    repository root next to the package (running from anywhere else, e.g. a subfolder or an IDE).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return [Path(env).expanduser()]
    repo_root = Path(__file__).resolve().parent.parent
    candidates = [(Path.cwd() / _RELATIVE_DATA_ROOT).resolve(), (repo_root / _RELATIVE_DATA_ROOT).resolve()]
    return list(dict.fromkeys(candidates))


def find_data_root() -> Path | None:
    """The first existing data root, or None (tests use this to skip what needs the research data)."""
    return next((path for path in data_root_candidates() if path.is_dir()), None)


def _resolve_file(path: Path | str, dataset: str, split: str | None = None) -> Path:
    """A loader's `path` may be the data file itself or the data set's folder; a folder means its file for `split`."""
    path = Path(path)
    if path.is_dir():
        spec = DATASETS[dataset]
        key = _split_name(spec, split)
        path = path / spec.files[key]
    if not path.is_file():
        raise DatasetNotFoundError(f"{dataset} data", [path])
    return path


def _split_name(spec: DatasetSpec, split: str | None) -> str:
    if split is None:
        return spec.default_split
    if split not in spec.files:
        raise InvalidInputError(f"{spec.name} has no split {split!r}; choose one of {sorted(spec.files)}")
    return split


# --------------------------------------------------------------------------- gold


def _gold_dir() -> Traversable | None:
    try:
        gold = resources.files("hotmem").joinpath("gold")
    except (FileNotFoundError, ModuleNotFoundError):  # namespace-package MultiplexedPath raises for a missing child
        return None
    return gold if gold.is_dir() else None


def load_gold(
    split: str | None = None, category: str | None = None, *, directory: Path | Traversable | None = None
) -> list[Record]:
    """Our hand-annotated records (`hotmem/gold/*.jsonl`), the reference every extractor is scored against.

    Read through `importlib.resources` so it works from an installed wheel as well as a checkout. Every file present
    is read (colleagues add categories one file at a time), and records are sorted by id so results do not depend on
    file-system order. A malformed line fails loudly with its file and line: silently skipping gold data would skew
    every score computed from it. `directory` reads another folder of the same format (tests, drafts).
    """
    if split is not None and split not in ("train", "dev", "test"):
        raise InvalidInputError(f"split must be train, dev or test, got {split!r}")
    if category is not None and category not in CATEGORIES:
        raise InvalidInputError(f"unknown category {category!r}; choose one of {list(CATEGORIES)}")
    folder = _gold_dir() if directory is None else directory
    if folder is None or not folder.is_dir():
        logger.warning("no gold directory found (%s)", folder)
        return []
    seen: dict[str, str] = {}
    records: list[Record] = []
    for file in sorted((f for f in folder.iterdir() if f.name.endswith(".jsonl")), key=lambda f: f.name):
        for number, line in _iter_lines(file):
            try:
                record = Record.model_validate_json(line)
            except ValidationError as exc:
                raise DatasetFormatError(str(file), f"not a valid Record: {exc}", line=number) from exc
            if record.id in seen:
                where = seen[record.id]
                raise DatasetFormatError(str(file), f"duplicate id {record.id!r} (also in {where})", line=number)
            seen[record.id] = f"{file.name}:{number}"
            records.append(record)
    return sorted(
        (r for r in records if (split is None or r.split == split) and (category is None or r.category == category)),
        key=lambda r: r.id,
    )


# --------------------------------------------------------------------------- PersonaExt / DNLI (shared)

#: First-person singular forms that name the speaker ("mine" too: "mine is blue" is the speaker's).
_SPEAKER_WORDS = frozenset({"i", "me", "my", "myself", "mine"})
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
    if text.casefold() in _SPEAKER_WORDS:
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
    data_file = folder / DATASETS["personaext"].files["dev"]
    seen = (p for _, _, triples in _personaext_rows(data_file) for _, p, _ in triples) if data_file.is_file() else ()
    return _schema_from_relations(
        "personaext",
        _with_unseen(relations, seen),
        "PersonaExt (PAED, ACL 2023) persona attributes of ConvAI2 speakers.",
    )


# --------------------------------------------------------------------------- ConvAI2 with DNLI triples

_PERSONA_LINE = re.compile(r"^(?P<who>your|partner's) persona:\s*(?P<text>.*)$")


@dataclass(frozen=True)
class _ConvLine:
    dialogue: int  # 1-based dialogue number in the file
    kind: str  # "your" / "partner's" persona line, or "utterance"
    number: int  # persona line number within the dialogue, or the utterance's own number
    text: str
    triples: list[tuple[str, str, str]]


def _iter_convai2(file: Path) -> Iterator[_ConvLine]:
    """ParlAI "both_original" lines. A dialogue starts at a persona line that follows an utterance (or the file)."""
    dialogue, persona_number, previous = 0, 0, "utterance"
    for number, line in _iter_lines(file):
        head, *rest = line.split("\t")
        persona = _PERSONA_LINE.match(head)
        if persona:
            if previous == "utterance":
                dialogue, persona_number = dialogue + 1, 0
            persona_number += 1
            kind, position, text, raw_triples = persona["who"], persona_number, persona["text"], rest
        elif head.strip().isdigit() and rest:
            if dialogue == 0:
                raise DatasetFormatError(file, "utterance before any persona line", line=number)
            kind, position, text, raw_triples = "utterance", int(head), rest[0], rest[1:]
        else:
            raise DatasetFormatError(file, "neither a persona line nor a numbered utterance", line=number)
        previous = "utterance" if kind == "utterance" else "persona"
        triples = []
        for raw in raw_triples:
            try:
                value = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError) as exc:
                raise DatasetFormatError(file, f"cannot read triple {raw!r}: {exc}", line=number) from exc
            triples.append(_check_triple(value, file, number))
        yield _ConvLine(dialogue, kind, position, text.strip(), triples)


def iter_convai2_utterances(path: Path | str) -> Iterator[str]:
    """Every utterance of the ConvAI2 file, labelled or not: real two-party chat to label with the teacher later.

    Persona lines are left out: they are scripted profile sentences, not conversation.
    """
    for line in _iter_convai2(_resolve_file(path, "convai2")):
        if line.kind == "utterance":
            yield line.text


def load_convai2(path: Path | str, limit: int | None = None, labeled_only: bool = True) -> list[Record]:
    """ConvAI2 persona lines and utterances with their DNLI triples, one single-turn record each (speaker unnamed).

    Records are per line, not per dialogue, because the triples are attached to single lines and the two partners
    are not named. With `labeled_only`, lines whose triples are all placeholders (or absent) are skipped.
    Tail types are PersonaExt's when its schema.json is beside this data set (see `dnli_schema`).
    """
    file = _resolve_file(path, "convai2")
    prefix, split = _id_prefix("convai2", file)
    tail_types = _tail_types(_personaext_schema_relations(_personaext_folder(file)))

    def records() -> Iterator[Record]:
        for line in _iter_convai2(file):
            graph = _dnli_graph(line.triples, tail_types)
            if labeled_only and not graph.relations:
                continue
            tag = f"u{line.number:02d}" if line.kind == "utterance" else f"{line.kind[0]}{line.number:02d}"
            yield Record(
                id=f"{prefix}-{line.dialogue:04d}-{tag}",
                turns=[Turn(text=line.text)],
                graph=graph,
                split=split,
                source="convai2",
            )

    return _take(records(), limit)


def _personaext_folder(convai2_file: Path) -> Path:
    """PersonaExt sits next to ConvAI2 in the data root (`<root>/convai2_dnli/...` -> `<root>/personaext`)."""
    return convai2_file.parent.parent / DATASETS["personaext"].relative_path


def dnli_schema(path: Path | str, personaext_path: Path | str | None = None) -> RelationSchema:
    """Relations the ConvAI2/DNLI file actually uses, described with PersonaExt's schema where the names overlap.

    PersonaExt re-annotates these very DNLI triples with the same relation names, so reusing its display names and
    object types gives the two corpora one vocabulary; only DNLI's extras (e.g. not_have) get a name-derived
    description and any tail. The predicates are always exactly the names seen in the data (placeholders dropped),
    (a name used only with a `<blank>` object names no fact), so the schema's predicates do not change when
    PersonaExt is absent; only its descriptions and tail types get plainer.
    `personaext_path` defaults to the `personaext` folder beside this data set.
    """
    file = _resolve_file(path, "convai2")
    folder = Path(personaext_path) if personaext_path is not None else _personaext_folder(file)
    folder = folder if folder.is_dir() else folder.parent
    known = _personaext_schema_relations(folder)
    names = sorted({t[1] for line in _iter_convai2(file) for t in line.triples if not _is_placeholder(t)})
    relations = _with_unseen({n: known[n] for n in names if n in known}, names)
    return _schema_from_relations(
        "convai2-dnli", relations, "Dialogue-NLI persona triples on ConvAI2 utterances (Welleck et al. 2019)."
    )


# --------------------------------------------------------------------------- DialogRE

_DIALOGRE_TYPES = {"PER": "PERSON", "ORG": "ORGANIZATION", "GPE": "LOCATION", "VALUE": "QUANTITY", "STRING": "MISC"}
_DIALOGRE_TURN = re.compile(r"^(?P<speaker>Speaker \d+(?:\s*,\s*Speaker \d+)*)\s*:\s?(?P<text>.*)$", re.DOTALL)
_UNANSWERABLE = "unanswerable"


_dr = relation_type  # DialogRE relations have no category


_P, _IMPRESSION = "PERSON", "PERSON ORGANIZATION LOCATION MISC"

#: DialogRE's 36 relations (TAC-KBP style: `per:parents(x, y)` = y is a parent of x). Endpoint types are those the
#: v2_en data uses, mapped to hotmem's names.
DIALOGRE_SCHEMA = RelationSchema(
    name="dialogre",
    entity_types=("PERSON", "ORGANIZATION", "LOCATION", "QUANTITY", "MISC"),
    description="DialogRE (Yu et al. 2020): relations between arguments in Friends dialogues.",
    relations=(
        _dr("per:positive_impression", "likes or thinks well of", _P, _IMPRESSION),
        _dr("per:negative_impression", "dislikes or thinks badly of", _P, _IMPRESSION),
        _dr("per:acquaintance", "knows casually", _P, _P, symmetric=True),
        _dr("per:alumni", "went to the same school or class as", _P, _P, symmetric=True),
        _dr("per:boss", "has this person as boss", _P, _P, inverse="per:subordinate"),
        _dr("per:subordinate", "has this person working under them", _P, _P, inverse="per:boss"),
        _dr("per:client", "has this person as a client or customer", _P, _P),
        _dr("per:dates", "goes on dates with", _P, _P),
        _dr("per:friends", "is a friend of", _P, _P, symmetric=True),
        _dr("per:girl/boyfriend", "is the girlfriend or boyfriend of", _P, _P, symmetric=True),
        _dr("per:neighbor", "lives next to", _P, _P, symmetric=True),
        _dr("per:roommate", "shares a home with", _P, _P, symmetric=True),
        _dr("per:children", "has this person as a child", _P, _P, inverse="per:parents"),
        _dr("per:other_family", "is other family (cousin, in-law, grandparent) of", _P, _P, symmetric=True),
        _dr("per:parents", "has this person as a parent", _P, _P, inverse="per:children"),
        _dr("per:siblings", "is a brother or sister of", _P, _P, symmetric=True),
        _dr("per:spouse", "is married to", _P, _P, symmetric=True),
        _dr("per:place_of_residence", "lives in", _P, "LOCATION", inverse="gpe:residents_of_place"),
        _dr("per:place_of_birth", "was born in", _P, "LOCATION", inverse="gpe:births_in_place"),
        _dr("per:visited_place", "visited or travelled to", _P, "LOCATION", inverse="gpe:visitors_of_place"),
        _dr("per:origin", "comes from (nationality, ethnicity or place)", _P, "PERSON LOCATION MISC"),
        _dr("per:employee_or_member_of", "works for or belongs to", _P, "ORGANIZATION",
            inverse="org:employees_or_members"),
        _dr("per:schools_attended", "studied at", _P, "ORGANIZATION", inverse="org:students"),
        _dr("per:works", "made or works on (a show, film, song)", _P, "MISC"),
        _dr("per:age", "is this old", _P, "QUANTITY"),
        _dr("per:date_of_birth", "was born on", _P, "QUANTITY"),
        _dr("per:major", "studies this subject", _P, "MISC"),
        _dr("per:place_of_work", "works at this place", _P, "MISC"),
        _dr("per:title", "has this title, job or role", _P, "MISC"),
        _dr("per:alternate_names", "is also called (name or nickname; links a speaker to a name)", _P, "PERSON MISC"),
        _dr("per:pet", "has this pet", _P, "PERSON MISC"),
        _dr("gpe:residents_of_place", "is where this person lives", "LOCATION", _P, inverse="per:place_of_residence"),
        _dr("gpe:births_in_place", "is where this person was born", "LOCATION", _P, inverse="per:place_of_birth"),
        _dr("gpe:visitors_of_place", "was visited by", "LOCATION", _P, inverse="per:visited_place"),
        _dr("org:employees_or_members", "has this person as employee or member", "ORGANIZATION", _P,
            inverse="per:employee_or_member_of"),
        _dr("org:students", "has this person as a student", "ORGANIZATION", _P, inverse="per:schools_attended"),
    ),
)


def _dialogre_turn(line: str) -> Turn:
    """`Speaker 2: text` -> Turn("Speaker 2", text); lines said in chorus keep the joint "Speaker 1, Speaker 2"."""
    match = _DIALOGRE_TURN.match(line)
    return Turn(speaker=match["speaker"], text=match["text"]) if match else Turn(text=line)


def _dialogre_graph(instances: Sequence[Mapping[str, Any]], file: Path, item: int) -> Graph:
    builder = _GraphBuilder()
    for instance in instances:
        try:
            x, y, labels = instance["x"], instance["y"], instance["r"]
            x_type = _DIALOGRE_TYPES.get(instance.get("x_type", ""), "MISC")
            y_type = _DIALOGRE_TYPES.get(instance.get("y_type", ""), "MISC")
        except (KeyError, TypeError, AttributeError) as exc:
            raise DatasetFormatError(file, f"instance without x/y/r: {instance!r}", item=item) from exc
        builder.entity(x, x_type)
        builder.entity(y, y_type)
        for label in labels:
            if label != _UNANSWERABLE:
                builder.relation(x, label, y, x_type, y_type)
    return builder.build()


def load_dialogre(path: Path | str, limit: int | None = None) -> list[Record]:
    """DialogRE v2 (English) dialogues, one multi-party record each: the closest public match to hotmem's task.

    `path` is a dev/train JSON file or the `dialogre` folder (= its dev split). Entities are every annotated
    argument, including those of `unanswerable` pairs (they are annotated mentions, just without a relation).
    """
    file = _resolve_file(path, "dialogre")
    prefix, split = _id_prefix("dialogre", file)
    data = _read_json(file)
    if not isinstance(data, list):
        raise DatasetFormatError(file, "expected a JSON list of dialogues")

    def records() -> Iterator[Record]:
        for index, dialogue in enumerate(data):
            if not (isinstance(dialogue, list) and len(dialogue) == 2):
                raise DatasetFormatError(file, "expected [turns, instances]", item=index)
            lines, instances = dialogue
            yield Record(
                id=f"{prefix}-{index:04d}",
                turns=[_dialogre_turn(line) for line in lines],
                graph=_dialogre_graph(instances, file, index),
                split=split,
                source="dialogre",
                # relation classification data: only the annotated argument pairs carry labels
                scored_pairs=list(dict.fromkeys((i["x"], i["y"]) for i in instances)),
            )

    return _take(records(), limit)


# --------------------------------------------------------------------------- CoNLL04

_CONLL04_TYPES = {"Peop": "PERSON", "Loc": "LOCATION", "Org": "ORGANIZATION", "Other": "MISC"}

#: CoNLL04 (Roth & Yih 2004) with its predicate names kept as in the data, so scores compare with published ones.
CONLL04_SCHEMA = RelationSchema(
    name="conll04",
    entity_types=("PERSON", "ORGANIZATION", "LOCATION", "MISC"),
    description="CoNLL04: people, organizations and places in news sentences.",
    relations=(
        RelationType(name="Live_In", description="lives in", head_types=("PERSON",), tail_types=("LOCATION",)),
        RelationType(
            name="OrgBased_In", description="is based in", head_types=("ORGANIZATION",), tail_types=("LOCATION",)
        ),
        RelationType(
            name="Located_In", description="is located in", head_types=("LOCATION",), tail_types=("LOCATION",)
        ),
        RelationType(name="Work_For", description="works for", head_types=("PERSON",), tail_types=("ORGANIZATION",)),
        RelationType(name="Kill", description="killed", head_types=("PERSON",), tail_types=("PERSON",)),
    ),
)

#: Penn Treebank escapes and quote tokens, as printed text.
_PTB = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}", "``": '"', "''": '"'}
_NO_SPACE_BEFORE = frozenset(",.;:?!%)]}")
_NO_SPACE_AFTER = frozenset("([{$")
_CLITIC = re.compile(r"^(?:'[A-Za-z]*|n't)$", re.IGNORECASE)  # 's 't 're 'll n't, and O 'Brien, Sa 'id


def _detokenize(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Readable text from PTB-style tokens, with each token's character span so entity names are exact substrings.

    Conversation models see prose, not `wasn 't` or `` ` ` He``: "` `" and "' '" become one `"` (the second token
    prints as nothing), a lone "`" opens a single quote, plain `"` alternate between opening and closing.
    """
    n = len(tokens)
    surfaces = [_PTB.get(t, t) for t in tokens]
    role = [""] * n  # "open" / "close" for quote marks
    in_quote, i = False, 0
    while i < n:
        token = tokens[i]
        if token in ("`", "'") and i + 1 < n and tokens[i + 1] == token:
            surfaces[i], surfaces[i + 1] = '"', ""
            role[i] = "open" if token == "`" else "close"
            in_quote, i = token == "`", i + 2
            continue
        if token == "``":
            role[i], in_quote = "open", True
        elif token == "`":  # a lone backtick opens a single quote; the double-quote state is unaffected
            role[i], surfaces[i] = "open", "'"
        elif token == "''":
            role[i], in_quote = "close", False
        elif token == '"':
            role[i], in_quote = ("close" if in_quote else "open"), not in_quote
        i += 1
    text, spans, glue = "", [], True
    for surface, mark in zip(surfaces, role, strict=True):
        attach = glue or surface == "" or mark == "close"
        attach = attach or (mark != "open" and (surface in _NO_SPACE_BEFORE or bool(_CLITIC.match(surface))))
        if not attach:
            text += " "
        spans.append((len(text), len(text) + len(surface)))
        text += surface
        if surface:
            glue = mark == "open" or surface in _NO_SPACE_AFTER
    return text, spans


def load_conll04(path: Path | str, limit: int | None = None) -> list[Record]:
    """CoNLL04 sentences as single-turn records: the standard closed-set benchmark, to compare with published RE.

    Not conversational; it checks that extraction still works on plain prose. `path` is a file or the `conll04`
    folder (= its valid split).
    """
    file = _resolve_file(path, "conll04")
    prefix, split = _id_prefix("conll04", file)
    data = _read_json(file)
    if not isinstance(data, list):
        raise DatasetFormatError(file, "expected a JSON list of sentences")

    def records() -> Iterator[Record]:
        for index, sentence in enumerate(data):
            try:
                text, spans = _detokenize(sentence["tokens"])
                names: dict[tuple[int, int], tuple[str, str]] = {}
                builder = _GraphBuilder()
                for start, end, type_ in sentence["entities"]:
                    name, mapped = text[spans[start][0] : spans[end - 1][1]], _CONLL04_TYPES.get(type_, "MISC")
                    names[(start, end)] = (name, mapped)
                    builder.entity(name, mapped)
                for h_start, h_end, t_start, t_end, predicate in sentence["relations"]:
                    (head, head_type), (tail, tail_type) = names[(h_start, h_end)], names[(t_start, t_end)]
                    builder.relation(head, predicate, tail, head_type, tail_type)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                reason = f"malformed sentence ({type(exc).__name__}: {exc})"
                raise DatasetFormatError(file, reason, item=index) from exc
            turns = [Turn(text=text)]
            yield Record(id=f"{prefix}-{index:04d}", turns=turns, graph=builder.build(), split=split, source="conll04")

    return _take(records(), limit)


# --------------------------------------------------------------------------- registry


def _constant(schema: RelationSchema) -> Callable[[Path], RelationSchema]:
    return lambda _path: schema


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, load and describe one data set; `load_dataset` needs nothing else."""

    name: str
    loader: Callable[..., list[Record]]  # (path, limit=None) -> records
    schema: Callable[[Path], RelationSchema]  # data set folder or file -> its relation schema
    relative_path: str  # folder under the data root ("" for the packaged gold set)
    files: Mapping[str, str] = field(default_factory=dict)  # split name -> file inside the folder
    default_split: str = ""


def _load_gold_dataset(
    path: Path | str | None = None, limit: int | None = None, split: str | None = None
) -> list[Record]:
    """The gold set in the registry's loader shape; `path` is another folder of gold-format files."""
    if path is not None and not Path(path).is_dir():
        raise DatasetNotFoundError("gold folder", [Path(path)], "pass a folder of gold *.jsonl files, or no path")
    records = load_gold(split=split, directory=Path(path) if path is not None else None)
    return _take(records, limit)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "gold": DatasetSpec("gold", _load_gold_dataset, _constant(CONVERSATION_SCHEMA), ""),
        "personaext": DatasetSpec(
            "personaext", load_personaext, personaext_schema, "personaext", {"dev": "dev.jsonl"}, "dev"
        ),
        "dialogre": DatasetSpec(
            "dialogre",
            load_dialogre,
            _constant(DIALOGRE_SCHEMA),
            "dialogre",
            {"dev": "v2_en/dev.json", "train": "v2_en/train.json"},
            "dev",
        ),
        "convai2": DatasetSpec(
            "convai2",
            load_convai2,
            dnli_schema,
            "convai2_dnli",
            {"valid": "valid_dialogueNLI.txt", "dev": "valid_dialogueNLI.txt"},
            "valid",
        ),
        "conll04": DatasetSpec(
            "conll04",
            load_conll04,
            _constant(CONLL04_SCHEMA),
            "conll04",
            {"valid": "valid.CoNLL04.json", "dev": "valid.CoNLL04.json", "train": "train.CoNLL04.json"},
            "valid",
        ),
    }
)


def load_dataset(
    name: str, path: Path | str | None = None, split: str | None = None, limit: int | None = None
) -> tuple[list[Record], RelationSchema]:
    """Records and the schema to extract them with, for any registered data set, in one call.

    `path=None` looks under the data root (see `data_root_candidates`); a folder means the data set's folder, a
    file is read as is. `split` picks dev/train for DialogRE, valid/train for CoNLL04, and filters the gold set.
    """
    spec = _spec(name)
    _check_limit(limit)
    if name == "gold":
        return _load_gold_dataset(path, limit=limit, split=split), spec.schema(Path())
    path = dataset_file(name, path, split)
    return spec.loader(path, limit=limit), spec.schema(path)


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    return spec


def dataset_file(name: str, path: Path | str | None = None, split: str | None = None) -> Path:
    """The data file of a registered data set (not the packaged gold set): `path=None` looks under the data root,
    a folder means the data set's folder, a file is taken as is."""
    spec = _spec(name)
    if not spec.relative_path:
        raise InvalidInputError(f"{name!r} is packaged with hotmem, not a data file")
    if path is None:
        root = find_data_root()
        if root is None:
            raise DatasetNotFoundError(f"data root for {name!r}", data_root_candidates())
        path = root / spec.relative_path
    path = Path(path)
    if path.is_dir():
        path = path / spec.files[_split_name(spec, split)]
    elif split is not None and path.is_file():
        _split_name(spec, split)  # still reject a split the data set does not have
    if not path.exists():
        raise DatasetNotFoundError(f"{name} data set", [path])
    return path
