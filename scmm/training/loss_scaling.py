"""Loss scaling: the paper's static scale, and the standard dynamic scheme for FP16 baselines.

Static: the loss is multiplied by ``loss_scale`` before backprop and the gradients divided
after. Dynamic (``training.loss_scaling=dynamic``, the usual FP16 mixed-precision recipe):
start at ``loss_scale``; a step whose gradients contain inf/NaN is *skipped* (no weight or
optimiser-state update) and the scale divided by ``loss_scale_factor``; after
``loss_scale_growth_interval`` consecutive finite steps the scale is multiplied by it. The
scale and the run of finite steps are checkpointed with the optimiser state (exact resume);
every step logs the scale in use and whether it was skipped.
"""

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from .settings import TrainingSettings

# The scale never drops below this (a run whose gradients are non-finite at scale 1 is
# diverging, which the trainer reports instead of skipping forever).
MIN_SCALE = 1.0


class LossScaler:
    """Scales the loss, unscales gradients and decides whether a step is applied."""

    def __init__(self, settings: TrainingSettings):
        self.dynamic = settings.loss_scaling == "dynamic"
        self.factor = float(settings.loss_scale_factor)
        self.interval = int(settings.loss_scale_growth_interval)
        # Under a tf.distribute strategy the scale is assigned inside each replica; every
        # replica computes the same value (from all-reduced gradients), so the first one's
        # is kept (an ordinary variable on one device).
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(
            float(settings.loss_scale), trainable=False, dtype=tf.float32, aggregation=first
        )
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, aggregation=first)

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        """loss * scale (in the loss's dtype)."""
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, grads: Sequence[tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor]:
        """(float32 gradients divided by the scale, all-finite flag)."""
        grads = [tf.cast(tf.convert_to_tensor(g), tf.float32) for g in grads]
        grads = [g / self.scale for g in grads]
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return grads, finite

    def step(self, finite: tf.Tensor, apply: Callable[[], None]) -> tf.Tensor:
        """Run ``apply`` unless a dynamic step overflowed; update the scale. Returns skipped."""
        if not self.dynamic:
            apply()  # static: non-finite values reach the weights and are reported as divergence
            return tf.constant(False)

        def applied() -> tf.Tensor:
            apply()
            grown = self.good_steps + 1 >= self.interval
            self.scale.assign(tf.where(grown, self.scale * self.factor, self.scale))
            self.good_steps.assign(tf.where(grown, tf.constant(0, tf.int64), self.good_steps + 1))
            return tf.constant(False)

        def skipped() -> tf.Tensor:
            self.scale.assign(tf.maximum(self.scale / self.factor, MIN_SCALE))
            self.good_steps.assign(0)
            return tf.constant(True)

        return tf.cond(finite, applied, skipped)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Checkpointed state (empty for a static scale, which the settings fully define)."""
        if not self.dynamic:
            return {}
        return {
            "loss_scale/scale": np.asarray(self.scale.numpy()),
            "loss_scale/good_steps": np.asarray(self.good_steps.numpy()),
        }

    def set_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Restore from ``state_arrays()``."""
        if self.dynamic:
            self.scale.assign(float(state["loss_scale/scale"]))
            self.good_steps.assign(int(state["loss_scale/good_steps"]))
