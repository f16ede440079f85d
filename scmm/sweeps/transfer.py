"""Learning-rate transfer along one axis of a sweep (its ``transfer_axis``, e.g. width):
``transfer.md`` and ``transfer.png``, the muTransfer check (Yang et al. 2022; u-muP, Blake et
al. 2024).

Every number is validation BPC, the median over repeats at one learning rate (the criterion of
the LR search and of ``results.summarise``). A *panel* is one combination of the other axes'
labels (e.g. ``scheme=umup``); its *curves* are the transfer axis's values in the order the
definition lists them, "first" and "last" being the first and last that the panel has (the
narrowest and the widest model of a width axis listed upward). Per panel:

- each curve's best log2 learning rate and BPC, and whether the best is *interior* (the curve
  ran a lower and a higher rate too): at an edge the grid is too narrow to place the optimum;
- the *shift*: the last curve's best log2 LR minus the first's, in grid steps (the smallest
  spacing between the panel's learning rates, log2 of the factor on a grid), and the *span*:
  the largest minus the smallest best log2 LR over all the curves, in grid steps;
- the *gap*: the last curve's BPC at the first curve's best learning rate minus its own best,
  what reusing the first's rate unchanged costs the last (0 when the optimum did not move; inf
  when the last diverged there; n/a when it did not run that rate).

Then, at the last value of the axis, every panel's best BPC side by side (u-muP against the
standard parametrisation at the widest width), and each panel's full grid of BPC. The figure
has a panel per panel and a curve per value: validation BPC against log2 learning rate.
"""

import dataclasses
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import atomic_open
from .results import ConfigResult

MARKDOWN_NAME = "transfer.md"
FIGURE_NAME = "transfer.png"

# The figure's y axis reaches at most this far (BPC) above the lowest point drawn: a diverging
# edge of the grid (BPC 4 and more at a character level) would otherwise flatten the optima.
# Points above it are drawn at the top as "^", diverged ones as "x".
_FIGURE_RANGE = 1.0
_CLOSE = 1e-9


@dataclasses.dataclass
class Curve:
    """One value of the transfer axis within a panel: a configuration's scored points."""

    value: str
    """Its label on the transfer axis (e.g. "256")."""
    result: ConfigResult

    def points(self) -> list[tuple[float, float]]:
        """(log2 learning rate, median validation BPC) of every scored point, by rate."""
        rates = self.result.learning_rates
        return sorted((math.log2(rates[k]), score) for k, score in self.result.scores.items())

    @property
    def best_log2(self) -> Optional[float]:
        """log2 of the best learning rate (None when every point diverged)."""
        rate = self.result.best_learning_rate
        return None if rate is None else math.log2(rate)

    @property
    def best_bpc(self) -> float:
        """Median validation BPC at the best learning rate (nan without one)."""
        return self.result.valid_median

    @property
    def interior(self) -> bool:
        """Whether a lower and a higher rate than the best were run (and scored)."""
        best = self.best_log2
        if best is None:
            return False
        rates = [x for x, _ in self.points()]
        return min(rates) < best - _CLOSE and max(rates) > best + _CLOSE

    def bpc_at(self, log2_rate: float) -> Optional[float]:
        """The BPC at ``log2_rate`` (inf: diverged there), or None when it was not run."""
        for x, score in self.points():
            if abs(x - log2_rate) < _CLOSE:
                return score
        return None


@dataclasses.dataclass
class Panel:
    """The curves sharing the other axes' labels, in transfer-axis order."""

    labels: dict[str, str]
    curves: list[Curve]

    @property
    def name(self) -> str:
        """``axis=label, ...`` of the other axes ("all" when there are none)."""
        return ", ".join(f"{a}={v}" for a, v in self.labels.items()) or "all"

    @property
    def step_log2(self) -> float:
        """The grid step in log2 units: the smallest spacing of the panel's learning rates
        (nan with fewer than two distinct rates)."""
        rates = sorted({round(x, 9) for curve in self.curves for x, _ in curve.points()})
        gaps = [b - a for a, b in zip(rates, rates[1:])]
        return min(gaps) if gaps else math.nan

    def _steps(self, delta: Optional[float]) -> float:
        step = self.step_log2
        return math.nan if delta is None or not math.isfinite(step) else delta / step

    @property
    def shift_steps(self) -> float:
        """Last curve's best log2 LR minus the first's, in grid steps (nan: n/a)."""
        first, last = self.curves[0].best_log2, self.curves[-1].best_log2
        return self._steps(None if first is None or last is None else last - first)

    @property
    def span_steps(self) -> float:
        """Largest minus smallest best log2 LR over the curves, in grid steps (nan: n/a)."""
        bests = [c.best_log2 for c in self.curves if c.best_log2 is not None]
        return self._steps(max(bests) - min(bests) if bests else None)

    @property
    def gap(self) -> float:
        """Last curve's BPC at the first's best LR minus its own best (inf: it diverged
        there; nan: not run there, or no finite best)."""
        first, last = self.curves[0], self.curves[-1]
        if first.best_log2 is None or not math.isfinite(last.best_bpc):
            return math.nan
        there = last.bpc_at(first.best_log2)
        return math.nan if there is None else there - last.best_bpc


def transfer_panels(
    summary: Sequence[ConfigResult], axis: str, order: Mapping[str, Sequence[str]]
) -> list[Panel]:
    """The panels of ``summary`` (``results.summarise``) along ``axis``; ``order`` gives each
    axis's labels in the definition's order (``definition.axis_labels``)."""
    others = [a for a in order if a != axis]

    def rank(name: str, label: str) -> tuple[int, str]:
        labels = list(order.get(name, ()))
        return (labels.index(label), "") if label in labels else (len(labels), label)

    groups: dict[tuple[str, ...], list[ConfigResult]] = {}
    for result in summary:
        if axis in result.labels:
            key = tuple(result.labels.get(a, "") for a in others)
            groups.setdefault(key, []).append(result)
    panels = []
    for key in sorted(groups, key=lambda k: [rank(a, v) for a, v in zip(others, k)]):
        results = sorted(groups[key], key=lambda r: rank(axis, r.labels[axis]))
        curves = [Curve(value=r.labels[axis], result=r) for r in results]
        panels.append(Panel(labels=dict(zip(others, key)), curves=curves))
    return panels


def _bpc(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "diverged" if math.isinf(value) else f"{value:.3f}"


def _log2(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+g}"


def _steps(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{round(value):+d}" if abs(value - round(value)) < 1e-6 else f"{value:+.2f}"


def transfer_markdown(panels: Sequence[Panel], axis: str, title: str) -> str:
    """``transfer.md``: best LR per value, shift, gap, the last value across panels, grids."""
    lines = [f"# {title}: learning-rate transfer along {axis}", ""]
    if not panels:
        return "\n".join([*lines, "No finished trials yet.", ""])
    others = list(panels[0].labels)
    lines += [
        "Validation BPC, the median over repeats at one learning rate; a curve's best is its"
        " lowest. Interior: a lower and a higher rate were run too (at an edge the optimum may"
        " lie outside the grid).",
        "",
        "| " + " | ".join([*others, axis, "best log2 LR", "best valid BPC", "interior"]) + " |",
        "|" + "---|" * (len(others) + 4),
    ]
    for panel in panels:
        for curve in panel.curves:
            cells = [*panel.labels.values(), curve.value, _log2(curve.best_log2)]
            cells += [_bpc(curve.best_bpc), "yes" if curve.interior else "**no**"]
            lines.append("| " + " | ".join(cells) + " |")
    first, last = panels[0].curves[0].value, panels[0].curves[-1].value
    lines += [
        "",
        f"## From {axis}={first} to {axis}={last}",
        "",
        f"Shift: {axis}={last}'s best log2 LR minus {axis}={first}'s, in grid steps (the"
        " smallest spacing of the panel's rates, log2 units in brackets); span: the largest"
        f" minus the smallest best over every {axis}. Gap: {axis}={last}'s BPC at"
        f" {axis}={first}'s best LR minus its own best.",
        "",
        "| "
        + " | ".join([*others, "grid step (log2)", "shift (steps)", "span (steps)", "gap (BPC)"])
        + " |",
        "|" + "---|" * (len(others) + 4),
    ]
    for panel in panels:
        ends = panel.curves[0].best_log2, panel.curves[-1].best_log2
        shift = _steps(panel.shift_steps)
        if None not in ends:
            shift += f" ({_log2(ends[0])} → {_log2(ends[1])})"
        gap = panel.gap
        gap_text = "diverged" if math.isinf(gap) else "n/a" if math.isnan(gap) else f"{gap:+.3f}"
        step = panel.step_log2
        cells = [*panel.labels.values(), f"{step:g}" if math.isfinite(step) else "n/a"]
        cells += [shift, _steps(panel.span_steps), gap_text]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_last_value_lines(panels, axis), "", *_grid_lines(panels, axis)]
    return "\n".join(lines) + "\n"


def _last_value_lines(panels: Sequence[Panel], axis: str) -> list[str]:
    """Every panel's best at the last value of the axis (the panels' own last, if it differs)."""
    entries = []
    for panel in panels:
        curve = panel.curves[-1]
        entries.append((curve.best_bpc, panel.name, curve))
    finite = [e for e in entries if math.isfinite(e[0])]
    best = min(finite, key=lambda e: e[0]) if finite else None
    parts = [
        f"{name} ({axis}={curve.value}): {_bpc(value)} at log2 LR {_log2(curve.best_log2)}"
        for value, name, curve in entries
    ]
    text = f"At the last {axis}, best validation BPC: " + "; ".join(parts) + "."
    if best is not None and len(entries) > 1:
        text += f" Lowest: {best[1]}."
    return [text]


def _grid_lines(panels: Sequence[Panel], axis: str) -> list[str]:
    """Each panel's validation BPC at every learning rate (a row per value, best in bold)."""
    lines = ["## Every learning rate", ""]
    for panel in panels:
        rates = sorted({round(x, 9) for curve in panel.curves for x, _ in curve.points()})
        lines += [f"{panel.name}: validation BPC by log2 learning rate.", ""]
        lines.append("| " + " | ".join([axis, *(f"{x:+g}" for x in rates)]) + " |")
        lines.append("|" + "---|" * (len(rates) + 1))
        for curve in panel.curves:
            cells = [curve.value]
            for x in rates:
                score = curve.bpc_at(x)
                text = "" if score is None else _bpc(score)
                best = curve.best_log2
                if best is not None and abs(best - x) < _CLOSE:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _draw_curve(ax: Axes, curve: Curve, colour: Any, name: str, ceiling: float) -> None:
    """One curve: its points (those above ``ceiling`` at the top), its best as a star."""
    points = curve.points()
    label = f"{name} (best 2^{_log2(curve.best_log2)})"
    ax.plot(
        [x for x, _ in points],
        [min(y, ceiling) for _, y in points],
        marker="o",
        markersize=4,
        color=colour,
        label=label,
    )
    for x, y in points:
        if y > ceiling:
            ax.scatter(x, ceiling, marker="x" if math.isinf(y) else "^", color=colour)
    if curve.best_log2 is not None:
        ax.scatter(
            curve.best_log2, curve.best_bpc, marker="*", s=170, color=colour,
            edgecolors="black", linewidths=0.6, zorder=3,
        )  # fmt: skip


def transfer_figure(panels: Sequence[Panel], axis: str, title: str) -> Figure:
    """Validation BPC against log2 LR: a subplot per panel (shared y axis), a curve per value
    of ``axis`` (lighter to darker in axis order), its best as a star."""
    count = max(1, len(panels))
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(5.5 * columns, 4.4 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    finite = [y for p in panels for c in p.curves for _, y in c.points() if math.isfinite(y)] or [
        0.0,
        1.0,
    ]
    low = min(finite)
    top = min(max(finite), low + _FIGURE_RANGE)
    margin = max(0.02, 0.04 * (top - low))
    ceiling = top + margin
    most = max((len(p.curves) for p in panels), default=1)
    colours = colormaps["viridis"](np.linspace(0.85, 0.1, most)) if most > 1 else ["tab:blue"]
    for number, panel in enumerate(panels):
        ax = grid[number // columns][number % columns]
        for colour, curve in zip(colours, panel.curves):
            _draw_curve(ax, curve, colour, f"{axis}={curve.value}", ceiling)
        ax.set_title(panel.name)
        ax.set_xlabel("log2 learning rate")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if number % columns == 0:
            ax.set_ylabel("validation BPC")
        ax.set_ylim(low - margin, ceiling + margin)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not panels:
        grid[0][0].text(0.5, 0.5, "no finished trials yet", ha="center", va="center")
    for number in range(count, rows * columns):
        grid[number // columns][number % columns].set_visible(False)
    figure.suptitle(
        f"{title}\nvalidation BPC against log2 learning rate, a curve per {axis}\n"
        "star: best; ^ off the scale, x diverged (both drawn at the top)",
        fontsize=9,
    )
    return figure


def write_transfer(
    out_dir: str,
    summary: Sequence[ConfigResult],
    axis: str,
    order: Mapping[str, Sequence[str]],
    title: str,
) -> None:
    """``transfer.md`` and ``transfer.png`` in ``out_dir``."""
    panels = transfer_panels(summary, axis, order)
    with atomic_open(os.path.join(out_dir, MARKDOWN_NAME)) as file:
        file.write(transfer_markdown(panels, axis, title))
    figure = transfer_figure(panels, axis, title)
    with atomic_open(os.path.join(out_dir, FIGURE_NAME), "wb") as file:
        figure.savefig(file, format="png", dpi=110)
