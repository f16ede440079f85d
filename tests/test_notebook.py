"""Dataset.ipynb stays runnable: execute its code cells in order (WikiText cell self-guards)."""

import os
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
from matplotlib import pyplot
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

NOTEBOOK = Path(__file__).resolve().parent.parent / "Dataset.ipynb"


def test_dataset_notebook_code_cells_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WIKITEXT103_DIR", str(tmp_path / "no-wikitext-here"))
    monkeypatch.chdir(tmp_path)
    # No display here: the picture cell's pyplot figure is drawn with the non-interactive
    # backend (in Jupyter it is ipykernel's inline backend).
    matplotlib.use("Agg")
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
    check_frequency_picture(namespace)


def check_frequency_picture(namespace: dict[str, object]) -> None:
    """The picture cell drew one bar per vocabulary character, most common first, log scale."""
    figure = namespace["frequency_figure"]
    assert isinstance(figure, Figure)
    try:
        (axes,) = figure.axes
        bars = [patch for patch in axes.patches if isinstance(patch, Rectangle)]
        heights = np.array([patch.get_height() for patch in bars])
        vocab_size = namespace["data"].vocab.size  # type: ignore[attr-defined]
        assert axes.get_yscale() == "log" and len(heights) == vocab_size
        assert np.all(np.diff(heights) <= 0) and abs(heights.sum() - 1) < 1e-9
        assert [t.get_text() for t in axes.get_xticklabels()][0] == "␣"  # space is commonest
    finally:
        pyplot.close(figure)
