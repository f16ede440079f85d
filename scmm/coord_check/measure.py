"""The measurement: train each width's model for a few steps and record its sublayer outputs.

For every width and model seed of a ``Plan``: build the ``CharLM`` exactly as a run would (its
scheme, parameter table with the scheme's rules for the run's optimiser, and that optimiser
through ``Trainer``; a calibrating scheme calibrates on a batch of its own first), then on one
fixed training batch

- at step 0 keep every sublayer's output ``y_0`` (``scmm.analysis.scales.capture_outputs``);
- take one optimiser step on that same batch, capture the outputs ``y_t`` again, and record
  ``rms(y_t)`` and ``rms(y_t - y_0)``; repeat for t = 1..steps.

The batch is the same at every step, width and seed, so only the width changes between the
points a slope is fitted through. Training's loss limit is off (a large-LR standard model is
meant to blow up here; that is the finding, not a failure); a non-finite loss or weight ends
that model's training, and the remaining steps are recorded as they are (NaN, so the verdict
flags them). Statistics are reduced on the device in float32; only scalars come to the host.
"""

import contextlib
import dataclasses
import gc
import logging
import time
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from .. import datasets
from ..analysis.coordinates import RunMeasurement
from ..analysis.scales import capture_outputs
from ..experiments.diagnostics import fixed_batch
from ..experiments.settings import ExperimentSettings
from ..experiments.setup import model_and_trainer
from ..models import CharLM
from ..pedal import Execution
from ..training.trainer import NonFiniteError
from .plan import Plan

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Batches:
    """The fixed training batch every model is trained and measured on, and the calibration
    batch of a calibrating scheme, each ``{"tokens": (sequences, length), "mask": ...}``."""

    train: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]


def draw_batches(dataset: datasets.Dataset, settings: ExperimentSettings) -> Batches:
    """Both batches, each drawn by a seed of its own from the master seed (as a run draws its
    calibration and analysis batches), so they do not depend on the width or model seed."""
    return Batches(
        train=fixed_batch(dataset, settings, "coord_check"),
        calibration=fixed_batch(dataset, settings, "calibration"),
    )


def _rms(x: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(x, tf.float32))))


def _outputs(model: CharLM, tokens: tf.Tensor, mask: tf.Tensor) -> list[tuple[str, tf.Tensor]]:
    # float32 copies: a 16-bit model's outputs are compared in float32, so y_t - y_0 is exact
    # to float32 rounding whatever the compute dtype.
    captured, _ = capture_outputs(model, tokens, mask)
    return [(name, tf.cast(tensor, tf.float32)) for name, tensor in captured]


def measure_model(
    settings: ExperimentSettings, batches: Batches, steps: int, width: int, seed: int
) -> RunMeasurement:
    """One width and model seed (``settings`` already at that width, vocab size set)."""
    assert settings.seed is not None
    seeded = dataclasses.replace(settings, model=dataclasses.replace(settings.model, seed=seed))
    execution = Execution(settings.execution)
    with execution.scope():
        # As a run builds them; no loss limit: a blow-up is what the check looks for.
        model, trainer = model_and_trainer(seeded, execution, loss_limit=False)
        if model.scheme.calibrates:
            model.scheme.calibrate(model, batches.calibration, model.parameters)
        tokens = tf.constant(batches.train["tokens"], tf.int32)  # (sequences, length)
        mask = tf.constant(batches.train["mask"], tf.bool)  # (sequences, length)
        initial = _outputs(model, tokens, mask)
        layers = tuple(name for name, _ in initial)
        rms = np.full((len(layers), steps + 1), np.nan)  # (layers, steps + 1)
        change = np.full((len(layers), steps + 1), np.nan)
        rms[:, 0] = [float(_rms(y)) for _, y in initial]
        change[:, 0] = 0.0
        one_step = {k: v[np.newaxis] for k, v in batches.train.items()}  # (1, sequences, length)
        for step in range(1, steps + 1):
            try:
                trainer.train(one_step)
            except NonFiniteError:
                pass  # the weights are what they are: measured, NaN or not, and flagged
            current = _outputs(model, tokens, mask)
            names = tuple(name for name, _ in current)
            if names != layers:
                raise RuntimeError(
                    f"width {width} seed {seed}: step {step} captured other layers than step 0"
                )
            for i, ((_, y0), (_, y)) in enumerate(zip(initial, current)):
                rms[i, step] = float(_rms(y))
                change[i, step] = float(_rms(y - y0))
    return RunMeasurement(width=width, seed=seed, layers=layers, rms=rms, change_rms=change)


@contextlib.contextmanager
def _no_retracing_warnings() -> Iterator[None]:
    """TensorFlow warns when a function is traced again and again ("5 out of the last 13 calls
    ... triggered tf.function retracing"); here each model has its own trainer, so each traces
    once by design. Warnings are off for the measurement only (errors still show)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def measure(
    plan: Plan,
    dataset: datasets.Dataset,
    progress: Optional[Progress] = None,
    times: Optional[dict[str, float]] = None,
) -> list[RunMeasurement]:
    """Every (width, seed) of ``plan``, widths in ascending order; ``progress`` gets one line
    per model, ``times`` (if given) the wall seconds of each, keyed ``"<width>/<seed>"``."""
    batches = draw_batches(dataset, plan.settings)
    runs: list[RunMeasurement] = []
    total = len(plan.widths) * len(plan.model_seeds)
    with _no_retracing_warnings():
        for width in plan.widths:
            settings = plan.by_width[width]
            if settings.model.vocab_size != dataset.vocab.size:
                raise ValueError(
                    f"the plan's model.vocab_size={settings.model.vocab_size} is not the"
                    f" data's {dataset.vocab.size} (use Plan.with_vocab_size first)"
                )
            for seed in plan.model_seeds:
                start = time.perf_counter()
                runs.append(measure_model(settings, batches, plan.steps, width, seed))
                elapsed = time.perf_counter() - start
                if times is not None:
                    times[f"{width}/{seed}"] = elapsed
                if progress is not None:
                    progress(f"[{len(runs)}/{total}] width {width} seed {seed}: {elapsed:.1f} s")
                gc.collect()  # this model's variables and traced steps go before the next
    return runs
