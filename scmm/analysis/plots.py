"""The scale figure: log2 RMS of every recorded tensor against number-format ranges.

Four panels, top to bottom: forward outputs, backward (gradients received by each layer's
output, then ``loss/logits``) and weight gradients, each with the tensors in model order on the
x axis; then, for the backward gradients, the fraction of each tensor's values that float16,
E4M3 and E5M2 flush to zero or hold as subnormals (and, as crosses, the fraction that
overflows) -- where a format loses the gradient. In the first three, the y axis is log2 of
the RMS (sqrt(mean(x^2)), which, unlike the standard deviation, includes the mean and so is
what decides whether values fit a format); ``statistic="std"`` plots log2 of the standard
deviation instead. A small tick ("_") above each point marks
log2(max |x|).

Each format's range is a horizontal band from its smallest *normal* value to its largest finite
value (full precision there), with a dotted line at its smallest subnormal (below that every
value flushes to zero). bfloat16's band (2^-126 .. 2^128) covers the whole visible axis.

Every step present in ``records`` is drawn as its own line (later steps darker), so a file that
accumulated several steps shows how the scales move during training; pass ``steps=[...]`` to
draw only some. ``compare`` (e.g. the unit-scaled twin of a baseline) is drawn in the same axes
in another colour, with square markers and dashed lines, aligned on the tensor names.
Drawn on an Agg canvas directly (no pyplot, no display, the global backend is untouched).
"""

import math
from typing import Any, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..io import atomic_open
from .scales import FORMATS, LOSS_GRADIENT_NAME, ScaleRecord, format_range

PANELS = (
    ("forward", "forward: layer outputs"),
    ("backward", "backward: d loss / d layer output"),
    ("weight_gradient", "weight gradients: d loss / d w"),
)
FORMAT_COLOURS = {
    "float16": "tab:green",
    "bfloat16": "tab:gray",
    "float8_e4m3fn": "tab:red",
    "float8_e5m2": "tab:purple",
}
SERIES_COLOURMAPS = ("Blues", "Oranges")
SERIES_MARKERS = ("o", "s")
SERIES_LINESTYLES = ("-", "--")
# Axis always shows at least float16's subnormal..max range, so FP8 and FP16 bands are visible.
MIN_VISIBLE_LOG2 = (-26.0, 18.0)


def _merge_names(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """Ordered union: ``first``'s order, each name only in ``second`` placed after its
    predecessor there (or at the start)."""
    merged = list(first)
    present = set(merged)
    previous: Optional[str] = None
    for name in second:
        if name not in present:
            position = merged.index(previous) + 1 if previous is not None else 0
            merged.insert(position, name)
            present.add(name)
        previous = name
    return merged


def _log2(value: float) -> float:
    return math.log2(value) if value > 0 and math.isfinite(value) else float("nan")


def _series_steps(records: Sequence[ScaleRecord], steps: Optional[Sequence[int]]) -> list[int]:
    present = sorted({r.step for r in records})
    return present if steps is None else [s for s in present if s in set(steps)]


def _draw_format_bands(ax: Axes) -> None:
    for fmt in FORMATS:
        rng = format_range(fmt)
        colour = FORMAT_COLOURS[fmt]
        low, high = math.log2(rng.smallest_normal), math.log2(rng.max_finite)
        ax.axhspan(low, high, color=colour, alpha=0.07, lw=0)
        for y in (low, high):
            ax.axhline(y, color=colour, lw=0.8, alpha=0.8)
        ax.axhline(math.log2(rng.smallest_subnormal), color=colour, lw=0.8, ls=":", alpha=0.9)


FORMAT_SHORT = {
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float8_e4m3fn": "FP8 E4M3",
    "float8_e5m2": "FP8 E5M2",
}
RULER_SPACING = 0.8


def _draw_format_ruler(ax: Axes, start: float) -> list[float]:
    """One vertical bar per format right of the data (normal range solid, subnormal range
    hatched), so overlapping bands stay attributable; returns the bars' x positions."""
    positions = []
    for k, fmt in enumerate(FORMATS):
        rng = format_range(fmt)
        colour = FORMAT_COLOURS[fmt]
        x = start + k * RULER_SPACING
        low, high = math.log2(rng.smallest_normal), math.log2(rng.max_finite)
        sub = math.log2(rng.smallest_subnormal)
        ax.add_patch(
            Rectangle((x - 0.25, low), 0.5, high - low, facecolor=colour, alpha=0.55, lw=0)
        )
        ax.add_patch(
            Rectangle(
                (x - 0.25, sub),
                0.5,
                low - sub,
                facecolor="none",
                edgecolor=colour,
                hatch="////",
                lw=0.6,
                alpha=0.8,
            )
        )
        positions.append(x)
    return positions


def _format_legend_handles() -> list[Patch]:
    handles = []
    for fmt in FORMATS:
        rng = format_range(fmt)
        label = (
            f"{fmt}: normal 2^{math.log2(rng.smallest_normal):.0f}"
            f"..2^{math.log2(rng.max_finite):.1f},"
            f" subnormal 2^{math.log2(rng.smallest_subnormal):.0f}"
        )
        handles.append(
            Patch(
                facecolor=FORMAT_COLOURS[fmt],
                edgecolor=FORMAT_COLOURS[fmt],
                alpha=0.35,
                label=label,
            )
        )
    return handles


Series = tuple[list[ScaleRecord], str]  # (records, legend label)


def _panel_names(series: Sequence[Series], pass_: str) -> list[str]:
    names: list[str] = []
    for recs, _ in series:
        names = _merge_names(names, list(dict.fromkeys(r.name for r in recs if r.pass_ == pass_)))
    return names


def _draw_series(  # pylint: disable=too-many-arguments,too-many-locals
    ax: Axes,
    names: Sequence[str],
    series: Sequence[Series],
    pass_: str,
    statistic: str,
    steps: Optional[Sequence[int]],
) -> tuple[list[Line2D], list[float]]:
    """One line per (series, step); returns the lines and every finite y value drawn."""
    lines: list[Line2D] = []
    values: list[float] = []
    xs = np.arange(len(names), dtype=float)
    for index, (recs, label) in enumerate(series):
        step_list = _series_steps(recs, steps)
        colours = matplotlib.colormaps[SERIES_COLOURMAPS[index]](
            np.linspace(0.45, 0.95, max(len(step_list), 1))
        )
        offset = 0.12 * (index - (len(series) - 1) / 2)  # side by side, not on top
        for colour, step in zip(colours, step_list):
            chosen = {r.name: r for r in recs if r.pass_ == pass_ and r.step == step}
            # Only this series' own tensors: its line runs on across names only the other has.
            present = [i for i, n in enumerate(names) if n in chosen]
            ys = [_log2(getattr(chosen[names[i]], statistic)) for i in present]
            tops = [_log2(chosen[names[i]].abs_max) for i in present]
            line = ax.plot(
                xs[present] + offset,
                ys,
                marker=SERIES_MARKERS[index],
                ls=SERIES_LINESTYLES[index],
                color=colour,
                ms=4,
                lw=1.1,
                label=f"{label}, step {step}",
            )[0]
            ax.plot(xs[present] + offset, tops, ls="none", marker="_", color=colour, ms=6, mew=1.2)
            lines.append(line)
            values.extend(v for v in [*ys, *tops] if math.isfinite(v))
    return lines, values


def _decorate_panel(ax: Axes, names: Sequence[str], title: str, statistic: str) -> None:
    ruler = _draw_format_ruler(ax, len(names) + 0.6)
    ax.set_xticks([*range(len(names)), *ruler])
    ax.set_xticklabels([*names, *FORMAT_SHORT.values()], rotation=90, fontsize=6.5)
    for tick in ax.get_xticklabels()[len(names) :]:
        tick.set_fontweight("bold")
    ax.set_xlim(-0.7, ruler[-1] + 0.5)
    ax.axvline(len(names) - 0.1, color="black", lw=0.5)
    ax.set_ylabel(f"log2({'RMS' if statistic == 'rms' else 'std'})")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    if LOSS_GRADIENT_NAME in names:
        ax.axvline(list(names).index(LOSS_GRADIENT_NAME) - 0.5, color="black", lw=0.6, ls="--")


LOST_FORMATS = ("float16", "float8_e4m3fn", "float8_e5m2")


def _lost_fraction(record: ScaleRecord, fmt: str) -> float:
    """Fraction of a tensor's values that a format flushes to zero or holds as subnormals.

    For a tensor already computed in ``fmt`` (e.g. a float16 model's gradients), its exact
    zeros count as flushed (true zeros, e.g. behind a ReLU, are included: compare models)."""
    subnormal = record.formats.get(f"subnormal_{fmt}", 0.0)
    if record.dtype == fmt:
        return record.zero_fraction + (1 - record.zero_fraction) * subnormal
    return (1 - record.zero_fraction) * (record.formats.get(f"underflow_{fmt}", 0.0) + subnormal)


def _draw_lost_panel(ax: Axes, names: Sequence[str], series: Sequence[Series]) -> None:
    """Backward gradients: fraction flushed or subnormal per format; overflow as crosses."""
    xs = np.arange(len(names), dtype=float)
    for index, (recs, label) in enumerate(series):
        last = max((r.step for r in recs), default=0)
        chosen = {r.name: r for r in recs if r.pass_ == "backward" and r.step == last}
        present = [i for i, n in enumerate(names) if n in chosen]
        for fmt in LOST_FORMATS:
            lost = [_lost_fraction(chosen[names[i]], fmt) for i in present]
            ax.plot(
                xs[present],
                lost,
                color=FORMAT_COLOURS[fmt],
                ls=SERIES_LINESTYLES[index],
                marker=SERIES_MARKERS[index],
                ms=3,
                lw=1.0,
                label=f"{label}: {FORMAT_SHORT[fmt]} zero/subnormal",
            )
            over = [(i, chosen[names[i]].formats.get(f"overflow_{fmt}", 0.0)) for i in present]
            over = [(i, v) for i, v in over if v > 0]
            if over:
                ax.plot(
                    [xs[i] for i, _ in over],
                    [v for _, v in over],
                    ls="none",
                    marker="x",
                    color=FORMAT_COLOURS[fmt],
                    ms=6,
                )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6.5)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of values")
    ax.set_title(
        "backward: gradients flushed to zero or subnormal per format (x: overflow), last step",
        fontsize=10,
        loc="left",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6.5, ncol=3, loc="upper left")


def plot_scales(  # pylint: disable=too-many-locals,too-many-arguments
    records: Sequence[ScaleRecord],
    path: str,
    title: str = "Tensor scales",
    compare: Optional[Sequence[ScaleRecord]] = None,
    *,
    labels: tuple[str, str] = ("model", "compare"),
    statistic: str = "rms",
    steps: Optional[Sequence[int]] = None,
    dpi: int = 110,
) -> str:
    """Write the scale figure (see the module docstring) as a PNG to ``path``; returns ``path``.

    ``labels`` names ``records`` and ``compare`` in the legend; ``statistic`` is ``"rms"`` or
    ``"std"``; ``steps`` restricts the steps drawn (default: all present).
    """
    if statistic not in ("rms", "std"):
        raise ValueError(f"statistic must be rms|std, got {statistic!r}")
    series: list[Series] = [(list(records), labels[0])]
    if compare is not None:
        series.append((list(compare), labels[1]))
    names_per_panel = [_panel_names(series, pass_) for pass_, _ in PANELS]

    widest = max((len(n) for n in names_per_panel), default=1)
    width = min(max(10.0, 0.17 * widest + 4.0), 40.0)
    fig = Figure(figsize=(width, 19.0))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    axes = fig.subplots(len(PANELS) + 1, 1, squeeze=False)
    _draw_lost_panel(axes[-1, 0], names_per_panel[1], series)
    axes = axes[:-1]
    all_y: list[float] = []
    legend_handles: list[Any] = []
    for (pass_, panel_title), names, ax in zip(PANELS, names_per_panel, axes[:, 0]):
        _draw_format_bands(ax)
        lines, values = _draw_series(ax, names, series, pass_, statistic, steps)
        _decorate_panel(ax, names, panel_title, statistic)
        all_y.extend(values)
        if len(lines) > len(legend_handles):  # lines of the panel that has the most
            legend_handles = list(lines)

    low = min([MIN_VISIBLE_LOG2[0], *all_y]) - 1.0
    high = max([MIN_VISIBLE_LOG2[1], *all_y]) + 1.0
    for ax in axes[:, 0]:
        ax.set_ylim(low, high)

    legend_handles.append(
        Line2D([], [], ls="none", marker="_", color="black", ms=8, label="max |x|")
    )
    legend_handles.extend(_format_legend_handles())
    fig.suptitle(title, fontsize=12, y=0.997, va="top")
    fig.legend(
        handles=legend_handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.982),
        ncol=3,
        fontsize=7.5,
        frameon=False,
    )
    legend_rows = math.ceil(len(legend_handles) / 3)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.975 - 0.0115 * legend_rows))
    # Atomically: the run's scales.png is redrawn at every validation, and a kill mid-write
    # must leave the previous figure, not a truncated PNG.
    with atomic_open(path, "wb") as file:
        fig.savefig(file, format="png", dpi=dpi)
    return path
