"""The teacher: typed DSPy signatures composed into one program (coref -> decompose -> entities -> relations)."""

from hotmem.teacher.adapter import CompactJSONAdapter
from hotmem.teacher.program import Teacher
from hotmem.teacher.saved import load_for_schema, load_instructions, load_program, save_program, shipped_teacher
from hotmem.teacher.signatures import signatures_for

__all__ = [
    "CompactJSONAdapter",
    "Teacher",
    "load_for_schema",
    "load_instructions",
    "load_program",
    "save_program",
    "shipped_teacher",
    "signatures_for",
]
