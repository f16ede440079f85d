"""Coordinate-check maths: how each layer's output scale moves with width (model-agnostic).

A coordinate check (Yang et al., "Tensor Programs V"; MUP's ``coord_check``) trains the same
model at several widths for a few steps and records, per sublayer output, its RMS at step 0
and after each update. Under a width-stable parametrisation (muP, u-muP) every line of
log2 RMS against log2 width is flat; under the standard parametrisation with Adam, outputs
fed by a large update (the logits first) grow like width^1 after the first step.

This module only sees numbers: ``RunMeasurement`` (one width, one seed: per layer, per step,
the RMS and the RMS of the change since step 0), ``summarise`` (mean over seeds per width),
``fit_slope`` (least squares of log2 RMS on log2 width), ``judge`` (the verdict),
``check_to_dict`` / ``check_from_dict`` / ``write_check_json`` / ``load_check_json`` (the
JSON record), ``slope_table`` (the printed table) and ``plot_check`` (the PNG).
Building and training the models is ``scmm.coord_check``'s job (analysis knows no models).
"""

import dataclasses
import json
import math
import textwrap
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import PathLike, atomic_open, write_json

FORMAT = "scmm.coord_check/1"
"""``format`` field of coord_check.json (bumped if the layout changes)."""


@dataclasses.dataclass(frozen=True)
class RunMeasurement:
    """One model (one width, one seed): every layer's output RMS at steps 0..steps."""

    width: int
    seed: int
    layers: tuple[str, ...]
    rms: np.ndarray
    """(layers, steps + 1): RMS of the layer's output on the fixed batch after t updates."""
    change_rms: np.ndarray
    """(layers, steps + 1): RMS of (output after t updates - output at step 0); column 0 is 0."""

    def __post_init__(self) -> None:
        if (
            self.rms.ndim != 2
            or self.rms.shape[0] != len(self.layers)
            or self.change_rms.shape != self.rms.shape
        ):
            raise ValueError(
                f"width {self.width} seed {self.seed}: rms {self.rms.shape} and change_rms"
                f" {self.change_rms.shape} must both be (layers={len(self.layers)}, steps + 1)"
            )


@dataclasses.dataclass
class CoordinateCheck:
    """Means over seeds of every layer's RMS and change RMS, per step and width."""

    widths: list[int]
    seeds: int
    layers: list[str]
    rms: np.ndarray
    """(layers, steps + 1, widths): mean over seeds of the output RMS."""
    change_rms: np.ndarray
    """(layers, steps + 1, widths): mean over seeds of the change RMS (step 0: zeros)."""

    @property
    def steps(self) -> int:
        """Optimiser steps measured (the record holds steps + 1 points: init, then each)."""
        return int(self.rms.shape[1]) - 1

    def rms_slopes(self) -> np.ndarray:
        """(layers, steps + 1): slope of log2 RMS against log2 width per layer and step."""
        return _slopes(self.widths, self.rms)

    def change_slopes(self) -> np.ndarray:
        """(layers, steps + 1): the same for the change RMS; step 0 (no change yet) is NaN."""
        slopes = _slopes(self.widths, self.change_rms)
        slopes[:, 0] = np.nan
        return slopes


def summarise(runs: Sequence[RunMeasurement]) -> CoordinateCheck:
    """Mean over seeds per width. Every run must record the same layers and steps, and every
    width must have the same number of seeds (so no width's mean is noisier than another's)."""
    if not runs:
        raise ValueError("no measurements to summarise")
    layers = runs[0].layers
    shape = runs[0].rms.shape
    for run in runs:
        if run.layers != layers or run.rms.shape != shape:
            raise ValueError(
                f"width {run.width} seed {run.seed} recorded {len(run.layers)} layers x"
                f" {run.rms.shape[1]} steps, width {runs[0].width} seed {runs[0].seed}"
                f" {len(layers)} x {shape[1]}: a coordinate check compares like with like"
            )
    widths = sorted({run.width for run in runs})
    by_width = {w: [run for run in runs if run.width == w] for w in widths}
    counts = {len(group) for group in by_width.values()}
    if len(counts) != 1:
        raise ValueError(
            f"widths have different seed counts: { {w: len(g) for w, g in by_width.items()} }"
        )
    # (layers, steps + 1, widths)
    rms = np.stack([np.mean([r.rms for r in by_width[w]], axis=0) for w in widths], axis=-1)
    change = np.stack(
        [np.mean([r.change_rms for r in by_width[w]], axis=0) for w in widths], axis=-1
    )
    return CoordinateCheck(widths, counts.pop(), list(layers), rms, change)


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log2(values) against log2(widths).

    values = c * width^p gives exactly p. All values 0 (a layer that does not move) is a flat
    line, 0.0; otherwise any zero, negative or non-finite value gives NaN (no power law fits,
    and the verdict flags it rather than hiding it).
    """
    x = np.log2(np.asarray(widths, dtype=np.float64))
    y_raw = np.asarray(values, dtype=np.float64)
    if x.shape != y_raw.shape or x.size < 2:
        raise ValueError(f"need >= 2 widths and one value each, got {x.size} and {y_raw.size}")
    if np.ptp(x) == 0:
        raise ValueError(f"widths must differ to fit a slope, got {list(widths)}")
    if np.all(y_raw == 0):
        return 0.0
    if not np.all(np.isfinite(y_raw) & (y_raw > 0)):
        return math.nan
    y = np.log2(y_raw)
    dx = x - x.mean()
    return float(np.dot(dx, y - y.mean()) / np.dot(dx, dx))


def _slopes(widths: Sequence[int], values: np.ndarray) -> np.ndarray:
    """(layers, steps + 1, widths) -> (layers, steps + 1) slopes."""
    return np.array(
        [
            [fit_slope(widths, values[i, t]) for t in range(values.shape[1])]
            for i in range(len(values))
        ]
    ).reshape(values.shape[:2])


@dataclasses.dataclass(frozen=True)
class Flag:
    """A layer whose output scale moves with width at one step (slope NaN: no power law)."""

    layer: str
    step: int
    slope: float


@dataclasses.dataclass
class Verdict:
    """Pass when every layer's |RMS slope| <= tolerance at every step >= from_step."""

    passed: bool
    tolerance: float
    from_step: int
    flagged: list[Flag]
    """Worst first: non-finite slopes, then by |slope| descending."""
    output_layer: str = ""
    """The last layer recorded: the model's output (for a language model, the logits), named
    whenever it is flagged, even when other layers are worse."""

    def worst(self, count: int = 3) -> list[Flag]:
        """The worst ``count`` flags, one per layer (a layer flagged at several steps is named
        once, at its worst step)."""
        seen: set[str] = set()
        chosen = []
        for flag in self.flagged:
            if flag.layer not in seen:
                seen.add(flag.layer)
                chosen.append(flag)
        return chosen[:count]


def judge(check: CoordinateCheck, tolerance: float, from_step: int = 1) -> Verdict:
    """The verdict on ``check``'s RMS slopes at steps ``from_step``..steps."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not 0 <= from_step <= check.steps:
        raise ValueError(f"from_step must be in [0, steps={check.steps}], got {from_step}")
    slopes = check.rms_slopes()
    flagged = [
        Flag(layer, step, float(slopes[i, step]))
        for i, layer in enumerate(check.layers)
        for step in range(from_step, check.steps + 1)
        if not abs(slopes[i, step]) <= tolerance  # NaN fails this too: flagged
    ]
    flagged.sort(key=lambda f: math.inf if math.isnan(f.slope) else abs(f.slope), reverse=True)
    return Verdict(not flagged, float(tolerance), int(from_step), flagged, check.layers[-1])


# The JSON record ------------------------------------------------------------------------------


def _by_layer(values: np.ndarray, layers: Sequence[str]) -> dict[str, list[Any]]:
    return {layer: values[i].tolist() for i, layer in enumerate(layers)}


def check_to_dict(
    check: CoordinateCheck, verdict: Verdict, extra: Optional[Mapping[str, Any]] = None
) -> dict[str, Any]:
    """The JSON-ready record (NaN stays NaN here; ``write_check_json`` makes it null).

    Per layer: ``rms[layer][step][width index]`` (means over seeds), ``change_rms`` likewise,
    ``slopes.rms[layer][step]`` and ``slopes.change_rms[layer][step]`` (step 0: null).
    ``extra`` (settings used, seeds, timings) is stored under its own keys first.
    """
    return {
        "format": FORMAT,
        **(extra or {}),
        "widths": list(check.widths),
        "seeds": check.seeds,
        "steps": check.steps,
        "layers": list(check.layers),
        "rms": _by_layer(check.rms, check.layers),
        "change_rms": _by_layer(check.change_rms, check.layers),
        "slopes": {
            "rms": _by_layer(check.rms_slopes(), check.layers),
            "change_rms": _by_layer(check.change_slopes(), check.layers),
        },
        "verdict": {
            "passed": verdict.passed,
            "tolerance": verdict.tolerance,
            "from_step": verdict.from_step,
            "flagged": [dataclasses.asdict(flag) for flag in verdict.flagged],
            "output_layer": verdict.output_layer,
        },
    }


def _array(data: Mapping[str, Any], layers: Sequence[str]) -> np.ndarray:
    # JSON null (a non-finite mean) comes back as NaN.
    return np.array(
        [[[math.nan if v is None else v for v in row] for row in data[layer]] for layer in layers],
        dtype=np.float64,
    )


def check_from_dict(data: Mapping[str, Any]) -> tuple[CoordinateCheck, Verdict]:
    """Inverse of ``check_to_dict`` (slopes are recomputed from the means, not read)."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not a coordinate-check record (format {data.get('format')!r})")
    layers = [str(name) for name in data["layers"]]
    check = CoordinateCheck(
        widths=[int(w) for w in data["widths"]],
        seeds=int(data["seeds"]),
        layers=layers,
        rms=_array(data["rms"], layers),
        change_rms=_array(data["change_rms"], layers),
    )
    raw = data["verdict"]
    flags = [
        Flag(str(f["layer"]), int(f["step"]), math.nan if f["slope"] is None else float(f["slope"]))
        for f in raw["flagged"]
    ]
    return check, Verdict(
        bool(raw["passed"]),
        float(raw["tolerance"]),
        int(raw["from_step"]),
        flags,
        str(raw.get("output_layer", "")),
    )


def write_check_json(
    path: PathLike,
    check: CoordinateCheck,
    verdict: Verdict,
    extra: Optional[Mapping[str, Any]] = None,
) -> None:
    """``check_to_dict`` as strict JSON (non-finite -> null), written atomically."""
    write_json(path, check_to_dict(check, verdict, extra))


def load_check_json(path: PathLike) -> tuple[CoordinateCheck, Verdict, dict[str, Any]]:
    """A record written by ``write_check_json``: the check, its verdict and the whole dict."""
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    check, verdict = check_from_dict(data)
    return check, verdict, data


# The printed table ----------------------------------------------------------------------------


def _cell(slope: float, flagged: bool) -> str:
    text = "   nan" if math.isnan(slope) else f"{slope:+6.2f}"
    return text + ("*" if flagged else " ")


def slope_table(check: CoordinateCheck, verdict: Verdict) -> str:
    """Slopes of log2 RMS (then of log2 change RMS) against log2 width, one row per layer,
    one column per step; ``*`` marks a flagged slope, and a last line states the verdict."""
    rms, change = check.rms_slopes(), check.change_slopes()
    flagged = {(f.layer, f.step) for f in verdict.flagged}
    name_width = max(len(name) for name in [*check.layers, "layer"])
    steps = range(check.steps + 1)
    header = (
        f"{'layer':<{name_width}}  "
        + " ".join(f"{f'rms t{t}':>7}" for t in steps)
        + "   "
        + " ".join(f"{f'chg t{t}':>7}" for t in steps[1:])
    )
    lines = [header, "-" * len(header)]
    for i, layer in enumerate(check.layers):
        lines.append(
            f"{layer:<{name_width}}  "
            + " ".join(_cell(rms[i, t], (layer, t) in flagged) for t in steps)
            + "   "
            + " ".join(_cell(change[i, t], False) for t in steps[1:])
        )
    lines.append("")
    lines.append(verdict_line(verdict))
    return "\n".join(lines)


def verdict_line(verdict: Verdict) -> str:
    """One line: pass, or the worst layers and their slopes."""
    bound = f"|slope| <= {verdict.tolerance:g} at steps >= {verdict.from_step}"
    if verdict.passed:
        return f"pass: every layer's {bound}"
    named = verdict.worst()
    output = [f for f in verdict.flagged if f.layer == verdict.output_layer][:1]
    if output and output[0] not in named:
        named.append(output[0])  # the model's output, however it ranks
    layers = len({f.layer for f in verdict.flagged})
    worst = ", ".join(f"{f.layer} {f.slope:+.2f} (step {f.step})" for f in named)
    return f"FLAGGED: {layers} layer(s) break {bound}; worst: {worst}"


# The figure ----------------------------------------------------------------------------------

MARKERS = ("o", "s", "^", "D", "v")


def _draw_panel(  # pylint: disable=too-many-arguments
    ax: Axes,
    check: CoordinateCheck,
    values: np.ndarray,
    step: int,
    colours: np.ndarray,
    flagged: set[tuple[str, int]],
) -> None:
    """One line per layer: log2 of ``values[:, step]`` (layers, widths) against log2 width."""
    x = np.log2(np.asarray(check.widths, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log2(values[:, step])  # (layers, widths); 0 -> -inf, not drawn
    for i, layer in enumerate(check.layers):
        bold = (layer, step) in flagged
        ax.plot(
            x,
            y[i],
            marker=MARKERS[i % len(MARKERS)],  # neighbours in model order share a colour
            ms=3,
            lw=2.2 if bold else 1.0,
            color=colours[i],
            label=layer,
        )
    ax.set_xticks(x, [str(w) for w in check.widths])
    ax.tick_params(labelbottom=True)  # shared x: every panel keeps its width labels
    ax.grid(True, alpha=0.3)


def plot_check(check: CoordinateCheck, verdict: Verdict, path: PathLike, title: str = "") -> None:
    """PNG: log2 RMS against width, one line per layer (model order: light to dark), one panel
    per step; below, the change RMS since step 0 for steps >= 1, and the layer legend. Flagged
    layer-steps are drawn bold. Drawn on an Agg canvas (no pyplot), written atomically."""
    columns = check.steps + 1
    figure = Figure(figsize=(3.0 * columns + 1.0, 7.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, columns, squeeze=False, sharex=True)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.9, 0.0, len(check.layers)))
    flagged = {(f.layer, f.step) for f in verdict.flagged}
    for step in range(columns):
        top = axes[0, step]
        _draw_panel(top, check, check.rms, step, colours, flagged)
        top.set_title(f"step {step}" + (" (init)" if step == 0 else ""))
        if step:
            _draw_panel(axes[1, step], check, check.change_rms, step, colours, set())
            axes[1, step].set_title(f"change since init, step {step}")
            axes[1, step].set_xlabel("width (log2 axis)")
    axes[0, 0].set_ylabel("log2 RMS of output")
    if columns > 1:
        axes[1, 1].set_ylabel("log2 RMS of (y_t - y_0)")
    legend = axes[1, 0]
    legend.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    legend.legend(handles, labels, loc="center", fontsize=6, ncol=1 + len(labels) // 16)
    heading = title or "coordinate check"
    figure.suptitle(textwrap.fill(f"{heading}: {verdict_line(verdict)}", 40 * columns), fontsize=9)
    with atomic_open(path, "wb") as file:
        figure.savefig(file, format="png", dpi=110)
