"""The embedded engine: a GGUF in process through llama-cpp-python, as a DSPy engine (`dspy.LM("local/...")`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from hotmem.errors import ExtractionError, ModelNotAvailableError
from hotmem.llama.constrain import DEFAULT_MAX_ITEMS, JsonConstraint
from hotmem.llama.models import DEFAULT_MODEL, model_path

__all__ = ["LlamaCppEngine", "embedded_engine", "prefix_cache"]

logger = logging.getLogger(__name__)


class ContextTooLongError(ExtractionError):
    """The prompt does not fit the model's context window."""


def prefix_cache(capacity_bytes: int):
    """llama-cpp-python's RAM prompt cache, made to hold what it counts.

    Each saved state carries a copy of the whole logits buffer (n_batch x vocabulary floats: 311 MB for Qwen) that
    the cache does not count against its capacity, so it grew to 16 GB in an evaluation. Those logits are only read
    for logprobs, which hotmem never asks for: keep one row (it broadcasts back on load) and count every byte. The
    copy itself is made before the cache sees the state: the engine avoids it with `shrink_logits_buffer`; this trim
    is for a `Llama` hotmem did not make (`bench/serve.py`'s server model, which keeps `logits_all`).
    """
    from llama_cpp import LlamaRAMCache

    class PrefixCache(LlamaRAMCache):
        @property
        def cache_size(self) -> int:
            return sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes for s in self.cache_state.values())

        def __setitem__(self, key, state) -> None:
            state.scores = state.scores[-1:].copy()
            super().__setitem__(key, state)

    return PrefixCache(capacity_bytes=capacity_bytes)


def shrink_logits_buffer(llama) -> None:
    """Give a `Llama` made without `logits_all` a one-row logits buffer.

    llama-cpp-python allocates `n_batch` x vocabulary floats (311 MB for Qwen) that only `logits_all` writes (for
    logprobs, which hotmem never asks for), yet `save_state` copies its first `n_tokens` rows into every state the
    prefix cache keeps: on this machine ~2 s a call, most of it faulting in the fresh copy's pages.
    """
    import numpy as np

    llama.scores = np.zeros((1, llama.n_vocab()), dtype=np.single)


def _text_of(parts) -> str:
    return "".join(getattr(p, "text", "") or "" for p in parts)


class LlamaCppEngine:
    """A DSPy engine (`complete(Request) -> Response`) running a GGUF in process through llama-cpp-python.

    - `response_format` JSON schemas become llama.cpp grammars, so outputs always parse. Greedy decoding checks the
      grammar against the preferred token first (`CheckedGrammar`): the same output at the model's free speed.
    - A repeated list item ends its list (small models otherwise repeat items until `maxItems`).
    - The KV state of earlier prompts is kept in a RAM cache keyed by token prefix: a predictor's long fixed prefix
      (instructions, schema) is processed once, later calls only pay for the new tokens. `kv_cache_bytes=0` keeps no
      such cache: a caller with one fixed prefix (the student) has it reused by the context itself, and a state saved
      after every call would buy nothing.
    - llama.cpp contexts are not thread-safe: calls are serialised with a lock.
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = ("response_format", "max_tokens", "temperature", "stop", "top_p", "seed")

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        kv_cache_bytes: int = 1 << 30,
        max_items: int = DEFAULT_MAX_ITEMS,
        chat_format: str | None = None,
        close_repeated_items: bool = True,
        check_grammar_first: bool = True,
        lora_path: str | None = None,
    ):
        self.model = model
        self.lora_path = lora_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.kv_cache_bytes = kv_cache_bytes
        self.max_items = max_items
        self.chat_format = chat_format
        self.close_repeated_items = close_repeated_items
        self.check_grammar_first = check_grammar_first
        self._llama = None
        self._constraint: JsonConstraint | None = None
        self._lock = threading.Lock()
        self.stats = {"calls": 0, "prompt_tokens": 0, "output_tokens": 0, "seconds": 0.0}

    # DSPy saves an LM with its engine through these two.
    def dump_state(self) -> dict[str, Any]:
        return {"model": self.model, "n_ctx": self.n_ctx, "max_items": self.max_items, "lora_path": self.lora_path}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LlamaCppEngine:
        return cls(**state)

    @property
    def llama(self):
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ModelNotAvailableError(
                    "the embedded backend needs llama-cpp-python: pip install 'hotmem[local]'"
                ) from exc
            path = model_path(self.model)
            started = time.perf_counter()
            self._llama = Llama(
                str(path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_batch=512,
                chat_format=self.chat_format,
                lora_path=self.lora_path,
                verbose=logger.isEnabledFor(logging.DEBUG),  # llama.cpp's own log only with `hotmem -v`
            )
            shrink_logits_buffer(self._llama)
            if self.kv_cache_bytes:
                self._llama.set_cache(prefix_cache(self.kv_cache_bytes))
            logger.debug("loaded %s in %.1fs", path.name, time.perf_counter() - started)
        return self._llama

    @property
    def constraint(self) -> JsonConstraint:
        if self._constraint is None:
            self._constraint = JsonConstraint(self.llama, max_items=self.max_items,
                                              close_repeated_items=self.close_repeated_items,
                                              check_grammar_first=self.check_grammar_first)
        return self._constraint

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 1024, temperature: float = 0.0,
             schema: dict | None = None, line_grammar: str | None = None, json_mode: bool = False,
             **sampling: Any) -> dict[str, Any]:
        """One chat completion (llama-cpp-python's result dict); `schema` constrains the answer to it, or
        `line_grammar` (GBNF) to an answer of one item a line.

        llama.cpp contexts are not thread-safe: calls are serialised. A prompt that does not fit the context raises
        `ContextTooLongError`.
        """
        # llama.cpp's default repeat penalty corrupts repeated JSON keys.
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "repeat_penalty": 1.0,
                                  **{k: v for k, v in sampling.items() if v is not None}}
        if schema is not None:
            kwargs.update(self.constraint.kwargs(schema, temperature))
        elif line_grammar is not None:
            kwargs.update(self.constraint.line_kwargs(line_grammar, temperature))
        elif json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        started = time.perf_counter()
        with self._lock:
            try:
                result = self.llama.create_chat_completion(messages, **kwargs)
            except ValueError as exc:  # llama.cpp's word for a prompt longer than the context window
                raise ContextTooLongError(str(exc)) from exc
        usage = result.get("usage", {})
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
        self.stats["output_tokens"] += usage.get("completion_tokens", 0)
        self.stats["seconds"] += time.perf_counter() - started
        return result

    def complete(self, request):
        """DSPy's engine interface (`dspy.LM("local/...", engine=...)`): `lm15.Request` in, `lm15.Response` out."""
        from dspy import lm15

        config = request.config
        messages = []
        if request.system:
            system = request.system if isinstance(request.system, str) else _text_of(request.system)
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": _text_of(m.parts)} for m in request.messages]
        fmt = config.response_format or {}
        try:
            result = self.chat(
                messages, max_tokens=config.max_tokens or 1024,
                temperature=0.0 if config.temperature is None else config.temperature,
                schema=fmt.get("schema") if fmt.get("type") == "json_schema" else None, json_mode=bool(fmt),
                stop=list(config.stop) if config.stop else None, top_p=config.top_p, seed=config.seed,
            )
        except ContextTooLongError as exc:
            raise lm15.ContextLengthError(str(exc)) from exc
        usage = result.get("usage", {})
        choice = result["choices"][0]
        return lm15.Response(
            id=result.get("id"),
            model=request.model,
            message=lm15.Message.assistant(choice["message"]["content"] or ""),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=lm15.Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")),
        )


# --------------------------------------------------------------------------- one engine per model

_engines: dict[str, LlamaCppEngine] = {}
_engines_lock = threading.Lock()


def embedded_engine(model: str = DEFAULT_MODEL, **engine_kwargs: Any) -> LlamaCppEngine:
    """One shared engine per embedded model: the weights are loaded once per process."""
    key = f"{model}|{sorted(engine_kwargs.items())}"
    with _engines_lock:
        if key not in _engines:
            _engines[key] = LlamaCppEngine(model, **engine_kwargs)
        return _engines[key]
