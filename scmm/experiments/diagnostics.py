"""Init-time passes of a run that look at one fixed batch: weight-gradient calibration and
scale analysis. Each returns the metrics the runner logs."""

import os
from typing import Any

import keras
import numpy as np

from .. import datasets
from ..pedal import split_seed
from ..uscale.calibration import calibrate_weight_gradients
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


def calibrate(model: keras.layers.Layer, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Fix the weight-gradient factors on ``batch``; a summary of them (log2) for the log."""
    factors = calibrate_weight_gradients(model, batch)
    log2 = np.log2(np.array(list(factors.values())))
    return {
        "parameters": len(factors),
        "log2_factor_min": float(log2.min()),
        "log2_factor_median": float(np.median(log2)),
        "log2_factor_max": float(log2.max()),
    }


def analyse(
    model: keras.layers.Layer, batch: dict[str, np.ndarray], step: int, out_dir: str, title: str
) -> dict[str, Any]:
    """Scale statistics on ``batch`` -> OUT/scales.json (appended per step) and scales.png."""
    from .. import analysis  # matplotlib is only loaded when analysis is asked for

    records = analysis.collect_scales(model, batch, step=step)
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
