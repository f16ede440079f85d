"""The per-run training-curve figure (``scmm.analysis.curves``): what it draws and the PNG."""

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D

from scmm.analysis import draw_training_curves, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def several_steps() -> list[dict[str, Any]]:
    """A log as a run writes it: settings, train chunks, validations, a final eval."""
    records: list[dict[str, Any]] = [{"kind": "settings", "step": 0, "settings": {}}]
    for step in (16, 32, 48, 64):
        lr = 0.01 * 0.5 ** (step // 32)
        records.append(
            {"kind": "train_step", "step": step, "bpc": 8.0 - step / 16, "learning_rate": lr}
        )
        if step % 32 == 0:
            records.append({"kind": "eval_valid", "step": step, "bpc": 7.5 - step / 32})
    records.append({"kind": "eval_test", "step": 64, "bpc": 1.0})  # not a curve
    return records


def lines_by_label(records: list[dict[str, Any]]) -> dict[str, Line2D]:
    fig = draw_training_curves(records, "run")
    bpc_axes, lr_axes = fig.axes
    assert bpc_axes.get_xlabel() == "step" and lr_axes.get_ylabel() == "learning rate"
    found = {str(line.get_label()): line for line in [*bpc_axes.lines, *lr_axes.lines]}
    assert set(found) == {"train BPC (chunk mean)", "validation BPC", "learning rate"}
    assert found["learning rate"] in lr_axes.lines  # the second y axis
    return found


def xy(line: Line2D) -> tuple[list[float], list[float]]:
    return list(np.asarray(line.get_xdata(), float)), list(np.asarray(line.get_ydata(), float))


def test_the_figure_draws_train_and_valid_bpc_and_the_learning_rate(tmp_path: Path) -> None:
    lines = lines_by_label(several_steps())
    assert xy(lines["train BPC (chunk mean)"]) == ([16, 32, 48, 64], [7.0, 6.0, 5.0, 4.0])
    assert xy(lines["validation BPC"]) == ([32, 64], [6.5, 5.5])
    assert xy(lines["learning rate"]) == ([16, 32, 48, 64], [0.01, 0.005, 0.005, 0.0025])
    # From the log file, as the runner calls it: a PNG beside the log.
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in several_steps()), encoding="utf-8")
    written = plot_training_curves(log, tmp_path / "training_curves.png", title="run")
    assert Path(written).read_bytes()[:8] == PNG_SIGNATURE


def test_a_single_record_is_drawn_with_a_marker_and_bad_values_are_skipped(
    tmp_path: Path,
) -> None:
    records = [
        {"kind": "train_step", "step": 1, "bpc": 6.25, "learning_rate": 0.001},
        {"kind": "train_step", "step": 2, "bpc": None, "learning_rate": 0.001},  # diverged
    ]
    lines = lines_by_label(records)
    train = lines["train BPC (chunk mean)"]
    assert xy(train) == ([1], [6.25]) and train.get_marker() not in ("None", "", " ", None)
    assert xy(lines["validation BPC"]) == ([], [])
    path = plot_training_curves(records, tmp_path / "one.png")
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    empty = plot_training_curves([], tmp_path / "empty.png")  # a run with no records yet
    assert Path(empty).read_bytes()[:8] == PNG_SIGNATURE


def test_the_learning_rate_axis_starts_at_zero() -> None:
    _, lr_axes = draw_training_curves(several_steps()).axes
    low, high = lr_axes.get_ylim()
    assert low == 0.0 and 0.01 < high < 0.02
