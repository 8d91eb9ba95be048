"""Files that survive a kill: atomic writes, and append-only JSONL logs that resume where a run stopped.

One crash rule everywhere (evaluation rows, labels, bench rows): every record is flushed and fsynced as one line;
a last line cut by a kill is dropped and the file repaired, so that record is simply done again. A damaged line
anywhere else is not a crash artefact and raises.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotmem.errors import DatasetFormatError

__all__ = ["JsonlLog", "write_atomic"]

logger = logging.getLogger(__name__)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers never see a half-written version (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file what open() would have
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonlLog:
    """An append-only JSONL file of finished records (one JSON object a line).

    >>> log = JsonlLog("runs/eval/rows.jsonl")
    >>> done = {row["id"]: row for row in log.read()}   # repairs a torn last line first
    >>> with log.writer() as write:
    ...     write({"id": "x", "score": 1.0})             # on disk (fsynced) when it returns
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def repair(self) -> None:
        """Drop a last line left incomplete by a kill (no newline, or not JSON), truncating the file."""
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        keep = raw[: raw.rfind(b"\n") + 1]
        if keep:
            last = keep[: -1][keep[:-1].rfind(b"\n") + 1 :]
            if last.strip():
                try:
                    json.loads(last)
                except ValueError:
                    keep = keep[: len(keep) - len(last) - 1]
        if len(keep) != len(raw):
            logger.warning("%s: dropping a partial last line left by an interrupted run", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(len(keep))
                handle.flush()
                os.fsync(handle.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every finished record, in order (after `repair`). `DatasetFormatError` for a damaged line before the end."""
        return list(self)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.repair()
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise DatasetFormatError(self.path, f"not a JSON line ({exc}); only a torn last line is "
                                             "repaired automatically", line=number) from None

    def writer(self) -> _Writer:
        self.repair()
        return _Writer(self.path)


class _Writer:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__/close

    def __call__(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
