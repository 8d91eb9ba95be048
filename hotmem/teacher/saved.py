"""Saved teacher programs: DSPy's JSON state with a manifest of what it was made for, loaded only where it fits.

Loading is runtime (the shipped optimized teacher runs in `GraphExtractor`); making one is `hotmem.pipeline.optimize`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hotmem.errors import ProgramNotFoundError, SchemaMismatchError
from hotmem.io import write_atomic
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.shipped import shipped_root
from hotmem.teacher.demos import DemoRetriever
from hotmem.teacher.program import Teacher

__all__ = ["load_for_schema", "load_instructions", "load_program", "save_program", "shipped_teacher"]

logger = logging.getLogger(__name__)

PROGRAM_FILE = "program.json"
MANIFEST_FILE = "manifest.json"
#: the manifest's entry for a program's retrieved demonstrations (k, pool size, embedder); the pool lies beside
RETRIEVAL_KEY = "demo_retrieval"


def shipped_teacher_dir() -> Path | None:
    """The optimized teacher `GraphExtractor()` loads by default: `optimized/teacher`, if shipped."""
    candidate = shipped_root() / "teacher"
    return candidate if (candidate / MANIFEST_FILE).is_file() else None


def manifest_for(program: Teacher) -> dict[str, Any]:
    """What a saved program must match to be loaded (class, schema and predictor names), and its retrieval."""
    manifest = {
        "program": f"hotmem.teacher.{type(program).__qualname__}",  # where it is imported from, not defined
        "schema": program.schema.name,
        "schema_fingerprint": program.schema.fingerprint(),
        "closed": program.closed,
        "predictors": [name for name, _ in program.named_predictors()],
        "reads": program.reads,
        "verifies": program.verifies,
    }
    if program.verify_threshold is not None:
        manifest["verify_threshold"] = program.verify_threshold
    if program.retriever is not None:
        manifest[RETRIEVAL_KEY] = program.retriever.settings()
    return manifest


def _unfitted(manifest: dict[str, Any], schema: RelationSchema, closed: bool) -> Teacher:
    """A fresh `Teacher` shaped as `manifest` says (what it reads, whether and how it checks), before its state."""
    return Teacher(schema, closed=closed, reads=manifest.get("reads", "statements"),
                   verify=manifest.get("verifies", False), verify_threshold=manifest.get("verify_threshold"))


def save_program(program: Teacher, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save the program's state as JSON with a manifest (and its demonstration pool, if it retrieves demos);
    returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = program.dump_state()
    write_atomic(out / PROGRAM_FILE, json.dumps(state, indent=1, default=str))
    manifest = {**manifest_for(program), **(extra or {})}
    if program.retriever is not None:
        program.retriever.save(out)
    write_atomic(out / MANIFEST_FILE, json.dumps(manifest, indent=1, default=str))
    return out


def load_program(
    path: str | Path, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True
) -> Teacher:
    """A `Teacher` for `schema` with the saved state; `SchemaMismatchError` when the state was made for another."""
    folder = Path(path)
    manifest_path, program_path = folder / MANIFEST_FILE, folder / PROGRAM_FILE
    if not manifest_path.is_file() or not program_path.is_file():
        raise ProgramNotFoundError(f"{folder} holds no saved program ({MANIFEST_FILE} and {PROGRAM_FILE} expected)")
    manifest = json.loads(manifest_path.read_text())
    program = _unfitted(manifest, schema, closed)
    expected = manifest_for(program)
    problems = [
        f"{key}: saved {manifest.get(key)!r}, this program {expected[key]!r}"
        for key in ("program", "schema_fingerprint", "closed", "predictors")
        if manifest.get(key) != expected[key]
    ]
    if problems:
        raise SchemaMismatchError(
            f"the program saved in {folder} was made for schema {manifest.get('schema')!r}, not {schema.name!r} "
            f"as configured here ({'; '.join(problems)}). Optimize for this schema with `hotmem optimize`, "
            "or pass the matching schema."
        )
    program.load_state(json.loads(program_path.read_text()))
    if RETRIEVAL_KEY in manifest:
        program.retriever = DemoRetriever.load(folder, manifest[RETRIEVAL_KEY])
    # Instructions and demos are tuned to the task LM: say which one, so a run on another LM is a visible choice.
    logger.info("loaded the program saved in %s (optimized on %s)", folder, manifest.get("task_lm", "an unrecorded LM"))
    return program


def shipped_teacher(schema: RelationSchema, closed: bool, lm_model: str | None) -> Teacher | None:
    """The shipped optimized teacher when its manifest says it was made for this schema, setting and task LM.

    An optimized program's demos and instructions are tuned to the LM it was optimized on (the shipped one scores
    below the unoptimized teacher on another LM: `optimized/teacher/report.md`), so elsewhere this returns None.
    """
    folder = shipped_teacher_dir()
    if folder is None:
        return None
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    made_for = (manifest.get("schema_fingerprint"), manifest.get("closed"), manifest.get("task_lm"))
    if made_for != (schema.fingerprint(), closed, lm_model):
        logger.info("the optimized teacher in %s was made for schema %s (closed=%s) on %s, not %s (closed=%s) on %s: "
                    "running the unoptimized teacher (hotmem.load_program loads it anyway)",
                    folder, manifest.get("schema"), manifest.get("closed"), manifest.get("task_lm"),
                    schema.name, closed, lm_model)
        return None
    return load_program(folder, schema, closed)


def load_instructions(
    path: str | Path, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True
) -> Teacher:
    """A `Teacher` for any `schema` with the instructions of the program saved in `path`.

    Instructions name no schema (the relation inventory sits in a field description), so an optimized wording
    carries over to another schema; the saved demos and field descriptions, which name the original schema's
    types and predicates, do not. Use `load_program` to restore a program for the schema it was made for.
    """
    program_path = Path(path) / PROGRAM_FILE
    if not program_path.is_file():
        raise ProgramNotFoundError(f"{path} holds no saved program ({PROGRAM_FILE} expected)")
    state = json.loads(program_path.read_text())
    manifest_path = Path(path) / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    program = _unfitted(manifest, schema, closed)
    predictors = dict(program.named_predictors())
    if set(state) != set(predictors):
        raise SchemaMismatchError(
            f"the program saved in {path} has predictors {sorted(state)}, this teacher {sorted(predictors)}"
        )
    for name, predictor in predictors.items():
        predictor.signature = predictor.signature.with_instructions(state[name]["signature"]["instructions"])
    return program


def load_for_schema(
    path: str | Path, schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True
) -> Teacher:
    """The program saved in `path` when it was made for `schema`; for another schema, its instructions only."""
    try:
        return load_program(path, schema, closed)
    except SchemaMismatchError as exc:
        logger.warning("%s; using its instructions only", exc)
        return load_instructions(path, schema, closed)
