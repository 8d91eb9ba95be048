"""`GraphExtractor()(text)`: a typed graph from the best backend available, with no setup."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotmem.assemble import chunk_turns, merge_graphs
from hotmem.backends import Backend, resolve_backend
from hotmem.errors import ExtractionError, HotmemError, InvalidInputError
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Graph, Turn, as_turns, speakers_of

if TYPE_CHECKING:
    import dspy

__all__ = ["DEFAULT_MAX_CHARS", "GraphExtractor"]

logger = logging.getLogger(__name__)

#: Longest input accepted by default (about 30 chunks). Longer text is refused rather than silently slow.
DEFAULT_MAX_CHARS = 20_000


class GraphExtractor:
    """Extract a knowledge graph from an utterance or a conversation.

    >>> extractor = GraphExtractor()                      # the best default backend, built-in schema
    >>> graph = extractor("I moved to Lisbon with my wife Carla.")
    >>> graph = extractor([("Anna", "My brother lives in Oslo."), ("Ben", "Does he like it?")])

    `lm` is anything `hotmem.configure` takes (a LiteLLM model string, `"embedded"`, a GGUF path, a `dspy.LM`) and
    runs the teacher on it. `backend`: `"auto"` (see `hotmem.backends` for the order), `"teacher"`, `"student"`
    (the distilled student shipped in `optimized/`), a folder exported by `hotmem distill`, or any `Backend`.
    `closed=False` lets predicates outside the schema through (snake_case). Input longer than `max_chars` is refused;
    long input is chunked by turn and sentence and the chunk graphs merged.
    """

    def __init__(
        self,
        lm: Any = None,
        *,
        schema: RelationSchema = CONVERSATION_SCHEMA,
        closed: bool = True,
        program: dspy.Module | str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        backend: Backend | str | Path = "auto",
    ):
        if not isinstance(max_chars, int) or max_chars < 1:
            raise InvalidInputError(f"max_chars must be a positive integer, got {max_chars!r}")
        self.schema = schema
        self.closed = closed
        self.max_chars = max_chars
        self.backend: Backend = resolve_backend(backend, lm=lm, schema=schema, closed=closed, program=program)
        logger.debug("GraphExtractor runs the %s on %s", self.backend.name, self.backend.model)

    def __call__(self, text: str | Sequence[Turn | dict | tuple[str, str]], speaker: str | None = None) -> Graph:
        return self.batch([text], speaker=speaker)[0]

    def batch(self, texts: Sequence[str | Sequence[Turn | dict | tuple[str, str]]],
              speaker: str | None = None) -> list[Graph]:
        """Graphs for many inputs (utterances or conversations), in order. A backend with `extract_many` (the
        encoder student) takes all their chunks in one call; each graph is the one its input gets alone."""
        if isinstance(texts, str):
            raise InvalidInputError("batch() takes a list of inputs; pass one string to the extractor itself")
        chunked = [chunk_turns(turns) if turns else [] for turns in map(self._turns, texts, [speaker] * len(texts))]
        chunks = [chunk for chunks in chunked for chunk in chunks]
        try:
            many = getattr(self.backend, "extract_many", None)
            graphs = iter(many(chunks) if many is not None and chunks else [self.backend(c) for c in chunks])
        except HotmemError:
            raise
        except Exception as exc:  # any model or parse failure, from any backend, is one error type
            raise ExtractionError(f"the {self.backend.name} ({self.backend.model}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        out = []
        for text, chunks in zip(texts, chunked):
            parts = [next(graphs) for _ in chunks]
            if len(parts) > 1:
                out.append(merge_graphs(parts, speakers_of([t for c in chunks for t in c])))
            else:
                out.append(parts[0] if parts else Graph())
        return out

    def _turns(self, text: str | Sequence[Turn | dict | tuple[str, str]], speaker: str | None) -> list[Turn]:
        turns = [t for t in as_turns(text, speaker=speaker) if t.text.strip()]
        total = sum(len(t.text) for t in turns)
        if total > self.max_chars:
            raise InvalidInputError(
                f"input is {total:,} characters; this extractor takes at most {self.max_chars:,}. "
                "Pass max_chars= to GraphExtractor for longer input, or extract turn by turn."
            )
        return turns

    def usage(self) -> dict[str, int]:
        """LM calls and tokens the backend has answered so far."""
        return self.backend.usage()
