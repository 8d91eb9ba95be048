"""Backends: what turns a chunk of conversation into a `Graph`. `GraphExtractor` chunks, calls one, and merges.

Every backend implements `Backend` (the teacher program on an LM, the LoRA student, the students to come), so the
extractor, the CLI, evaluation and the bench choose and run them through one path. Which one runs is decided here
alone (`resolve_backend`), in this order:

1. an explicit `backend=` (a name, a student folder, or a `Backend`), or an explicit `lm=` / `program=` (the teacher);
2. an LM the user configured: `hotmem.configure(...)`, else `HOTMEM_LM`, else DSPy's configured LM (the teacher on it);
3. for closed extraction, the shipped LoRA student in a schema it serves (any, for a student that reads the schema
   from its prompt; else the one it was trained on; when llama-cpp-python is installed), else the shipped encoder
   student (any schema: it embeds the schema's names; when onnxruntime is installed, the `encoder` extra): the LoRA
   student finds far more facts, the encoder answers in milliseconds (`backend="encoder"`);
4. the teacher on the embedded Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hotmem.errors import ConfigurationError, InvalidInputError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Graph, Relation, Turn

if TYPE_CHECKING:
    import dspy

# DSPy (and LiteLLM behind it) load only when a teacher runs: an app on a student starts without them.

__all__ = ["Backend", "TeacherBackend", "load_student", "resolve_backend"]


@runtime_checkable
class Backend(Protocol):
    """Turns one chunk of conversation into a graph. `name` and `model` say what ran (provenance, reports)."""

    name: str
    model: str

    def __call__(self, turns: Sequence[Turn]) -> Graph: ...

    def usage(self) -> dict[str, int]:
        """Calls and tokens answered so far: `{"calls", "prompt_tokens", "output_tokens"}`."""
        ...


class TeacherBackend:
    """A teacher program (any DSPy module answering `graph`) on an LM, with hotmem's compact JSON adapter.

    `check=False` runs a verifying `Teacher` without its per-fact check: for callers that check the facts of
    several labels once, together (`stated_probabilities`)."""

    name = "teacher"

    def __init__(self, program: dspy.Module, lm: dspy.BaseLM, *, check: bool = True):
        if not check and not getattr(program, "verifies", False):
            raise InvalidInputError("check=False skips a verify step: this program has none")
        self.program, self.lm, self.check = program, lm, check
        self.model = str(getattr(lm, "model", type(lm).__name__))

    def __call__(self, turns: Sequence[Turn]) -> Graph:
        with self._context():
            return self.program(turns=list(turns), **({} if self.check else {"check": False})).graph

    def stated_probabilities(self, turns: Sequence[Turn], relations: Sequence[Relation]) -> list[float]:
        """Per relation, the program's verify step's probability that `turns` state it (`Teacher.
        stated_probabilities`), read greedily on this backend's LM."""
        if not getattr(self.program, "verifies", False):
            raise InvalidInputError("this teacher program has no verify step (hotmem optimize --verify adds one)")
        with self._context():
            _, statements = self.program.statements(list(turns))
            return self.program.stated_probabilities(statements, list(relations))

    def with_lm(self, lm: dspy.BaseLM) -> TeacherBackend:
        """The same program and check on `lm` (a sampling copy of this backend's LM, say): a label that differs
        from this backend's by sampling, without loading the program again."""
        return TeacherBackend(self.program.deepcopy(), lm, check=self.check)

    def with_demo_page(self, page: int) -> TeacherBackend:
        """The same program on the same LM, shown the `page`-th k retrieved demos instead of the nearest k
        (`DemoRetriever.with_page`): a greedy label that differs from this backend's by its demonstrations, for
        self-consistency without sampling."""
        retriever = getattr(self.program, "retriever", None)
        if retriever is None:
            raise InvalidInputError("this teacher program retrieves no demos (hotmem optimize --retrieve K adds them)")
        paged = self.with_lm(self.lm)
        paged.program.retriever = retriever.with_page(page)
        return paged

    def _context(self):
        import dspy

        from hotmem.teacher.adapter import CompactJSONAdapter

        return dspy.context(lm=self.lm, adapter=CompactJSONAdapter())

    def usage(self) -> dict[str, int]:
        from hotmem.lm import lm_usage

        return lm_usage(self.lm)


def default_program(schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                    lm: dspy.BaseLM | None = None) -> dspy.Module:
    """The optimized teacher shipped in `optimized/` where it was made for this schema and `lm`, else the
    unoptimized teacher."""
    from hotmem.teacher import Teacher, shipped_teacher

    shipped = shipped_teacher(schema, closed, getattr(lm, "model", None))
    return shipped if shipped is not None else Teacher(schema, closed=closed)


def teacher(lm: Any = None, *, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
            program: dspy.Module | str | None = None, check: bool = True) -> TeacherBackend:
    """The teacher on `lm` (default: the configured LM, else the embedded default). `program`: a DSPy module, or
    'default' (the shipped optimized teacher where it fits), 'teacher' (unoptimized) or a saved program folder.
    `check=False`: without the program's per-fact check (`TeacherBackend`)."""
    from hotmem.lm import make_lm

    resolved = make_lm(lm) if lm is not None else (_configured_lm() or make_lm())
    if program is None or program == "default":
        program = default_program(schema, closed, resolved)
    elif program == "teacher":
        from hotmem.teacher import Teacher

        program = Teacher(schema, closed=closed)
    elif isinstance(program, (str, Path)):
        from hotmem.teacher import load_for_schema

        program = load_for_schema(program, schema, closed)
    return TeacherBackend(program, resolved, check=check)


def _configured_lm():
    """`hotmem.lm.configured_lm()`, without importing DSPy when nothing can have been configured: `configure` and
    DSPy's own settings need their modules imported first, `HOTMEM_LM` is read from the environment."""
    if os.environ.get("HOTMEM_LM") or "hotmem.lm" in sys.modules or "dspy" in sys.modules:
        from hotmem.lm import configured_lm

        return configured_lm()
    return None


def _shipped_encoder_runs(closed: bool) -> bool:
    """The shipped encoder student runs by default for closed extraction, in any schema, where its runtime is."""
    import importlib.util

    from hotmem.students.encoder import shipped_encoder_dir

    runtime = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "tokenizers"))
    return closed and runtime and shipped_encoder_dir() is not None


def _shipped_student_fits(schema: RelationSchema, closed: bool) -> bool:
    """The shipped LoRA student runs by default for closed extraction in a schema it serves, where llama.cpp is."""
    import importlib.util

    from hotmem.students.lora import reads_schema, shipped_student_dir, trained_schema_fingerprint

    folder = shipped_student_dir()
    if folder is None or not closed or importlib.util.find_spec("llama_cpp") is None:
        return False
    return reads_schema(folder) or trained_schema_fingerprint(folder) == schema.fingerprint()


def resolve_backend(backend: Backend | str | Path = "auto", *, lm: Any = None,
                    schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                    program: dspy.Module | str | None = None) -> Backend:
    """The backend to run, by the precedence in this module's docstring."""
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, (str, Path)):
        raise ConfigurationError(f"backend is a name, a student folder or a Backend, not {type(backend).__name__}")
    if backend == "auto":
        if lm is not None or program is not None or _configured_lm() is not None:
            backend = "teacher"
        elif _shipped_student_fits(schema, closed):
            backend = "student"
        elif _shipped_encoder_runs(closed):
            backend = "encoder"
        else:
            backend = "teacher"
    if backend == "teacher":
        return teacher(lm, schema=schema, closed=closed, program=program)
    if backend == "student":
        from hotmem.students.lora import Student

        return Student(None, schema=schema, closed=closed)
    if backend == "encoder":
        from hotmem.shipped import shipped_root

        backend = shipped_root() / "encoder"  # the shipped encoder student; a clear error when none ships
        return load_student(backend, schema=schema, closed=closed, kind="encoder")
    if Path(backend).is_dir():  # a folder is meant as a student: say what it lacks if it is not one
        return load_student(backend, schema=schema, closed=closed)
    raise ConfigurationError(f"backend is 'auto', 'teacher', 'student', 'encoder' or a folder exported by "
                             f"`hotmem distill`, not {str(backend)!r}")


def load_student(folder: str | Path, *, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True,
                 kind: str | None = None) -> Backend:
    """The student exported in `folder`, of the kind its `student.json` names: the encoder (ONNX) or the LoRA
    student (llama.cpp)."""
    from hotmem.students.encoder import EncoderStudent, is_encoder_student

    if kind == "encoder" or is_encoder_student(folder):
        return EncoderStudent(folder, schema=schema, closed=closed)
    from hotmem.students.lora import Student

    return Student(folder, schema=schema, closed=closed)
