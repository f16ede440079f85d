"""Sweep results: ``results.csv`` (a row per trial), ``table.md`` (the paper-style pivot),
``lr_sweep.png`` (validation BPC against log2 learning rate, a panel per table row with its
variants as lines) and ``loss_curves.png`` (training BPC against step at each best LR).

A configuration's cell is the median test BPC over repeats at the learning rate whose median
validation BPC is best. The 95% confidence interval is the paper's: 2 * mean(std) / sqrt(n)
with std the spread of test BPC over the n repeats at each cell's best learning rate, averaged
over cells; cells within it of their row's best are bold.
"""

import csv
import dataclasses
import math
import os
import statistics
from typing import Any, Callable, Optional, Sequence

from ..io import atomic_open, read_jsonl
from .index import TrialRecord
from .search import best_point, point_score

CSV_COLUMNS = (
    "trial",
    "config",
    "learning_rate",
    "log2_learning_rate",
    "repeat",
    "seed",
    "state",
    "attempts",
    "crashes",
    "step",
    "valid_bpc",
    "test_bpc",
    "train_bpc",
    "tokens_per_second",
    "wall_seconds",
    "out_dir",
    "error",
)


@dataclasses.dataclass
class ConfigResult:
    """One configuration's search outcome."""

    config: str
    labels: dict[str, str]
    scores: dict[int, float]
    """LR point -> median validation BPC."""
    learning_rates: dict[int, float]
    best: Optional[int]
    test_bpcs: list[float]
    """Test BPC of each repeat at the best point."""

    @property
    def best_learning_rate(self) -> Optional[float]:
        """Learning rate of the best point."""
        return None if self.best is None else self.learning_rates[self.best]

    @property
    def test_median(self) -> float:
        """Median test BPC at the best point (nan without a finished repeat)."""
        finite = [v for v in self.test_bpcs if math.isfinite(v)]
        return float(statistics.median(finite)) if finite else math.nan

    @property
    def valid_median(self) -> float:
        """Median validation BPC at the best point (nan without one): the search's criterion."""
        return math.nan if self.best is None else self.scores[self.best]

    @property
    def test_std(self) -> float:
        """Std of test BPC over repeats at the best point (nan with fewer than two)."""
        finite = [v for v in self.test_bpcs if math.isfinite(v)]
        return float(statistics.stdev(finite)) if len(finite) > 1 else math.nan


def summarise(records: Sequence[TrialRecord]) -> list[ConfigResult]:
    """Group finished/diverged trials by configuration and pick each one's best LR."""
    by_config: dict[str, list[TrialRecord]] = {}
    for record in records:
        if record.done:
            by_config.setdefault(record.config, []).append(record)
    results = []
    for config, group in by_config.items():
        points: dict[int, list[TrialRecord]] = {}
        for record in group:
            points.setdefault(record.point, []).append(record)
        scores = {k: point_score([_value(r.valid_bpc) for r in rs]) for k, rs in points.items()}
        best = best_point(scores)
        tests = [_value(r.test_bpc) for r in points[best]] if best is not None else []
        results.append(
            ConfigResult(
                config=config,
                labels=group[0].labels,
                scores=scores,
                learning_rates={k: rs[0].learning_rate for k, rs in points.items()},
                best=best,
                test_bpcs=tests,
            )
        )
    return results


def _value(value: Optional[float]) -> float:
    return math.inf if value is None else float(value)


def write_csv(path: str, records: Sequence[TrialRecord]) -> None:
    """One row per trial, axis labels as extra columns."""
    axes: list[str] = []
    for record in records:
        axes.extend(a for a in record.labels if a not in axes)
    with atomic_open(path) as file:
        writer = csv.writer(file)
        writer.writerow([*axes, *CSV_COLUMNS])
        for record in records:
            row = dataclasses.asdict(record)
            row["log2_learning_rate"] = math.log2(record.learning_rate)
            writer.writerow(
                [record.labels.get(a, "") for a in axes] + [row[c] for c in CSV_COLUMNS]
            )


def confidence_interval(results: Sequence[ConfigResult]) -> float:
    """The paper's 95% CI: 2 * mean over cells of the std over repeats / sqrt(repeats)."""
    stds = [r.test_std for r in results if math.isfinite(r.test_std)]
    counts = [len([v for v in r.test_bpcs if math.isfinite(v)]) for r in results]
    counts = [c for c in counts if c > 1]
    if not stds or not counts:
        return math.nan
    return 2 * statistics.mean(stds) / math.sqrt(statistics.mean(counts))


def table_markdown(
    results: Sequence[ConfigResult], rows: Sequence[str], columns: Sequence[str], title: str
) -> str:
    """The pivot: rows x columns of median test BPC (+- std) at each cell's best LR, then the
    same pivot of the median validation BPC there (the search's selection criterion)."""
    ci = confidence_interval(results)
    lines = [f"# {title}", ""]
    lines.append(
        "Median test BPC over repeats at the learning rate with the best median validation BPC"
        " (+- std over repeats; best log2 LR in brackets)."
    )
    ci_text = f"{ci:.3f}" if math.isfinite(ci) else "n/a (needs >= 2 repeats)"
    lines.append(f"95% CI: {ci_text}. **Bold**: within the CI of the row's best.")
    lines.append("")
    lines.extend(
        _pivot(results, rows, columns, lambda r, best: _cell(r, best, ci), lambda r: r.test_median)
    )
    lines.append("")
    lines.append("Median validation BPC at the same learning rate (what the search minimised).")
    lines.append("")
    lines.extend(_pivot(results, rows, columns, _valid_cell, lambda r: r.valid_median))
    lines.append("")
    diverged = [r.config for r in results if r.best is None]
    if diverged:
        lines.append("Configurations with no finite result: " + ", ".join(diverged))
    return "\n".join(lines) + "\n"


def _valid_cell(result: ConfigResult, row_best: float) -> str:
    value = result.valid_median
    if not math.isfinite(value):
        return "diverged"
    return f"**{value:.3f}**" if value == row_best else f"{value:.3f}"


def _pivot(
    results: Sequence[ConfigResult],
    rows: Sequence[str],
    columns: Sequence[str],
    cell: Callable[[ConfigResult, float], str],
    value: Callable[[ConfigResult], float],
) -> list[str]:
    """Markdown table lines: one row per ``rows`` label tuple, one column per ``columns`` one;
    ``cell(result, row_best)`` renders a cell, row_best being the row's smallest ``value``."""
    cells = {
        (tuple(r.labels.get(a, "") for a in rows), tuple(r.labels.get(a, "") for a in columns)): r
        for r in results
    }
    row_keys = _ordered(k[0] for k in cells)
    col_keys = _ordered(k[1] for k in cells)
    header = [
        *rows,
        *(" ".join(f"{a}={v}" for a, v in zip(columns, c)) or "BPC" for c in col_keys),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in row_keys:
        values = [value(cells[(row, c)]) for c in col_keys if (row, c) in cells]
        finite = [v for v in values if math.isfinite(v)]
        row_best = min(finite) if finite else math.nan
        texts = []
        for col in col_keys:
            result = cells.get((row, col))
            texts.append("" if result is None else cell(result, row_best))
        lines.append("| " + " | ".join([*row, *texts]) + " |")
    return lines


def _cell(result: ConfigResult, row_best: float, ci: float) -> str:
    median = result.test_median
    if not math.isfinite(median):
        return "diverged"
    text = f"{median:.3f}"
    if math.isfinite(ci) and median <= row_best + ci:
        text = f"**{text}**"
    if math.isfinite(result.test_std):
        text += f" ±{result.test_std:.3f}"
    if result.best_learning_rate is not None:
        text += f" ({math.log2(result.best_learning_rate):+.0f})"
    return text


def _ordered(keys: Any) -> list[tuple[str, ...]]:
    seen: list[tuple[str, ...]] = []
    for key in keys:
        if key not in seen:
            seen.append(key)
    return seen


def _pyplot() -> Any:
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    return pyplot


def lr_sweep_figure(records: Sequence[TrialRecord], row_axes: Sequence[str]) -> Any:
    """Validation BPC against log2 LR: one panel per table row (the ``row_axes`` labels), on
    which every variant of that row (the other axes' labels) is its own labelled line (median
    over repeats; dots per repeat, x for a diverged one), so a row's variants compare on one
    shared axis."""
    pyplot = _pyplot()
    results = summarise(records)
    panels = _ordered(tuple(r.labels.get(a, "") for a in row_axes) for r in results) or [()]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, grid = pyplot.subplots(
        rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False
    )
    finite_values = [_value(r.valid_bpc) for r in records if r.done and _finite(r.valid_bpc)]
    ceiling = max(finite_values) + 0.1 if finite_values else 1.0
    for number, panel in enumerate(panels):
        axis = grid[number // columns][number % columns]
        for result in results:
            if tuple(result.labels.get(a, "") for a in row_axes) != panel:
                continue
            variant = ", ".join(v for a, v in result.labels.items() if a not in row_axes)
            points = sorted(result.scores)
            xs = [math.log2(result.learning_rates[k]) for k in points]
            ys = [min(result.scores[k], ceiling) for k in points]
            (line,) = axis.plot(xs, ys, marker="o", label=variant or result.config)
            for record in records:
                if record.config == result.config and record.done:
                    value = _value(record.valid_bpc)
                    axis.scatter(
                        math.log2(record.learning_rate),
                        min(value, ceiling),
                        color=line.get_color(),
                        marker="x" if not math.isfinite(value) else ".",
                        alpha=0.5,
                    )
        title = ", ".join(f"{a}={v}" for a, v in zip(row_axes, panel))
        axis.set_title(title or "learning-rate sweep")
        axis.set_xlabel("log2 learning rate")
        axis.set_ylabel("validation BPC (x: diverged, drawn at the top)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for number in range(len(panels), rows * columns):
        grid[number // columns][number % columns].set_visible(False)
    return figure


def plot_lr_sweep(path: str, records: Sequence[TrialRecord], row_axes: Sequence[str]) -> None:
    """``lr_sweep_figure`` written to ``path``."""
    _save(lr_sweep_figure(records, row_axes), path)


def _finite(value: Optional[float]) -> bool:
    return value is not None and math.isfinite(value)


# A curve of at most this many points also gets markers: a line through one point draws
# nothing, and a short run's few records should be visible as points.
_FEW_POINTS = 5


def loss_curves_figure(
    records: Sequence[TrialRecord], summary: Sequence[ConfigResult], title: str
) -> Any:
    """Training BPC against step for every configuration at its best LR (``summary``, from
    ``summarise(records)``; median over repeats, read from each trial's ``log.jsonl``),
    validation BPC as larger dots. Never blank: short curves get markers, and a figure
    without any record says so."""
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(8, 5))
    drawn = False
    for result in summary:
        if result.best is None:
            continue
        trials = [r for r in records if r.config == result.config and r.point == result.best]
        curves: dict[int, list[float]] = {}
        valid: dict[int, list[float]] = {}
        for trial in trials:
            for entry in read_jsonl(os.path.join(trial.out_dir, "log.jsonl")):
                target = {"train_step": curves, "eval_valid": valid}.get(entry.get("kind", ""))
                if target is not None and _finite(entry.get("bpc")):
                    target.setdefault(int(entry["step"]), []).append(float(entry["bpc"]))
        if not curves and not valid:
            continue
        drawn = True
        label = ", ".join(result.labels.values()) or result.config
        steps = sorted(curves)
        (line,) = axis.plot(
            steps,
            [statistics.median(curves[s]) for s in steps],
            marker="." if len(steps) <= _FEW_POINTS else None,
            label=label,
        )
        for step in sorted(valid):
            axis.scatter(step, statistics.median(valid[step]), color=line.get_color(), marker="o")
    if not drawn:
        axis.text(0.5, 0.5, "no training records yet", ha="center", va="center")
    axis.set_xlabel("step")
    axis.set_ylabel("training BPC (median over repeats; dots: validation)")
    axis.set_title(f"{title}: each configuration at its best learning rate")
    axis.grid(alpha=0.3)
    if drawn:
        axis.legend(fontsize=6)
    return figure


def plot_loss_curves(
    path: str, records: Sequence[TrialRecord], summary: Sequence[ConfigResult], title: str
) -> None:
    """``loss_curves_figure`` written to ``path``."""
    _save(loss_curves_figure(records, summary, title), path)


def _save(figure: Any, path: str) -> None:
    """Write ``figure`` as a PNG atomically and release it."""
    pyplot = _pyplot()
    figure.tight_layout()
    with atomic_open(path, "wb") as file:
        figure.savefig(file, format="png", dpi=110)
    pyplot.close(figure)
