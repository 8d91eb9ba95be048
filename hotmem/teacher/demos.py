"""Retrieved demonstrations: the entities and relations steps see the annotated examples nearest to each input.

A pool of annotated examples (conversation, the statements the later steps read, entities, relations) is searched
with DSPy's `KNN` retriever over sentence embeddings (`hotmem.embedding`, MiniLM offline, or any `embed` function);
the k nearest become per-call demos after the predictor's own. The pool, its vectors and k are saved beside a saved
program (`hotmem.teacher.saved`) and load with it, so a query costs one embedding, not the pool's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
import numpy as np
from dspy.predict.knn import KNN

from hotmem.embedding import MINILM, minilm_embedder
from hotmem.errors import InvalidInputError, ProgramNotFoundError
from hotmem.io import write_atomic

__all__ = ["DemoRetriever"]

logger = logging.getLogger(__name__)

POOL_FILE, VECTORS_FILE = "demo_pool.jsonl", "demo_pool.npy"
FIELDS = ("conversation", "statements", "entities", "relations")


def _key(conversation: str) -> str:
    return f"conversation: {conversation}"  # how DSPy's KNN writes an example's inputs and a query


class _KnownVectors:
    """An embed function that answers the pool's own texts from saved vectors and embeds only what is new (the
    embedding model loads at the first new text: loading a saved pool costs no model)."""

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray] | None, known: dict[str, np.ndarray]):
        self.embed, self.known = embed, known
        self.remember = True  # the pool's texts while the retriever is built; queries are not kept

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.known]
        new: dict[str, np.ndarray] = {}
        if missing:
            if self.embed is None:
                self.embed = minilm_embedder()
            new = dict(zip(missing, self.embed(missing)))
            if self.remember:
                self.known.update(new)
        return np.stack([self.known[t] if t in self.known else new[t] for t in texts])


class DemoRetriever:
    """The `k` pool examples nearest to a conversation, as demos for the entities and relations steps."""

    def __init__(self, pool: Sequence[dict[str, Any]], k: int | dict[str, int] = 4,
                 embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                 vectors: np.ndarray | None = None, embedder: str = MINILM, page: int = 0):
        """`pool`: dicts with `conversation`, `statements` (list of str), `entities` ({name, type} dicts),
        `relations` ({subject, predicate, object} dicts) and optionally `source`. `k`: how many to retrieve, or
        how many from each source (`{"gold": 3, "personaext-conversation": 1}`: a small careful source is not
        crowded out by a large sparse one). `embed`: texts -> vectors (default: MiniLM); `vectors`: the pool's, as
        `vectors()` returned them (skips embedding the pool); `embedder`: its name, recorded. `page`: which k to
        show, 0 the nearest, 1 the next k (of each source), and so on: labels that differ by their demonstrations
        (`with_page`)."""
        quota = dict(k) if isinstance(k, dict) else {None: k}
        if not quota or min(quota.values()) < 1:
            raise InvalidInputError(f"k must be at least 1 (per source), not {k}")
        if isinstance(page, bool) or not isinstance(page, int) or page < 0:
            raise InvalidInputError(f"page is a whole number from 0, not {page!r}")
        if not pool:
            raise InvalidInputError("the demonstration pool is empty")
        for item in pool:
            if missing := [f for f in FIELDS if f not in item]:
                raise InvalidInputError(f"a pool example lacks {missing}: {str(item)[:120]}")
        self.pool, self.k, self.embedder, self.page = [dict(item) for item in pool], k, embedder, page
        texts = [_key(item["conversation"]) for item in self.pool]
        if vectors is not None and len(vectors) != len(texts):
            raise InvalidInputError(f"{len(vectors)} vectors for a pool of {len(texts)}")
        self._embed = _KnownVectors(embed, dict(zip(texts, vectors)) if vectors is not None else {})
        vectorizer = dspy.Embedder(self._embed, caching=False)
        self._knn: list[tuple[int, KNN]] = []
        for source, count in quota.items():
            trainset = [dspy.Example(**item).with_inputs("conversation") for item in self.pool
                        if source is None or item.get("source") == source]
            if not trainset:
                raise InvalidInputError(f"the pool holds no example from {source!r}")
            # one more than k: an input that is itself in the pool (GEPA's train set) is not its own demo
            wanted = count * (page + 1) + 1
            self._knn.append((count, KNN(min(wanted, len(trainset)), trainset, vectorizer=vectorizer)))
        self._embed.remember = False

    def __deepcopy__(self, memo: dict) -> DemoRetriever:
        return self  # read-only after construction; programs are deep-copied by optimizers, the model need not be

    def nearest(self, conversation: str) -> list[dict[str, Any]]:
        """The pool examples nearest to `conversation` (itself excluded), nearest first within each source; with a
        `page`, the k that many rounds further out."""
        nearest = []
        for count, knn in self._knn:
            found = [example for example in knn(conversation=conversation) if example.conversation != conversation]
            page = found[count * self.page:count * (self.page + 1)]
            nearest += [{f: example[f] for f in FIELDS} for example in page]
        return nearest

    def __call__(self, conversation: str) -> dict[str, list[dspy.Example]]:
        """Demos per step in the reverse order of `nearest`: its first example (the first source's nearest) comes
        last, closest to the question in the prompt."""
        from hotmem.teacher.program import step_demos

        demos = [step_demos(e["statements"], e["entities"], e["relations"])
                 for e in reversed(self.nearest(conversation))]
        return {step: [demo[step] for demo in demos] for step in ("entities", "relations")}

    def with_page(self, page: int) -> DemoRetriever:
        """This pool and k, showing another page of neighbours (`page`); the pool's vectors are reused."""
        return DemoRetriever(self.pool, self.k, self._embed.embed, self.vectors(), self.embedder, page=page)

    def vectors(self) -> np.ndarray:
        return self._embed([_key(item["conversation"]) for item in self.pool])

    # saving ---------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        paged = {"page": self.page} if self.page else {}  # page 0 saves as before
        return {"k": self.k, "pool": len(self.pool), "embedder": self.embedder, **paged}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        write_atomic(folder / POOL_FILE, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in self.pool))
        tmp = folder / f".{VECTORS_FILE}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, self.vectors().astype(np.float32))
        tmp.replace(folder / VECTORS_FILE)

    @classmethod
    def load(cls, folder: str | Path, settings: dict[str, Any],
             embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> DemoRetriever:
        folder = Path(folder)
        if not (folder / POOL_FILE).is_file() or not (folder / VECTORS_FILE).is_file():
            raise ProgramNotFoundError(f"{folder} names a demonstration pool but lacks {POOL_FILE} or {VECTORS_FILE}")
        pool = [json.loads(line) for line in (folder / POOL_FILE).read_text().splitlines() if line.strip()]
        if settings.get("embedder", MINILM) != MINILM and embed is None:
            raise InvalidInputError(f"the pool in {folder} was embedded by {settings['embedder']!r}: pass its embed")
        k = settings["k"]
        return cls(pool, {s: int(n) for s, n in k.items()} if isinstance(k, dict) else int(k), embed,
                   np.load(folder / VECTORS_FILE), settings.get("embedder", MINILM), page=int(settings.get("page", 0)))
