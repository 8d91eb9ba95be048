"""`GraphExtractor()(text)`: a typed graph from the best backend available, with no setup."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import dspy

from hotmem.lm import default_lm, make_lm
from hotmem.optimize import shipped_teacher
from hotmem.schema import (
    CONVERSATION_SCHEMA,
    Graph,
    HotmemError,
    InvalidInputError,
    RelationSchema,
    Turn,
    as_turns,
    merge_graphs,
    speakers_of,
)
from hotmem.signatures import CompactJSONAdapter
from hotmem.student import Student, shipped_student_dir
from hotmem.teacher import Teacher

logger = logging.getLogger(__name__)

#: Longest input accepted by default (about 30 chunks). Longer text is refused rather than silently slow.
DEFAULT_MAX_CHARS = 20_000
#: Text per LM call: small enough for the 4k context with the prompt, large enough for a few turns.
CHUNK_CHARS = 1_200

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ExtractionError(HotmemError):
    """The model failed or its output could not be turned into a graph (after DSPy's own retries)."""


def chunk_turns(turns: Sequence[Turn], max_chars: int = CHUNK_CHARS) -> list[list[Turn]]:
    """Consecutive turns packed into chunks of at most `max_chars`; an over-long turn is split at sentences."""
    pieces: list[Turn] = []
    for turn in turns:
        if len(turn.text) <= max_chars:
            pieces.append(turn)
            continue
        buffer = ""
        for sentence in _SENTENCE_END.split(turn.text):
            while len(sentence) > max_chars:  # no sentence boundary: cut hard
                pieces.append(Turn(speaker=turn.speaker, text=sentence[:max_chars]))
                sentence = sentence[max_chars:]
            if buffer and len(buffer) + len(sentence) + 1 > max_chars:
                pieces.append(Turn(speaker=turn.speaker, text=buffer))
                buffer = ""
            buffer = f"{buffer} {sentence}".strip()
        if buffer:
            pieces.append(Turn(speaker=turn.speaker, text=buffer))
    chunks: list[list[Turn]] = []
    size = 0
    for piece in pieces:
        if chunks and size + len(piece.text) <= max_chars:
            chunks[-1].append(piece)
            size += len(piece.text)
        else:
            chunks.append([piece])
            size = len(piece.text)
    return chunks


def default_program(
    schema: RelationSchema = CONVERSATION_SCHEMA, closed: bool = True, lm: dspy.BaseLM | None = None
) -> dspy.Module:
    """The optimized teacher shipped in `optimized/` where it was made for this schema and for `lm` (default: the
    configured LM), else the unoptimized teacher."""
    shipped = shipped_teacher(schema, closed, getattr(lm or default_lm(), "model", None))
    return shipped if shipped is not None else Teacher(schema, closed=closed)


class GraphExtractor:
    """Extract a knowledge graph from an utterance or a conversation.

    >>> extractor = GraphExtractor()                      # embedded model, built-in schema
    >>> graph = extractor("I moved to Lisbon with my wife Carla.")
    >>> graph = extractor([("Anna", "My brother lives in Oslo."), ("Ben", "Does he like it?")])

    `lm` is anything `hotmem.configure` takes (a LiteLLM model string, `"embedded"`, a GGUF path, a `dspy.LM`);
    `None` uses hotmem's configured default. `closed=False` lets predicates outside the schema through (snake_case).

    `backend`: `"teacher"` (the DSPy program on `lm`), `"student"` (the distilled student shipped in `optimized/`,
    one llama.cpp call per chunk), a folder exported by `hotmem distill`, or `"auto"`: the shipped student when
    there is one and nothing asks for the teacher (an `lm`, a `program`, another schema, open extraction).
    """

    def __init__(
        self,
        lm: Any = None,
        *,
        schema: RelationSchema = CONVERSATION_SCHEMA,
        closed: bool = True,
        program: dspy.Module | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        backend: str = "auto",
    ):
        self.lm = make_lm(lm) if lm is not None else None
        self.schema = schema
        self.closed = closed
        self.max_chars = max_chars
        if backend == "auto":
            wants_teacher = (lm is not None or program is not None or not closed
                             or schema.fingerprint() != CONVERSATION_SCHEMA.fingerprint())
            backend = "student" if shipped_student_dir() and not wants_teacher else "teacher"
        self.backend = "teacher" if backend == "teacher" else "student"
        self.student = None if backend == "teacher" else Student(
            None if backend == "student" else backend, schema=schema, closed=closed
        )
        self.program = None
        if self.student is None:
            self.program = program or default_program(schema, closed, self.lm)

    def __call__(self, text: str | Sequence[Turn | dict | tuple[str, str]], speaker: str | None = None) -> Graph:
        turns = [t for t in as_turns(text, speaker=speaker) if t.text.strip()]
        if not turns:
            return Graph()
        total = sum(len(t.text) for t in turns)
        if total > self.max_chars:
            raise InvalidInputError(
                f"input is {total:,} characters; this extractor takes at most {self.max_chars:,}. "
                "Pass max_chars= to GraphExtractor for longer input, or extract turn by turn."
            )
        if self.student is not None:
            return self._student(turns)
        lm = self.lm or default_lm()
        speakers = speakers_of(turns)
        graphs = []
        with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
            for chunk in chunk_turns(turns):
                try:
                    graphs.append(self.program(turns=chunk).graph)
                except dspy.AdapterParseError as exc:
                    raise ExtractionError(f"the model's output could not be read as a graph: {exc}") from exc
                except dspy.LMError as exc:
                    raise ExtractionError(f"the model failed: {exc}") from exc
        return graphs[0] if len(graphs) == 1 else merge_graphs(graphs, speakers)

    def _student(self, turns: list[Turn]) -> Graph:
        graphs = []
        for chunk in chunk_turns(turns):
            try:
                graphs.append(self.student(chunk))
            except (ValueError, TypeError) as exc:  # JSON that does not fit the format (cut at max_tokens)
                raise ExtractionError(f"the student's output could not be read as a graph: {exc}") from exc
            except HotmemError:
                raise
            except Exception as exc:
                raise ExtractionError(f"the student failed: {exc}") from exc
        return graphs[0] if len(graphs) == 1 else merge_graphs(graphs, speakers_of(turns))
