"""Passes of a run that look at one fixed batch (weight-gradient calibration, scale analysis),
and the fixed batch itself. Each pass returns the metrics the runner logs."""

import os
from typing import Any, Mapping

import keras
import numpy as np

from .. import datasets
from ..pedal import split_seed
from .settings import ExperimentSettings


def fixed_batch(
    dataset: datasets.Dataset, settings: ExperimentSettings, purpose: str
) -> dict[str, np.ndarray]:
    """One training batch drawn by a seed of its own (``purpose``), so the training stream
    is not consumed and the batch does not depend on where training is."""
    assert settings.seed is not None
    stream = datasets.TrainBatchStream(
        dataset.splits["train"],
        settings.training.batch_sequences,
        settings.data.sequence_length,
        settings.data.overlap_length,
        seed=split_seed(settings.seed, purpose),
    )
    return {k: v[0] for k, v in stream.next(1).items()}  # (sequences, length)


def analyse(  # pylint: disable=too-many-arguments
    model: keras.layers.Layer,
    batch: dict[str, np.ndarray],
    step: int,
    out_dir: str,
    title: str,
    gradient_factors: Mapping[str, float],
) -> dict[str, Any]:
    """Scale statistics on ``batch`` -> OUT/scales.json (appended per step) and scales.png.

    Weight gradients are recorded times their factors: the gradients the optimiser sees."""
    from .. import analysis  # matplotlib is only loaded when analysis is asked for

    records = analysis.collect_scales(model, batch, step=step, gradient_factors=gradient_factors)
    path = os.path.join(out_dir, "scales.json")
    analysis.write_scales_json(path, records, append=os.path.exists(path))
    analysis.plot_scales(
        analysis.load_scales_json(path), os.path.join(out_dir, "scales.png"), title=title
    )
    worst = max(records, key=lambda r: abs(np.log2(max(r.rms, 1e-45))))
    return {
        "records": len(records),
        "path": path,
        "most_extreme": worst.name,
        "most_extreme_pass": worst.pass_,
        "most_extreme_rms": worst.rms,
    }
