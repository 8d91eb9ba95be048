"""Shared by the corpus loaders: where the data lies, how files are read, and the errors they raise."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from hotmem.errors import DatasetFormatError, DatasetNotFoundError, InvalidInputError
from hotmem.schema import ENTITY_TYPES, RelationSchema, RelationType
from hotmem.types import Entity, Graph, Record, Relation

logger = logging.getLogger(__name__)


#: Environment variable that points at the folder holding the research data sets (`dialogre/`, `conll04/`, ...).
DATA_DIR_ENV = "HOTMEM_DATA_DIR"

#: Where the research data sets live relative to the project root (never inside the repository).
_RELATIVE_DATA_ROOT = Path("..") / "shared" / "data"

#: Record splits are train/dev/test; corpora call their dev split `valid` too.
_RECORD_SPLIT = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}
_SPLIT_IN_NAME = re.compile(r"^(train|dev|valid|test)(?=[._-]|$)", re.IGNORECASE)


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


def _read_json_list(path: Path | str, dataset: str, items: str) -> tuple[Path, str, str | None, list]:
    """A data set whose file is one JSON list (DialogRE, CoNLL04): the file, its id prefix and split, the list."""
    file = _resolve_file(path, dataset)
    prefix, split = _id_prefix(dataset, file)
    data = _read_json(file)
    if not isinstance(data, list):
        raise DatasetFormatError(file, f"expected a JSON list of {items}")
    return file, prefix, split, data


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
    still one fact, and with a `schema`, so is a fact annotated both ways (DialogRE labels `A per:friends B` and
    `B per:friends A`, `A per:boss B` and `B per:subordinate A`): its first statement stays, as the extractor states
    a fact once (`RelationSchema.fact`). An entity first seen as MISC takes the first specific type it is seen with
    later.
    """

    def __init__(self, schema: RelationSchema | None = None) -> None:
        self._schema = schema
        self._types: dict[str, str] = {}
        self._relations: dict[tuple[str, str, str], Relation] = {}

    def entity(self, name: str, type_: str = "MISC") -> None:
        if self._types.get(name, "MISC") == "MISC":
            self._types[name] = type_

    def relation(
        self, subject: str, predicate: str, obj: str, subject_type: str = "MISC", object_type: str = "MISC"
    ) -> None:
        self.entity(subject, subject_type)
        self.entity(obj, object_type)
        if (subject, predicate, obj) not in self._relations:
            self._relations[subject, predicate, obj] = Relation(subject=subject, predicate=predicate, object=obj)

    def build(self) -> Graph:
        relations = list(self._relations.values())
        return Graph(
            entities=[Entity(name=name, type=type_) for name, type_ in self._types.items()],
            relations=self._schema.distinct(relations) if self._schema else relations,
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
    repo_root = Path(__file__).resolve().parents[2]  # hotmem/data/common.py -> the checkout
    candidates = [(Path.cwd() / _RELATIVE_DATA_ROOT).resolve(), (repo_root / _RELATIVE_DATA_ROOT).resolve()]
    return list(dict.fromkeys(candidates))


def find_data_root() -> Path | None:
    """The first existing data root, or None (tests use this to skip what needs the research data)."""
    return next((path for path in data_root_candidates() if path.is_dir()), None)


def _resolve_file(path: Path | str, dataset: str, split: str | None = None) -> Path:
    """A loader's `path` may be the data file itself or the data set's folder; a folder means its file for `split`."""
    path = Path(path)
    if path.is_dir():
        from hotmem.data.registry import DATASETS  # the registry imports every loader

        spec = DATASETS[dataset]
        key = _split_name(spec, split)
        path = path / spec.files[key]
    if not path.is_file():
        raise DatasetNotFoundError(f"{dataset} data", [path])
    return path


def _split_name(spec, split: str | None) -> str:
    if split is None:
        return spec.default_split
    if split not in spec.files:
        raise InvalidInputError(f"{spec.name} has no split {split!r}; choose one of {sorted(spec.files)}")
    return split
