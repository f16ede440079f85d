"""What a run reports: chunk metrics, throughput, the parameter table file, the final lines.

Kept apart from the runner so that the runner is wiring: these are pure functions of the
numbers a run produced.
"""

import dataclasses
import math
import os
import sys
from typing import Any, Mapping

import numpy as np

from ..analysis.curves import plot_training_curves
from ..datasets import Dataset
from ..exit_codes import EXIT_DIVERGED, EXIT_FAILED, EXIT_FINISHED, EXIT_INTERRUPTED
from ..parameters import ParameterTable
from ..training.settings import OptimiserSettings
from .settings import ExperimentSettings, to_dict
from .trackers import PER_STEP_SUFFIX

# Per-step arrays the trainer returns that are summarised specially (not "last value").
_SPECIAL = (
    "loss",
    "n_tokens",
    "learning_rate",
    "loss_scale",
    "skipped",
    "xentropy",
    "perplexity",
    "accuracy",
    "clipped_fraction",
)
# The train_step record's list of the learning rate of each step in the chunk.
PER_STEP_RATES = f"learning_rate{PER_STEP_SUFFIX}"
# Evaluation metrics copied to summary.json per split (when the model returns them).
SPLIT_METRICS = ("loss", "bpc", "xentropy", "perplexity", "accuracy")


@dataclasses.dataclass
class Throughput:
    """Training tokens and seconds, excluding calls that compiled a new loop shape."""

    tokens: float = 0.0
    seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        """Training throughput (NaN before the first measured call)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def chunk_metrics(results: Mapping[str, np.ndarray], elapsed: float) -> dict[str, Any]:
    """The ``train_step`` record of one compiled chunk from its per-step arrays.

    Mean and last loss, the learning rate and loss scale at the last step (and the rate of
    every step, ``learning_rate_per_step``: its i-th value, from 0, is the rate of update
    ``step - k + i`` of the chunk's k), skipped steps,
    tokens and throughput, the pre-clip gradient norm at the last step (``grad_norm``) and its
    largest in the chunk (``grad_norm_max``), the mean fraction of gradient tensors clipped
    (``clipped_fraction``, per-tensor clipping only), and the last value of every other scalar
    the model returned. When
    the model returns them, ``xentropy`` and ``accuracy`` are means over the chunk's steps
    (equal-sized batches), ``perplexity`` is exp of that mean xentropy and BPC is of it (not
    of a weighted loss).
    """
    tokens = float(np.sum(results["n_tokens"]))
    mean_loss = float(np.mean(results["loss"]))
    metrics: dict[str, Any] = {
        "loss": mean_loss,
        "bpc": mean_loss / math.log(2),
        "loss_last": float(results["loss"][-1]),
        "learning_rate": float(results["learning_rate"][-1]),
        # The schedule's rate at every update of the chunk, first to last: the record is per
        # chunk, the schedule per step (a warm-up can move within one compiled call).
        PER_STEP_RATES: [float(rate) for rate in results["learning_rate"]],
        "tokens": tokens,
        "tokens_per_second": tokens / elapsed,
    }
    if "xentropy" in results:
        xentropy = float(np.mean(results["xentropy"]))
        metrics.update(
            bpc=xentropy / math.log(2),
            xentropy=xentropy,
            perplexity=math.inf if xentropy > 709.0 else math.exp(xentropy),
        )
    if "accuracy" in results:
        metrics["accuracy"] = float(np.mean(results["accuracy"]))
    for name, values in results.items():
        if name not in _SPECIAL:
            metrics[name] = float(values[-1])
    if "grad_norm" in results:
        metrics["grad_norm_max"] = float(np.max(results["grad_norm"]))
    if "clipped_fraction" in results:
        metrics["clipped_fraction"] = float(np.mean(results["clipped_fraction"]))
    metrics.update(
        loss_scale=float(results["loss_scale"][-1]),
        skipped_steps=int(np.sum(results["skipped"])),
        steps=len(results["loss"]),
    )
    return metrics


def parameters_record(
    table: ParameterTable,
    optimiser: OptimiserSettings,
    scheme: str,
    weight_decay_mode: str = "coupled",
) -> dict[str, Any]:
    """``parameters.json``: every row of the table with its effective learning rate, weight
    decay coefficient and the fraction of the weight that decay removes per step (peak
    values; the schedule multiplies every rate alike, and the decay too)."""
    rows = []
    for row in table:
        rate = optimiser.learning_rate * row.learning_rate_multiplier
        decay = optimiser.weight_decay * row.weight_decay_multiplier
        per_step = decay if weight_decay_mode == "independent" else rate * decay
        rows.append(
            {
                **row.to_dict(),
                "learning_rate": rate,
                "weight_decay": decay,
                "decay_per_step": per_step,
            }
        )
    return {
        "scheme": scheme,
        "depth": table.depth,
        "layers": table.layers,
        "weight_decay_mode": weight_decay_mode,
        "parameters": rows,
    }


def print_summary(summary: dict[str, Any]) -> None:
    """A few lines on stdout at the end of a run."""

    def fmt(key: str, spec: str = ".4f") -> str:
        value = summary.get(key)
        return format(value, spec) if isinstance(value, float) and math.isfinite(value) else "n/a"

    print(
        f"{summary['status']} at step {summary['step']}: train bpc {fmt('train_bpc')},"
        f" valid bpc {fmt('valid_bpc')}, test bpc {fmt('test_bpc')},"
        f" {fmt('tokens_per_second', '.0f')} tokens/s"
    )
    print(f"outputs: {summary['out_dir']}")


_EXIT_CODES = {
    "finished": EXIT_FINISHED,
    "diverged": EXIT_DIVERGED,
    "interrupted": EXIT_INTERRUPTED,
    "failed": EXIT_FAILED,
}


def run_exit_code(status: str) -> int:
    """The process exit code of a run that ended with ``status``."""
    return _EXIT_CODES.get(status, EXIT_FAILED)


def header_line(
    settings: ExperimentSettings, parameters: int, dataset: Dataset, out_dir: str
) -> str:
    """One line at the start of a run: preset, model, size, scheme, data and output folder."""
    tree = to_dict(settings)
    model = settings.model
    kind = tree["model"]["sequence"]["type"]
    scheme = tree["model"]["scaling"]["type"]
    splits = ", ".join(f"{name} {len(ids):,}" for name, ids in dataset.splits.items())
    return (
        f"scmm: preset {settings.preset or '-'} | {kind} model, hidden {model.hidden_size} x"
        f" depth {model.depth}, {parameters:,} parameters, {scheme} scaling, {model.dtype} |"
        f" data: {dataset.description} ({dataset.vocab.size} characters; {splits}) |"
        f" out: {out_dir}"
    )


def summary_record(
    status: str,
    step: int,
    results: Mapping[str, Mapping[str, float]],
    throughput: Throughput,
    best_valid_loss: float,
    **fields: Any,
) -> dict[str, Any]:
    """``summary.json``: status, step, each evaluated split's loss, BPC, xentropy, perplexity
    and accuracy (those the evaluation gave), throughput, the best validation, then
    ``fields`` (wall time, parameters, last training metrics, …)."""
    summary: dict[str, Any] = {"status": status, "step": step}
    for split in ("train", "valid", "test"):
        if split in results:
            for name in SPLIT_METRICS:
                if name in results[split]:
                    summary[f"{split}_{name}"] = results[split][name]
    summary.update(
        tokens_per_second=throughput.tokens_per_second,
        compile_seconds=throughput.compile_seconds,
        best_valid_loss=best_valid_loss,
        best_valid_bpc=best_valid_loss / math.log(2),
        **fields,
    )
    return summary


def stats_record(
    parameters: int, dataset: Dataset, settings: ExperimentSettings, device: str
) -> dict[str, Any]:
    """The ``stats`` record at the start of a run."""
    return {
        "parameters": parameters,
        "vocab_size": dataset.vocab.size,
        "data": dataset.description,
        **{f"{k}_chars": int(len(v)) for k, v in dataset.splits.items()},
        "device": device,
        "seed": settings.seed,
    }


def write_training_curves(out_dir: str, name: str = "") -> None:
    """``training_curves.png`` beside ``summary.json``, from the run's ``log.jsonl``.

    A figure must never change a run's status or exit code: a failure is one warning.
    """
    try:
        plot_training_curves(
            os.path.join(out_dir, "log.jsonl"),
            os.path.join(out_dir, "training_curves.png"),
            title=f"{name or os.path.basename(os.path.abspath(out_dir))}: training curves",
        )
    except Exception as error:  # pylint: disable=broad-except
        print(f"warning: training_curves.png not written: {error}", file=sys.stderr)
