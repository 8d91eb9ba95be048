"""The distilled LoRA student as a backend: one constrained llama.cpp call per chunk -> `Graph`.

The student runs as the merged, quantized GGUF `hotmem distill` exports. A shipped student is only its small LoRA GGUF
and the name of its base GGUF: the first use on a machine folds one into the other (about 30 s) and caches the result,
because llama.cpp decodes about twice as slowly with a LoRA applied at run time. It runs in process through the same
llama.cpp engine as the teacher (grammar-constrained, prefix KV cache: the fixed system prompt is processed once).
Its raw output goes through the shared graph assembly, so every backend cleans graphs the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from hotmem.errors import StudentNotFoundError
from hotmem.llama.engine import LlamaCppEngine
from hotmem.llama.gguf import MERGED_QUANTIZATION, merge_lora_gguf
from hotmem.llama.models import cache_dir, model_path
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.shipped import shipped_root
from hotmem.students.format import (
    STUDENT_SYSTEM_PROMPT,
    forced_continuation,
    lines_grammar,
    parse_student_output,
    schema_prompt,
    student_json_schema,
    student_messages,
)
from hotmem.types import Graph, Turn

__all__ = ["STUDENT_FILE", "Student", "shipped_student_dir"]

logger = logging.getLogger(__name__)

STUDENT_FILE = "student.json"


def shipped_student_dir() -> Path | None:
    """A trained student shipped in `optimized/student` (installed as `hotmem.optimized`), if any."""
    candidate = shipped_root() / "student"
    return candidate if (candidate / STUDENT_FILE).is_file() else None


def reads_schema(folder: Path) -> bool:
    """Whether a student was trained to read the schema from its prompt (`student.json`: `"prompt": "schema"`), and so
    serves any closed schema; otherwise it knows the one it was trained on only."""
    return json.loads((folder / STUDENT_FILE).read_text()).get("prompt") == "schema"


def trained_schema_fingerprint(folder: Path) -> str:
    """The fingerprint of the schema a student was trained on (`student.json`; students exported before it was
    recorded were all trained on the conversation schema)."""
    spec = json.loads((folder / STUDENT_FILE).read_text())
    return spec.get("schema_fingerprint") or CONVERSATION_SCHEMA.fingerprint()


def merged_student_gguf(base_gguf: Path, lora_gguf: Path) -> Path:
    """The LoRA folded into its base GGUF, built once per machine and cached under `cache_dir()/students`."""
    digest = hashlib.sha256(lora_gguf.read_bytes())
    digest.update(f"{base_gguf.name}:{base_gguf.stat().st_size}".encode())
    target = cache_dir() / "students" / f"{base_gguf.stem}-{digest.hexdigest()[:16]}-{MERGED_QUANTIZATION}.gguf"
    if not target.is_file():
        logger.info("preparing the student once for this machine (about 30 s): folding %s into %s",
                    lora_gguf.name, base_gguf.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        merge_lora_gguf(base_gguf, lora_gguf, target, progress=True)
        logger.debug("cached the merged student at %s", target)
    return target


class Student:
    """The exported student (`hotmem distill`'s output folder) as a backend: turns -> Graph."""

    name = "student"

    def __init__(self, path: str | Path | None = None, *, schema: RelationSchema = CONVERSATION_SCHEMA,
                 closed: bool = True, max_tokens: int = 384, n_threads: int | None = None, merge: bool = True,
                 jump_forward: bool = True):
        """`merge`: fold a LoRA-only student into its base once (cached) rather than apply the LoRA at every step.
        `jump_forward`: feed the text a `lines` answer's grammar forces (the rest of a type or predicate, separators)
        in one batch rather than decode it token by token (a quarter fewer decoding steps on gold test)."""
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
            raise StudentNotFoundError(
                f"{folder}: the student has no GGUF to run on llama.cpp (its base has no GGUF hotmem can write it "
                f"under): convert {folder / spec.get('merged', 'merged')} with llama.cpp's convert_hf_to_gguf.py "
                "and name the file in student.json as merged_gguf"
            )
        self.schema, self.closed, self.max_tokens = schema, closed, max_tokens
        # a schema-reading student gets this schema's inventory; a fixed-prompt one its own prompt
        self.reads_schema = spec.get("prompt") == "schema"
        self.answer_format = spec.get("answer_format", "json")  # students exported before it was recorded: json
        self.system_prompt = (schema_prompt(schema, answer_format=self.answer_format) if self.reads_schema
                              else spec.get("system_prompt", STUDENT_SYSTEM_PROMPT))
        self.folder = folder
        # the schema's inventory can run to ~1,500 tokens (PersonaExt's 108 predicates) before the conversation
        # One fixed prefix (the system prompt): llama.cpp's context keeps it between calls, and a RAM prefix cache
        # would only copy the state after every call.
        self.engine = LlamaCppEngine(model, n_ctx=4096 if self.reads_schema else 2048, n_threads=n_threads,
                                     lora_path=lora, kv_cache_bytes=0)
        self.model = f"student:{folder.name}"
        if self.answer_format == "lines":
            self._constraint = {"line_grammar": lines_grammar(schema, closed)}
            if jump_forward:
                self._constraint["continuation"] = partial(forced_continuation, schema=schema, closed=closed)
        else:
            self._constraint = {"schema": student_json_schema(schema, closed)}

    def usage(self) -> dict[str, int]:
        """LM calls and tokens so far (the engine's own counters: the student runs without DSPy)."""
        return {k: int(v) for k, v in self.engine.stats.items() if k != "seconds"}

    def __call__(self, turns: Sequence[Turn]) -> Graph:
        messages = student_messages(turns, self.system_prompt)
        result = self.engine.chat(messages, max_tokens=self.max_tokens, **self._constraint)
        return parse_student_output(result["choices"][0]["message"]["content"] or "", turns, self.schema,
                                    self.closed, self.answer_format)
