"""Where shipped artifacts live: `optimized/` in the repository, installed as `hotmem.optimized`."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["shipped_root"]


def shipped_root() -> Path:
    """`optimized/` as installed (`hotmem.optimized`), or the source tree's copy when hotmem runs uninstalled."""
    try:
        return Path(str(importlib.resources.files("hotmem.optimized")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "optimized"
