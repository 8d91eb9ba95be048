"""Where shipped artifacts live: `optimized/` in the repository, installed as `hotmem.optimized`."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["SHIPPED_STUDENTS", "shipped_folder", "shipped_root"]

#: Shipped students a spec may name: `optimized/student` (the LoRA) and `optimized/encoder`.
SHIPPED_STUDENTS = ("student", "encoder")


def shipped_root() -> Path:
    """`optimized/` as installed (`hotmem.optimized`), or the source tree's copy when hotmem runs uninstalled."""
    try:
        return Path(str(importlib.resources.files("hotmem.optimized")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "optimized"


def shipped_folder(spec: str | Path) -> Path:
    """A model folder by spec: a shipped student's by its name (`SHIPPED_STUDENTS`), else the path given."""
    return shipped_root() / spec if spec in SHIPPED_STUDENTS else Path(spec)
