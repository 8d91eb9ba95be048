"""Which language model hotmem runs on: `make_lm` builds one from what a user says, `configure` sets the default.

`hotmem.configure()` with no argument restores the defaults (the shipped student for the conversation schema, else
the teacher on the embedded Qwen2.5-Coder-0.5B). Any LiteLLM model string, an OpenAI-compatible `api_base`, a GGUF
path or a `dspy.BaseLM` goes through the same call. Precedence, everywhere (`GraphExtractor`, the CLI, the bench):
an explicit `lm=` / `--lm`, then `configure(...)`, then the `HOTMEM_LM` environment variable, then DSPy's own
configured LM; with none of them, hotmem's defaults (`hotmem.backends.resolve_backend`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import dspy

from hotmem.llama.engine import LlamaCppEngine, embedded_engine
from hotmem.llama.models import DEFAULT_MODEL, check_available

__all__ = ["configure", "configured_lm", "default_lm", "lm_usage", "make_lm"]

#: Environment variable naming the LM to use when none is passed or configured (anything `make_lm` takes).
LM_ENV = "HOTMEM_LM"
#: The teacher's LM for labelling: on gold dev (24) the 1.5B scored relation F1 0.182 against the 0.5B's 0.044, at
#: about twice the time per utterance; labels are made once, so quality wins there.
LABELLING_LM = "embedded/qwen2.5-coder-1.5b"


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
    spec = model or "embedded"
    local_name = None
    if spec == "embedded":
        local_name = DEFAULT_MODEL
    elif spec.startswith("embedded/"):
        local_name = spec.split("/", 1)[1]
    elif spec.endswith(".gguf"):
        local_name = spec
    if local_name is not None:
        if not local_name.endswith(".gguf"):
            check_available(local_name)  # a missing model stops here, not after a run of failed calls
        elif not os.path.isfile(local_name):
            from hotmem.errors import ModelNotAvailableError

            raise ModelNotAvailableError(f"no GGUF file at {local_name}")
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


_configured: dspy.BaseLM | None = None
_from_env: dict[str, dspy.BaseLM] = {}
_lock = threading.Lock()


def configure(model: str | dspy.BaseLM | None = None, **kwargs: Any) -> dspy.BaseLM | None:
    """Set the LM `GraphExtractor()` and the CLI use (returns it); `configure()` with no model restores the defaults.

    hotmem does not touch DSPy's global settings: programs run inside `dspy.context(lm=...)`.
    """
    global _configured
    _configured = make_lm(model, **kwargs) if model is not None or kwargs else None
    return _configured


def configured_lm() -> dspy.BaseLM | None:
    """The LM the user chose without passing one: `configure(...)`, else `HOTMEM_LM`, else DSPy's configured LM."""
    if _configured is not None:
        return _configured
    spec = os.environ.get(LM_ENV)
    if spec:
        with _lock:
            if spec not in _from_env:
                _from_env[spec] = make_lm(spec)
            return _from_env[spec]
    return dspy.settings.lm


def default_lm() -> dspy.BaseLM:
    """The configured LM (`configured_lm`), else the embedded default."""
    return configured_lm() or make_lm()


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

