"""A run's training curves: train and validation BPC against step, learning rate on a second
axis, drawn from its ``log.jsonl`` records.

Train BPC is each ``train_step`` record's ``bpc`` (the mean over the compiled chunk that ended
at that step) and validation BPC each ``eval_valid`` record's; the learning rate is the
``train_step`` records' ``learning_rate`` (the rate at the chunk's last step). Every point has
a marker, so a run with a single record still shows it. Drawn on an Agg canvas directly (no
pyplot, no display, the global backend is untouched) and written atomically, so a figure
redrawn over an older one is never seen half-written.
"""

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import PathLike, atomic_open, read_jsonl

Records = Sequence[Mapping[str, Any]]

TRAIN_COLOUR, VALID_COLOUR, LR_COLOUR = "tab:blue", "tab:orange", "tab:gray"


@dataclasses.dataclass
class Curve:
    """One series: steps and values in step order."""

    steps: list[int] = dataclasses.field(default_factory=list)
    values: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TrainingCurves:
    """The three series the figure draws."""

    train_bpc: Curve
    valid_bpc: Curve
    learning_rate: Curve


def _is_finite(value: Any) -> bool:
    # A diverged run's last records may hold non-finite metrics: they are not drawn.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _curve(records: Records, kind: str, metric: str) -> Curve:
    points = sorted(
        (int(r["step"]), float(r[metric]))
        for r in records
        if r.get("kind") == kind and _is_finite(r.get("step")) and _is_finite(r.get(metric))
    )
    return Curve([s for s, _ in points], [v for _, v in points])


def training_curves(records: Records) -> TrainingCurves:
    """The series of a run's log records (any order; records of other kinds are ignored)."""
    return TrainingCurves(
        train_bpc=_curve(records, "train_step", "bpc"),
        valid_bpc=_curve(records, "eval_valid", "bpc"),
        learning_rate=_curve(records, "train_step", "learning_rate"),
    )


def draw_training_curves(records: Records, title: str = "Training curves") -> Figure:
    """The figure: BPC axes (``fig.axes[0]``) and the learning-rate twin (``fig.axes[1]``)."""
    curves = training_curves(records)
    fig = Figure(figsize=(8.0, 4.5))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    bpc_axes = fig.subplots()
    lr_axes = bpc_axes.twinx()
    handles = [
        bpc_axes.plot(
            curves.train_bpc.steps,
            curves.train_bpc.values,
            color=TRAIN_COLOUR,
            marker="o",
            ms=3,
            lw=1.2,
            label="train BPC (chunk mean)",
        )[0],
        bpc_axes.plot(
            curves.valid_bpc.steps,
            curves.valid_bpc.values,
            color=VALID_COLOUR,
            marker="s",
            ms=5,
            lw=1.5,
            label="validation BPC",
        )[0],
        lr_axes.plot(
            curves.learning_rate.steps,
            curves.learning_rate.values,
            color=LR_COLOUR,
            marker=".",
            ls="--",
            lw=1.0,
            label="learning rate",
        )[0],
    ]
    bpc_axes.set_xlabel("step")
    bpc_axes.set_ylabel("bits per character")
    lr_axes.set_ylabel("learning rate", color=LR_COLOUR)
    lr_axes.tick_params(axis="y", colors=LR_COLOUR)
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if curves.learning_rate.values:
        # From zero: a constant rate reads as constant and a decay as the fraction left
        # (autoscaling would blow a constant rate's rounding noise up to the full height).
        lr_axes.set_ylim(0.0, 1.15 * max(*curves.learning_rate.values, 1e-30))
    bpc_axes.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    if not curves.train_bpc.steps and not curves.valid_bpc.steps:
        bpc_axes.text(
            0.5, 0.5, "no training records yet", ha="center", transform=bpc_axes.transAxes
        )
    # Above the axes: inside, the learning rate (drawn near the top) would run under it.
    bpc_axes.legend(
        handles=handles,
        fontsize=8,
        ncol=3,
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        frameon=False,
    )
    fig.tight_layout()
    return fig


def plot_training_curves(
    log: Union[PathLike, Records], path: PathLike, title: str = "Training curves", dpi: int = 110
) -> str:
    """Write the figure for ``log`` (a ``log.jsonl`` path or its records) as a PNG to ``path``
    (atomically); returns ``path`` as a string."""
    records = read_jsonl(log) if isinstance(log, (str, os.PathLike)) else log
    fig = draw_training_curves(records, title)
    with atomic_open(path, "wb") as file:
        fig.savefig(file, format="png", dpi=dpi)
    return str(path)
