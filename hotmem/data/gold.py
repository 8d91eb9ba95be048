"""Our own hand-annotated gold set, shipped in the package (train / dev / test)."""

from __future__ import annotations

import logging
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pydantic import ValidationError

from hotmem.data.common import _iter_lines
from hotmem.errors import DatasetFormatError, InvalidInputError
from hotmem.schema import CATEGORIES
from hotmem.types import Record

logger = logging.getLogger(__name__)

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
