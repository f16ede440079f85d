"""Small TF-native optimisers (AdamW, SGD with momentum) over a list of Keras variables.

Why not ``keras.optimizers``: scmm needs per-variable learning-rate and weight-decay
multipliers, read by path from the per-parameter table (``scmm.parameters``: unit scaling
divides vector parameters' rate by sqrt(size)), 16-bit weights updated with round-to-nearest or
stochastic rounding, optimiser state addressable by weight name for exact checkpoints, and an
update that runs unchanged inside an XLA-compiled multi-step loop. Slots are always float32.

Under a ``tf.distribute`` strategy with several replicas, gradients are mean-all-reduced
(unless the caller has reduced them already, as the trainer does) and the per-variable
update runs through ``strategy.extended.update`` (the same route Keras' optimisers take), so
mirrored weights stay identical.
"""

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from ..parameters import ParameterTable
from ..precision_settings import WeightStorage
from .rounding import stochastic_round
from .settings import AdamWSettings, OptimiserSettings, SGDMSettings

WEIGHT_DECAY_MODES = ("coupled", "independent")


class Optimiser:
    """Base: learning-rate schedule, slots, weight writing and distribution plumbing."""

    slot_names: tuple[str, ...] = ()

    def __init__(
        self,
        settings: OptimiserSettings,
        variables: Sequence[keras.Variable],
        parameters: ParameterTable,
        weights: WeightStorage = "master",
        seed: int = 0,
        weight_decay_mode: str = "coupled",
        total_steps: Optional[int] = None,
    ):
        """``total_steps`` (training.steps) ends a schedule whose decay_steps is null."""
        settings.validate()
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"weight_decay_mode must be one of {', '.join(WEIGHT_DECAY_MODES)},"
                f" got {weight_decay_mode!r}"
            )
        self.settings = settings
        self.variables = list(variables)
        self.weights = weights
        self.weight_decay_mode = weight_decay_mode
        unknown = [v.path for v in self.variables if v.path not in parameters]
        if unknown:
            raise ValueError(
                f"trainable variable(s) without a role in the parameter table: {unknown[:5]}"
                " (every trainable weight must be created with a role, e.g. through"
                " ScaledLayer.add_parameter, so the scheme can set its learning rate)"
            )
        rows = [parameters[v.path] for v in self.variables]
        # Python floats: compile-time constants of the traced update.
        self.learning_rate_multipliers = [float(r.learning_rate_multiplier) for r in rows]
        self.weight_decay_multipliers = [float(r.weight_decay_multiplier) for r in rows]
        self.seed = seed
        self.schedule = settings.schedule.build(
            settings.learning_rate, settings.learning_rate_decay, total_steps
        )
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="optimiser_step")
        self.slots: dict[str, list[tf.Variable]] = {
            name: [
                tf.Variable(
                    tf.zeros(v.shape, tf.float32),
                    trainable=False,
                    name=f"{v.path.replace('/', '.')}.{name}",
                )
                for v in self.variables
            ]
            for name in self.slot_names
        }

    def learning_rate(self, step: tf.Tensor) -> tf.Tensor:
        """Scheduled learning rate of update ``step`` (0-based, float32): the settings'
        schedule (``scmm.training.schedules``), peaking at settings.learning_rate."""
        return self.schedule(step)

    def _decay(self, decay: float, rate: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """Independent weight decay's change: decay x s(t) x w, where s(t) is the schedule
        factor rate(t) / peak (the peak and the parameter's rate multiplier cancel out)."""
        return (decay * (rate / self.settings.learning_rate)) * weight

    def _prepare(self, step: tf.Tensor) -> None:
        """Per-step quantities shared by all variables (computed once, not per variable)."""
        del step  # a body besides the docstring: AutoGraph cannot convert an empty one

    # Subclasses: return the float32 change to add to the weight, updating slots in place.
    def _delta(
        self, index: int, weight: tf.Tensor, grad: tf.Tensor, rate: tf.Tensor, step: tf.Tensor
    ) -> tf.Tensor:
        raise NotImplementedError

    def apply(self, grads: Sequence[tf.Tensor], reduced: bool = False) -> None:
        """Apply one update from float32 gradients (same order as ``variables``).

        ``reduced``: the gradients are already the global batch's on every replica (the
        trainer combines replicas itself, ``scmm.training.replicas``); otherwise they are
        mean-all-reduced here, which is right only for equal-token, mean-reduced losses.
        """
        grads = [tf.convert_to_tensor(g) for g in grads]  # embedding grads arrive as slices
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None:
            if context.num_replicas_in_sync > 1 and not reduced:
                grads = context.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
            context.merge_call(self._apply_cross_replica, args=(grads,))
        else:
            self._apply_all(grads, strategy=None)

    def _apply_cross_replica(
        self, strategy: tf.distribute.Strategy, grads: Sequence[tf.Tensor]
    ) -> None:
        self._apply_all(grads, strategy)

    def _apply_all(
        self, grads: Sequence[tf.Tensor], strategy: Optional[tf.distribute.Strategy]
    ) -> None:
        step = self.step + 1  # 1-based inside the update (Adam's bias correction)
        rate = self.learning_rate(self.step)
        self._prepare(step)
        for index, (variable, grad) in enumerate(zip(self.variables, grads)):

            def update(var: tf.Variable, grad: tf.Tensor, index: int = index) -> tf.Tensor:
                weight = tf.cast(tf.convert_to_tensor(var), tf.float32)
                delta = self._delta(index, weight, tf.cast(grad, tf.float32), rate, step)
                return var.assign(self._write(weight + delta, var.dtype, index, step))

            if strategy is None:
                update(variable, grad)
            else:
                # ``extended.update`` needs the distributed tf.Variable a Keras variable wraps
                # (as in Keras' own optimisers); ``update`` then runs once per local replica.
                target = variable.value if isinstance(variable, keras.Variable) else variable
                strategy.extended.update(target, update, args=(grad,))
        if strategy is None:
            self.step.assign_add(1)
        else:
            strategy.extended.update(self.step, lambda s: s.assign_add(1))

    def _write(self, value: tf.Tensor, dtype: tf.DType, index: int, step: tf.Tensor) -> tf.Tensor:
        dtype = tf.as_dtype(dtype)
        if dtype == tf.float32:
            return value
        if self.weights == "stochastic":
            seed = tf.stack([tf.constant(self.seed * 100003 + index, tf.int64), step])
            return stochastic_round(value, dtype, seed)
        return tf.cast(value, dtype)  # round to nearest even

    # Checkpointing -------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Optimiser state by name: ``step`` and ``<weight path>/<slot>`` (float32)."""
        state = {"step": np.asarray(self.step.numpy())}
        for name, slots in self.slots.items():
            for variable, slot in zip(self.variables, slots):
                state[f"{variable.path}/{name}"] = slot.numpy()
        return state

    def set_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Restore from ``state_arrays()`` output; names and shapes must match exactly."""
        expected = set(self.state_arrays())
        if set(state) != expected:
            raise ValueError(
                "optimiser state names differ: missing"
                f" {sorted(expected - set(state))}, unexpected {sorted(set(state) - expected)}"
            )
        for name, slots in self.slots.items():  # check everything before assigning anything
            for variable, slot in zip(self.variables, slots):
                key = f"{variable.path}/{name}"
                if tuple(np.shape(state[key])) != tuple(slot.shape):
                    raise ValueError(
                        f"optimiser state {key}: shape {np.shape(state[key])}"
                        f" != expected {tuple(slot.shape)}"
                    )
        self.step.assign(int(state["step"]))
        for name, slots in self.slots.items():
            for variable, slot in zip(self.variables, slots):
                slot.assign(state[f"{variable.path}/{name}"])


class AdamW(Optimiser):
    """Adam with bias correction and decoupled weight decay."""

    slot_names = ("m", "v")
    _corrections: tuple[tf.Tensor, tf.Tensor]

    def _decay(self, decay: float, rate: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """Independent weight decay's change: decay x s(t) x w, where s(t) is the schedule
        factor rate(t) / peak (the peak and the parameter's rate multiplier cancel out)."""
        return (decay * (rate / self.settings.learning_rate)) * weight

    def _prepare(self, step: tf.Tensor) -> None:
        assert isinstance(self.settings, AdamWSettings)
        t = tf.cast(step, tf.float32)
        self._corrections = (
            1 - tf.pow(self.settings.beta1, t),
            1 - tf.pow(self.settings.beta2, t),
        )

    def _delta(
        self, index: int, weight: tf.Tensor, grad: tf.Tensor, rate: tf.Tensor, step: tf.Tensor
    ) -> tf.Tensor:
        assert isinstance(self.settings, AdamWSettings)
        s = self.settings
        m, v = self.slots["m"][index], self.slots["v"][index]
        m.assign(s.beta1 * m + (1 - s.beta1) * grad)
        v.assign(s.beta2 * v + (1 - s.beta2) * tf.square(grad))
        m_hat = m / self._corrections[0]
        v_hat = v / self._corrections[1]
        scaled_rate = rate * self.learning_rate_multipliers[index]
        decay = s.weight_decay * self.weight_decay_multipliers[index]
        if self.weight_decay_mode == "independent":
            return -scaled_rate * (m_hat / (tf.sqrt(v_hat) + s.epsilon)) - self._decay(
                decay, rate, weight
            )
        return -scaled_rate * (m_hat / (tf.sqrt(v_hat) + s.epsilon) + decay * weight)


class SGDM(Optimiser):
    """SGD with heavy-ball momentum: v = mu v + g; w -= lr (v + wd w)."""

    slot_names = ("velocity",)

    def _delta(
        self, index: int, weight: tf.Tensor, grad: tf.Tensor, rate: tf.Tensor, step: tf.Tensor
    ) -> tf.Tensor:
        assert isinstance(self.settings, SGDMSettings)
        velocity = self.slots["velocity"][index]
        velocity.assign(self.settings.momentum * velocity + grad)
        scaled_rate = rate * self.learning_rate_multipliers[index]
        decay = self.settings.weight_decay * self.weight_decay_multipliers[index]
        if self.weight_decay_mode == "independent":
            return -scaled_rate * velocity - self._decay(decay, rate, weight)
        return -scaled_rate * (velocity + decay * weight)
