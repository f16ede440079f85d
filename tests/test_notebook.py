"""Dataset.ipynb stays runnable: execute its code cells in order (WikiText cell self-guards)."""

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "Dataset.ipynb"


def test_dataset_notebook_code_cells_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WIKITEXT103_DIR", str(tmp_path / "no-wikitext-here"))
    monkeypatch.chdir(tmp_path)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    assert len(code_cells) >= 4
    namespace: dict[str, object] = {}
    for index, source in enumerate(code_cells):
        # IPython-only lines (magics, shell escapes) would not run as plain Python.
        assert not any(
            line.lstrip().startswith(("%", "!")) for line in source.splitlines()
        ), f"cell {index} uses IPython syntax"
        exec(
            compile(source, f"Dataset.ipynb[cell {index}]", "exec"), namespace
        )  # pylint: disable=exec-used
    assert "data" in namespace  # the embedded corpus was loaded by the walkthrough
    assert os.path.isdir(tmp_path / "cache")
