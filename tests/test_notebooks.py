"""The notebooks run top to bottom (at a tiny scale, on SmolLM2-135M), as CI runs them."""

import importlib.util
from pathlib import Path

import pytest
from conftest import needs_smollm

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("nbclient", "nbformat", "ipykernel", "matplotlib")),
        reason="notebook tooling is not installed",
    ),
]


TINY = {
    "01_optimize_teacher.ipynb": (
        {"HOTMEM_NB_LM": "embedded/smollm2-135m", "HOTMEM_NB_REFLECTION_LM": "embedded/smollm2-135m",
         "HOTMEM_NB_BUDGET": "6", "HOTMEM_NB_TRAIN": "2", "HOTMEM_NB_VAL": "2", "HOTMEM_NB_TEST": "2",
         "HOTMEM_NB_RETRIEVE": "gold=1"},
        "validation score",
    ),
    # labels with the tiny model; trains 2 steps on the embedded 0.5B (dequantized) and runs it with its LoRA GGUF
    "02_distill_student.ipynb": (
        {"HOTMEM_NB_TEACHER_LM": "embedded/smollm2-135m", "HOTMEM_NB_N_LABEL": "4", "HOTMEM_NB_MAX_STEPS": "2",
         "HOTMEM_NB_N_TEST": "2"},
        "tokens/s",
    ),
    # ready graphs by default (the notebook says why): the memory, not the model, is what it shows
    "03_memory.ipynb": ({}, "now: ['Bergen']"),
}


@needs_smollm
@pytest.mark.parametrize("name", sorted(TINY))
def test_notebook_runs(name, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    if name.startswith("02") and importlib.util.find_spec("trl") is None:
        pytest.skip("the training extra is not installed")
    settings, expected = TINY[name]
    if name.startswith("02"):  # the shipped mixture's long examples take minutes a step on 2 cores: a few short ones
        tiny_mixture = tmp_path / "tiny-mixture.json"
        tiny_mixture.write_text('{"sources": [{"name": "gold", "limit": 4}], "whole_schema_rate": 0}')
        settings = {**settings, "HOTMEM_NB_MIXTURE": str(tiny_mixture)}
    for key, value in {**settings, "HOTMEM_NB_WORK": str(tmp_path / "work"), "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(expected in o.get("text", "") for o in outputs)
