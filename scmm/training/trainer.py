"""Compiled training and evaluation of a ``CharLM``.

``Trainer.train(batch)`` runs ``k`` optimiser steps inside one compiled call, where the batch
arrays are shaped (k, sequences, sequence_length): the CPU/GPU counterpart of the IPU's
iterations-per-loop, which removes the per-step Python and dispatch overhead. Per-step
metrics come back as arrays of length k and are checked for non-finite values on the host.
"""

import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from ..models import CharLM
from ..pedal import Execution
from .loss_scaling import LossScaler
from .optimisers import Optimiser, make_optimiser
from .settings import TrainingSettings

STEP_METRICS = (
    "loss",
    "n_tokens",
    "hidden_rms",
    "logits_rms",
    "learning_rate",
    "loss_scale",
    "skipped",
)


class NonFiniteError(FloatingPointError):
    """A loss or weight became NaN/inf; ``step`` (1-based) and ``tensor`` say where."""

    def __init__(self, step: int, tensor: str, metrics: Optional[dict[str, float]] = None):
        super().__init__(f"non-finite {tensor} at step {step}")
        self.step = step
        self.tensor = tensor
        self.metrics = metrics or {}


def bits_per_character(loss: float) -> float:
    """Cross-entropy in nats per character -> bits per character."""
    return loss / math.log(2)


class Trainer:
    """Owns the optimiser and the compiled train/eval functions for one model."""

    def __init__(
        self,
        model: CharLM,
        settings: TrainingSettings,
        execution: Execution,
        seed: int = 0,
        learning_rate_scales: Optional[Sequence[float]] = None,
    ):
        settings.validate()
        self.model = model
        self.settings = settings
        self.execution = execution
        self.variables = list(model.trainable_weights)
        with execution.scope():
            self.optimiser: Optimiser = make_optimiser(
                settings.optimiser,
                self.variables,
                weights=settings.weights,
                learning_rate_scales=learning_rate_scales,
                seed=seed,
            )
            self.loss_scaler = LossScaler(settings)
        self._train_loop = execution.compile(self._train_loop_fn)
        self._eval_step = execution.compile(self._eval_step_fn)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return int(self.optimiser.step.numpy())

    # Compiled bodies -------------------------------------------------------------------------

    def _train_step_fn(self, tokens: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        scaler = self.loss_scaler
        scale = tf.identity(scaler.scale)  # the scale this step used (before any update)
        with tf.GradientTape() as tape:
            outputs = self.model(tokens, mask)
            scaled_loss = scaler.scale_loss(outputs["loss"])
        grads, finite = scaler.unscale(tape.gradient(scaled_loss, self.variables))
        rate = self.optimiser.learning_rate(self.optimiser.step)
        skipped = scaler.step(finite, lambda: self.optimiser.apply(grads))
        return {
            **outputs,
            "learning_rate": rate,
            "loss_scale": scale,
            "skipped": tf.cast(skipped, tf.float32),
        }

    def _train_loop_fn(self, tokens: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        # tokens, mask: (k, sequences, sequence_length)
        count = tf.shape(tokens)[0]
        arrays = {
            name: tf.TensorArray(tf.float32, size=count, element_shape=()) for name in STEP_METRICS
        }
        for i in tf.range(count):
            outputs = self._train_step_fn(tokens[i], mask[i])
            arrays = {name: arrays[name].write(i, outputs[name]) for name in STEP_METRICS}
        results = {name: array.stack() for name, array in arrays.items()}  # each (k,)
        results["weights_finite"] = tf.stack(
            [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for v in self.variables]
        )
        return results

    def _eval_step_fn(self, tokens: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self.model(tokens, mask)
        return {"loss_sum": outputs["loss"] * outputs["n_tokens"], "n_tokens": outputs["n_tokens"]}

    # Host API --------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Optimiser state plus the dynamic loss scale (what a checkpoint must hold)."""
        return {**self.optimiser.state_arrays(), **self.loss_scaler.state_arrays()}

    def set_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Restore from ``state_arrays()``."""
        scaler_state = {k: v for k, v in state.items() if k.startswith("loss_scale/")}
        self.optimiser.set_state_arrays(
            {k: v for k, v in state.items() if not k.startswith("loss_scale/")}
        )
        self.loss_scaler.set_state_arrays(scaler_state)

    def train(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run len(batch["tokens"]) steps; returns per-step metrics (numpy, length k).

        Raises ``NonFiniteError`` naming the first step whose loss is non-finite, or the first
        weight that is non-finite after the loop.
        """
        first_step = self.step
        device_batch = self.execution.to_device(
            {"tokens": batch["tokens"].astype(np.int32, copy=False), "mask": batch["mask"]}
        )
        results = {k: np.asarray(v) for k, v in self._train_loop(**device_batch).items()}
        finite_weights = results.pop("weights_finite")
        bad = np.flatnonzero(~np.isfinite(results["loss"]))
        if bad.size:
            index = int(bad[0])
            last = {k: float(v[index - 1]) for k, v in results.items()} if index else {}
            raise NonFiniteError(first_step + index + 1, "loss", last)
        if not finite_weights.all():
            name = self.variables[int(np.flatnonzero(~finite_weights)[0])].path
            raise NonFiniteError(first_step + len(results["loss"]), f"weight {name}")
        return results

    def evaluate(self, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
        """Token-weighted mean loss and BPC over ``batches`` (each (sequences, length))."""
        loss_sum, n_tokens = 0.0, 0.0
        for out in self.execution.stream(self._eval_step, batches):
            loss_sum += float(out["loss_sum"])
            n_tokens += float(out["n_tokens"])
        if n_tokens == 0:
            raise ValueError("evaluation saw no unmasked tokens")
        loss = loss_sum / n_tokens
        return {"loss": loss, "bpc": bits_per_character(loss), "n_tokens": n_tokens}
