"""Stage 6: the distilled student as a backend: one constrained llama.cpp call per utterance -> `Graph`.

The student runs as the merged, quantized GGUF `hotmem distill` exports. A shipped student is only its small LoRA GGUF
and the name of its base GGUF: the first use on a machine folds one into the other (about 30 s) and caches the result,
because llama.cpp decodes about twice as slowly with a LoRA applied at run time. It runs in process through the same
llama.cpp engine as the teacher (grammar-constrained, prefix KV cache: the fixed system prompt is processed once).
Its raw output goes through the teacher's graph assembly, so both backends clean and score graphs the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from dspy import lm15

from hotmem.distill import (
    MERGED_QUANTIZATION,
    STUDENT_SYSTEM_PROMPT,
    merge_lora_gguf,
    student_json_schema,
    student_messages,
)
from hotmem.lm import LlamaCppEngine, cache_dir, model_path
from hotmem.schema import CONVERSATION_SCHEMA, Graph, HotmemError, RelationSchema, Turn, render_turns, speakers_of
from hotmem.signatures import ExtractedEntity, ExtractedRelation
from hotmem.teacher import assemble_graph

logger = logging.getLogger(__name__)

STUDENT_FILE = "student.json"


class StudentNotFoundError(HotmemError, FileNotFoundError):
    """No exported student where one was asked for."""


def shipped_student_dir() -> Path | None:
    """A trained student shipped in `optimized/student` (installed as `hotmem.optimized`), if any."""
    from hotmem.optimize import shipped_root

    candidate = shipped_root() / "student"
    return candidate if (candidate / STUDENT_FILE).is_file() else None


def merged_student_gguf(base_gguf: Path, lora_gguf: Path) -> Path:
    """The LoRA folded into its base GGUF, built once per machine and cached under `cache_dir()/students`."""
    digest = hashlib.sha256(lora_gguf.read_bytes())
    digest.update(f"{base_gguf.name}:{base_gguf.stat().st_size}".encode())
    target = cache_dir() / "students" / f"{base_gguf.stem}-{digest.hexdigest()[:16]}-{MERGED_QUANTIZATION}.gguf"
    if not target.is_file():
        logger.info("folding %s into %s once for full-speed decoding: %s", lora_gguf.name, base_gguf.name, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        merge_lora_gguf(base_gguf, lora_gguf, target)
    return target


def parse_student_output(text: str, turns: Sequence[Turn], schema: RelationSchema, closed: bool = True) -> Graph:
    """The compact `{"e": [[name, TYPE]], "r": [[s, p, o]]}` answer as a clean `Graph`."""
    data = json.loads(text)
    entities = [ExtractedEntity(name=name, type=type_) for name, type_ in data.get("e", [])]
    relations = [ExtractedRelation(subject=s, predicate=p, object=o) for s, p, o in data.get("r", [])]
    return assemble_graph(entities, relations, text=render_turns(turns), speakers=speakers_of(turns), schema=schema,
                          closed=closed)


class Student:
    """The exported student (`hotmem distill`'s output folder) as a callable: turns -> Graph."""

    def __init__(self, path: str | Path | None = None, *, schema: RelationSchema = CONVERSATION_SCHEMA,
                 closed: bool = True, max_tokens: int = 384, n_threads: int | None = None, merge: bool = True):
        """`merge`: fold a LoRA-only student into its base once (cached) rather than apply the LoRA at every step."""
        folder = Path(path) if path else shipped_student_dir()
        if folder is None or not (folder / STUDENT_FILE).is_file():
            raise StudentNotFoundError(
                f"no exported student at {folder or 'optimized/student'} ({STUDENT_FILE} expected): "
                "train one with `hotmem distill`"
            )
        spec = json.loads((folder / STUDENT_FILE).read_text())
        # File names are relative to the folder, so a student can be moved or shipped.
        if spec.get("merged_gguf") and (folder / spec["merged_gguf"]).is_file():
            model, lora = str(folder / spec["merged_gguf"]), None  # one quantized GGUF: the fast path
        elif "base_gguf" in spec:
            # base_gguf: an embedded model's name (resolved on this machine) or a GGUF path
            base, lora_gguf = model_path(spec["base_gguf"]), folder / spec["lora_gguf"]
            if merge:
                model, lora = str(merged_student_gguf(base, lora_gguf)), None
            else:
                model, lora = str(base), str(lora_gguf)
        else:
            raise StudentNotFoundError(f"{folder}: the student has no GGUF to run on llama.cpp")
        self.schema, self.closed, self.max_tokens = schema, closed, max_tokens
        self.system_prompt = spec.get("system_prompt", STUDENT_SYSTEM_PROMPT)
        self.engine = LlamaCppEngine(model, n_ctx=2048, n_threads=n_threads, lora_path=lora)
        self._schema = student_json_schema(schema, closed)

    def __call__(self, turns: Sequence[Turn]) -> Graph:
        _, user = student_messages(turns)
        request = lm15.Request(
            model="local/student",
            system=self.system_prompt,
            messages=(lm15.Message.user(user["content"]),),
            config=lm15.Config(max_tokens=self.max_tokens, temperature=0.0,
                               response_format={"type": "json_schema", "schema": self._schema}),
        )
        response = self.engine.complete(request)
        return parse_student_output(response.text, turns, self.schema, self.closed)
