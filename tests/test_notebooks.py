"""The notebooks run top to bottom (at a tiny scale, on SmolLM2-135M)."""

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


@needs_smollm
@pytest.mark.parametrize("name", ["01_optimize_teacher.ipynb"])
def test_notebook_runs(name, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    tiny = {"HOTMEM_NB_LM": "embedded/smollm2-135m", "HOTMEM_NB_REFLECTION_LM": "embedded/smollm2-135m",
            "HOTMEM_NB_BUDGET": "6", "HOTMEM_NB_TRAIN": "2", "HOTMEM_NB_VAL": "2", "HOTMEM_NB_TEST": "2",
            "MPLBACKEND": "Agg"}
    for key, value in tiny.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("validation score" in o.get("text", "") for o in outputs)
