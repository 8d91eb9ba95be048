"""The embedded engine: a GGUF in process through llama-cpp-python, as a DSPy engine (`dspy.LM("local/...")`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
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
    supported_params = ("response_format", "max_tokens", "temperature", "stop", "top_p", "seed", "logprobs",
                        "top_logprobs")

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
        self._chat_formatter = None
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
             continuation: Callable[[str], str] | None = None, logprobs: int | None = None,
             **sampling: Any) -> dict[str, Any]:
        """One chat completion (llama-cpp-python's result dict); `schema` constrains the answer to it, or
        `line_grammar` (GBNF) to an answer of one item a line.

        `logprobs` (greedy only): each answer token's log-probability under the model, before the grammar, with the
        `logprobs` likeliest tokens at that step (OpenAI's `logprobs.content` entries, in the choice). llama-cpp-python
        only gives them for a model made with `logits_all` (a logits row per context token: 5 GB for Qwen at 8k).

        `continuation` (greedy, checked `line_grammar` only): the text the grammar forces after an answer so far
        (`forced_continuation`). It is fed to the model in one batch with the token before it instead of being
        decoded a token at a time ("jump-forward" decoding): fewer decoding steps for the same text. What follows it
        can differ where the model was near a tie, as a batch's floating-point sums differ from a single step's.

        llama.cpp contexts are not thread-safe: calls are serialised. A prompt that does not fit the context raises
        `ContextTooLongError`.
        """
        if continuation is not None and line_grammar is not None and temperature == 0.0 and self.check_grammar_first:
            processors = self.constraint.line_kwargs(line_grammar, 0.0)["logits_processor"]
            return self._timed(lambda: self._greedy(messages, max_tokens, processors, continuation))
        if logprobs is not None and temperature == 0.0 and (schema is not None or not json_mode):
            processors = self.constraint.greedy_processors(schema=schema, gbnf=line_grammar)
            return self._timed(lambda: self._greedy(messages, max_tokens, processors, continuation, logprobs))
        # llama.cpp's default repeat penalty corrupts repeated JSON keys.
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature, "repeat_penalty": 1.0,
                                  **{k: v for k, v in sampling.items() if v is not None}}
        if schema is not None:
            kwargs.update(self.constraint.kwargs(schema, temperature))
        elif line_grammar is not None:
            kwargs.update(self.constraint.line_kwargs(line_grammar, temperature))
        elif json_mode:
            kwargs["response_format"] = {"type": "json_object"}

        def complete() -> dict[str, Any]:
            try:
                return self.llama.create_chat_completion(messages, **kwargs)
            except ValueError as exc:  # llama.cpp's word for a prompt longer than the context window
                raise ContextTooLongError(str(exc)) from exc

        return self._timed(complete)

    def _timed(self, complete: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        started = time.perf_counter()
        with self._lock:
            result = complete()
        usage = result.get("usage", {})
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
        self.stats["output_tokens"] += usage.get("completion_tokens", 0)
        self.stats["seconds"] += time.perf_counter() - started
        return result

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat as the model reads it: the GGUF's own chat template, tokenized as llama-cpp-python's chat
        completion tokenizes it."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self.llama
        if self._chat_formatter is None:
            template = llama.metadata.get("tokenizer.chat_template")
            if template is None or self.chat_format is not None:
                raise ModelNotAvailableError(f"{self.model}: no chat template of its own in the GGUF")
            special = {name: llama.detokenize([token], special=True).decode("utf-8", "ignore") if token >= 0 else ""
                       for name, token in (("eos_token", llama.token_eos()), ("bos_token", llama.token_bos()))}
            self._chat_formatter = Jinja2ChatFormatter(template=template, **special)
        formatted = self._chat_formatter(messages=messages)
        return llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)

    def _greedy(self, messages, max_tokens: int, processors, continuation: Callable[[str], str] | None,
                logprobs: int | None = None) -> dict[str, Any]:
        """Greedy decoding whose forced text (`continuation`) goes to the model with the token before it, in one
        batch: a batch of k tokens costs well under k steps on CPU (weights are read once). With `logprobs`, the
        log-probabilities of each decoded token (forced tokens have none: they were never chosen)."""
        import llama_cpp
        import numpy as np

        llama = self.llama
        prompt = self.prompt_tokens(messages)
        if len(prompt) >= self.n_ctx:
            raise ContextTooLongError(f"the prompt has {len(prompt)} tokens; the context window holds {self.n_ctx}")
        # the context keeps the KV of the prompt before: evaluate only what differs (the fixed system prompt stays)
        held, reused = llama.input_ids[: llama.n_tokens], 0
        while reused < min(len(held), len(prompt) - 1) and held[reused] == prompt[reused]:
            reused += 1
        llama.n_tokens = reused  # `eval` drops the KV from here on
        llama.eval(prompt[reused:])
        vocab, n_vocab = llama._model.vocab, llama.n_vocab()
        answer: list[int] = []
        token_logprobs: list[dict[str, Any]] = []
        steps, finish = 0, "length"
        while len(answer) < max_tokens and llama.n_tokens < self.n_ctx:
            scores = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,))
            model_scores = scores.copy() if logprobs is not None else None
            sequence = llama.input_ids[: llama.n_tokens]
            for processor in processors:
                scores = processor(sequence, scores)
            token = int(np.argmax(scores))
            steps += 1
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            if model_scores is not None:
                token_logprobs.append(self._token_logprobs(model_scores, token, logprobs))
            fed = [token]
            text = llama.detokenize(answer + fed).decode("utf-8", "ignore")
            forced = continuation(text) if continuation is not None else ""
            if forced:
                # as the tokenizer splits the whole answer (as in training), when that keeps the tokens so far
                whole = llama.tokenize((text + forced).encode("utf-8"), add_bos=False, special=False)
                tail = (whole[len(answer) + 1 :] if whole[: len(answer) + 1] == answer + fed
                        else llama.tokenize(forced.encode("utf-8"), add_bos=False, special=False))
                fed += tail[: max(0, min(max_tokens - len(answer), self.n_ctx - llama.n_tokens) - 1)]
            answer += fed
            llama.eval(fed)
        content = llama.detokenize(answer).decode("utf-8", "ignore")
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = {"content": token_logprobs}
        return {"choices": [choice],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(answer),
                          "total_tokens": len(prompt) + len(answer), "decoding_steps": steps}}

    def _token_logprobs(self, scores, token: int, top: int) -> dict[str, Any]:
        """One decoded token as an OpenAI `logprobs.content` entry: its log-probability (a log-softmax of the
        model's logits) and the `top` likeliest tokens."""
        import numpy as np

        logprobs = scores - (scores.max() + np.log(np.exp(scores - scores.max()).sum()))
        top = min(top, len(logprobs))
        likeliest = np.argpartition(-logprobs, top - 1)[:top] if top else np.empty(0, dtype=int)
        likeliest = likeliest[np.argsort(-logprobs[likeliest])]

        def text(t: int) -> str:
            return self.llama.detokenize([int(t)]).decode("utf-8", "ignore")

        return {"token": text(token), "logprob": float(logprobs[token]), "token_id": token,
                "top_logprobs": [{"token": text(t), "logprob": float(logprobs[t]), "token_id": int(t)}
                                 for t in likeliest]}

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
                logprobs=config.logprobs,
            )
        except ContextTooLongError as exc:
            raise lm15.ContextLengthError(str(exc)) from exc
        usage = result.get("usage", {})
        choice = result["choices"][0]
        scored = (choice.get("logprobs") or {}).get("content")
        return lm15.Response(
            id=result.get("id"),
            model=request.model,
            message=lm15.Message.assistant(choice["message"]["content"] or ""),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=lm15.Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")),
            logprobs=None if scored is None else tuple(
                lm15.TokenLogprob(token=entry["token"], logprob=entry["logprob"], token_id=entry["token_id"],
                                  top=tuple(lm15.TopLogprob(token=alt["token"], logprob=alt["logprob"],
                                                            token_id=alt["token_id"])
                                            for alt in entry["top_logprobs"]))
                for entry in scored),
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
