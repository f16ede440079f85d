"""Learning-rate schedules: the float32 rate of update ``step`` (0-based), in TensorFlow ops.

Each schedule is a pure function of the optimiser's step counter, evaluated inside the
compiled (XLA) training loop; the piecewise ones use ``tf.where``, not Python branches on
tensors. Their settings, and the formulas, are ``scmm.training.settings``'
``*ScheduleSettings`` (``training.optimiser.schedule``).
"""

import math

import tensorflow as tf


class Schedule:
    """A learning-rate schedule peaking at ``peak`` (training.optimiser.learning_rate)."""

    def __init__(self, peak: float):
        self.peak = float(peak)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        """The learning rate of update ``step`` (an integer tensor), float32."""
        raise NotImplementedError


class Exponential(Schedule):
    """peak x 2^(-step x decay); exactly the ops of scmm before the schedules were added, so
    existing runs stay bit-identical."""

    def __init__(self, peak: float, decay: float):
        super().__init__(peak)
        self.decay = float(decay)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rate = tf.constant(self.peak, tf.float32)
        if self.decay:
            rate = rate * tf.pow(2.0, -tf.cast(step, tf.float32) * self.decay)
        return rate


class WarmupDecay(Schedule):
    """Linear warm-up from 0 to the peak over ``warmup_steps`` updates, then a decay shape
    ``_shape(progress)`` (1 at progress 0, 0 at 1) from the peak to ``minimum`` over
    ``decay_steps`` updates, and ``minimum`` after."""

    def __init__(self, peak: float, warmup_steps: int, decay_steps: int, minimum: float):
        super().__init__(peak)
        if warmup_steps < 0 or decay_steps < 1 or not 0 <= minimum <= peak:
            raise ValueError(
                f"bad schedule: warmup_steps={warmup_steps} (>= 0), decay_steps={decay_steps}"
                f" (>= 1), minimum={minimum} (in [0, peak={peak}])"
            )
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.minimum = float(minimum)

    def _shape(self, progress: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        t = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak, tf.float32)
        minimum = tf.constant(self.minimum, tf.float32)
        warmup = float(self.warmup_steps)
        # Clipped after the division: XLA may divide as x * (1 / C), which overshoots 1 by an
        # ulp at t = W + C, and (1 - progress)^p of a negative base is NaN.
        progress = tf.clip_by_value((t - warmup) / float(self.decay_steps), 0.0, 1.0)
        decayed = (peak - minimum) * self._shape(progress) + minimum
        if not self.warmup_steps:
            return decayed
        return tf.where(t < warmup, peak * (t / warmup), decayed)


class WarmupPower(WarmupDecay):
    """Warm-up, then (peak - min) x (1 - progress)^power + min."""

    def __init__(  # pylint: disable=too-many-arguments
        self, peak: float, warmup_steps: int, decay_steps: int, minimum: float, power: float
    ):
        super().__init__(peak, warmup_steps, decay_steps, minimum)
        if not power > 0:
            raise ValueError(f"bad schedule: power={power} (> 0)")
        self.power = float(power)

    def _shape(self, progress: tf.Tensor) -> tf.Tensor:
        return tf.pow(1.0 - progress, self.power)


class Cosine(WarmupDecay):
    """Warm-up, then min + (peak - min) x (1 + cos(pi x progress)) / 2."""

    def _shape(self, progress: tf.Tensor) -> tf.Tensor:
        return 0.5 * (1.0 + tf.cos(math.pi * progress))
