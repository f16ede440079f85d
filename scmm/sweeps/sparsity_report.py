"""The sparse-training report of a sweep folder (``rigl-small``): table and figure.

``python -m scmm.sweeps.sparsity_report DIR`` reads every finished trial's ``summary.json`` and
``settings.json`` under ``DIR/trials`` and writes

- ``DIR/sparsity.md``: per configuration (method x block x variant) the validation and test BPC
  and perplexity as mean ± std over its repeats (and each repeat's validation BPC, so the
  run-to-run noise is visible), and the fraction of the sparse weights ever active;
- ``DIR/sparsity.png``: the drop-fraction schedule of the RigL settings (the fraction dropped
  at each update step, from ``scmm.sparsity.schedule`` with the trial's own settings) and, per
  method and block size, the fraction of blocks ever active at the end.
"""

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Optional

METRICS = ("valid_bpc", "test_bpc", "valid_perplexity", "test_perplexity")


def _trials(folder: Path) -> list[dict[str, Any]]:
    """Every finished trial: its labels, settings and summary."""
    found = []
    for summary_path in sorted(folder.glob("trials/*/*/summary.json")):
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if summary.get("status") != "finished":
            continue
        settings = json.loads((summary_path.parent / "settings.json").read_text(encoding="utf-8"))
        config = summary_path.parent.parent.name
        labels = dict(part.split("=", 1) for part in config.split(","))
        found.append({"config": config, "labels": labels, "settings": settings, **summary})
    return found


def _ever_active(trial: dict[str, Any]) -> Optional[float]:
    """Fraction of the sparse kernels' blocks ever active (block-weighted), None when dense."""
    kernels = trial.get("sparsity")
    if not kernels:
        return None
    blocks = sum(k["blocks"] for k in kernels.values())
    return sum(k["ever_active"] * k["blocks"] for k in kernels.values()) / blocks


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def table(trials: list[dict[str, Any]]) -> str:
    """The markdown table (module docstring)."""
    configs: dict[str, list[dict[str, Any]]] = {}
    for trial in trials:
        configs.setdefault(trial["config"], []).append(trial)
    head = ["configuration", "repeats", *METRICS, "valid BPC per repeat", "ever active"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, runs in sorted(configs.items()):
        cells = [config, str(len(runs))]
        cells += [_mean_std([float(r[m]) for r in runs if r.get(m) is not None]) for m in METRICS]
        cells.append(", ".join(f"{float(r['valid_bpc']):.4f}" for r in runs))
        ever = [e for e in (_ever_active(r) for r in runs) if e is not None]
        cells.append(f"{statistics.fmean(ever):.3f}" if ever else "dense")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _schedule(settings: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(update steps, drop fraction at each) of one trial's sparsity settings."""
    from ..sparsity.schedule import drop_fraction  # pylint: disable=import-outside-toplevel

    sparsity, steps = settings["training"]["sparsity"], int(settings["training"]["steps"])
    interval = sparsity["update_interval"] or steps + 1
    end = max(1, int(round(sparsity["end_fraction"] * steps)))
    points = list(range(interval, steps + 1, interval))
    fractions = [
        float(
            drop_fraction(
                step,
                schedule=sparsity["drop_decay"],
                alpha=sparsity["drop_fraction"],
                end_step=end,
                zero_steps=sparsity["zero_steps"],
                phase=sparsity["phase"],
                period=sparsity["period"],
            )
        )
        for step in points
    ]
    return points, fractions


def figure(trials: list[dict[str, Any]], path: Path) -> None:
    """The two-panel figure (module docstring)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rigl = [t for t in trials if t["labels"].get("method") == "rigl"]
    if rigl:
        steps, fractions = _schedule(rigl[0]["settings"])
        left.plot(steps, fractions, "o-")
    left.set(xlabel="optimiser step", ylabel="drop fraction at the update", title="RigL/SET")
    groups: dict[str, list[float]] = {}
    for trial in trials:
        ever = _ever_active(trial)
        if ever is not None:
            key = f"{trial['labels'].get('method')}\nblock {trial['labels'].get('block')}"
            groups.setdefault(key, []).append(ever)
    names = sorted(groups)
    right.bar(range(len(names)), [statistics.fmean(groups[n]) for n in names])
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.set(ylabel="fraction of blocks ever active", title="at the end of training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folder: Path) -> tuple[Path, Path]:
    """Write ``sparsity.md`` and ``sparsity.png`` into ``folder``; returns their paths."""
    trials = _trials(folder)
    if not trials:
        raise ValueError(f"{folder}: no finished trials under trials/*/*/summary.json")
    markdown, png = folder / "sparsity.md", folder / "sparsity.png"
    markdown.write_text(table(trials), encoding="utf-8")
    figure(trials, png)
    return markdown, png


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m scmm.sweeps.sparsity_report DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("folder", type=Path, help="the sweep folder (out/sweeps/rigl-small)")
    args = parser.parse_args(argv)
    for written in write_report(args.folder):
        print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
