"""Every error hotmem raises on purpose, in one module. Catch `HotmemError` for all of them.

Errors about what the caller configured (a model that is not installed, a file that is not there) are raised before
any work starts, so a missing model never reads as a result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "AlignmentNotFoundError",
    "ConfigurationError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DistillError",
    "ExtractionError",
    "HotmemError",
    "InvalidInputError",
    "MemoryLockedError",
    "ModelIntegrityError",
    "ModelNotAvailableError",
    "ProgramNotFoundError",
    "SchemaMismatchError",
    "StudentNotFoundError",
]


class HotmemError(Exception):
    """Base class of every error hotmem raises on purpose."""


class InvalidInputError(HotmemError, ValueError):
    """The caller's input cannot be extracted from (wrong type, not valid Unicode, too long)."""


class ExtractionError(HotmemError):
    """The model failed, or its output could not be turned into a graph (after DSPy's own retries)."""


class SchemaMismatchError(HotmemError):
    """A saved program or data set does not fit the schema or program it is used with."""


class ConfigurationError(HotmemError):
    """What was configured cannot run here: stop at once rather than record failures."""


class ModelNotAvailableError(ConfigurationError, FileNotFoundError):
    """A model is not installed (for an embedded model: its PyPI packages are missing)."""


class ModelIntegrityError(ConfigurationError):
    """An installed model file is not the one hotmem pinned (its sha256 differs): corrupted or replaced."""


class StudentNotFoundError(ConfigurationError, FileNotFoundError):
    """No exported student where one was asked for."""


class ProgramNotFoundError(ConfigurationError, FileNotFoundError):
    """No saved program in the folder given."""


class AlignmentNotFoundError(ConfigurationError, FileNotFoundError):
    """No shipped schema alignment of that name and no file at that path."""


class MemoryLockedError(ConfigurationError):
    """A memory file is held by another writer process (DuckDB allows one); nothing was read or written."""


class DistillError(HotmemError):
    """Training cannot start as configured (no examples, a backend that cannot run here, no base weights)."""


class DatasetNotFoundError(ConfigurationError, FileNotFoundError):
    """A data set is not where we looked. Also a FileNotFoundError so generic file handling still catches it."""

    def __init__(self, what: str, tried: Sequence[Path | str], hint: str = "") -> None:
        self.tried = tuple(Path(p) for p in tried)
        where = ", ".join(str(p) for p in self.tried) or "(nowhere)"
        hint = hint or (
            "pass path=... to the loader or load_dataset(), "
            "or set HOTMEM_DATA_DIR to the folder that holds the data sets"
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
