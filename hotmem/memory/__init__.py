"""A memory of conversations: one API over DuckDB (embedded) and PostgreSQL (shared by many processes).

>>> from hotmem.memory import Memory
>>> with Memory("memory.duckdb") as memory:
...     memory.add("I live in Oslo.", speaker="Anna", session="monday")
...     memory.facts("Anna")

Database drivers load when a memory opens; the extraction model when `add` first needs it.
"""

from hotmem.errors import MemoryLockedError
from hotmem.memory.memory import DEFAULT_SESSION, Memory
from hotmem.memory.models import AddResult, Fact, Mention, Merge

__all__ = ["DEFAULT_SESSION", "AddResult", "Fact", "Memory", "MemoryLockedError", "Mention", "Merge"]
