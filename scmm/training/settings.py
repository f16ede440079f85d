"""Training settings: batch, steps, optimiser and its learning-rate schedule, gradient
clipping, accumulation, sparsity, loss scale."""

import dataclasses
import math
from typing import TYPE_CHECKING, Literal, Optional, Sequence, get_args

import draccus

from ..precision_settings import WeightStorage
from .sparsity_settings import SparsitySettings

if TYPE_CHECKING:
    import keras

    from ..parameters import ParameterTable
    from .optimisers import Optimiser
    from .schedules import Schedule

# A loss this many times the uniform-prediction loss (ln V) is divergence; see
# TrainingSettings.divergence_loss for why 10.
DEFAULT_DIVERGENCE_LOSS = 10.0


def check_range(
    path: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False
) -> None:
    """Raise ValueError unless `value` is a finite number in [low, high) ((low, high) when
    `low_open`); NaN fails every comparison, so it fails this too."""
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value < high):
        if math.isinf(high):
            expected = f"{'>' if low_open else '>='} {low:g}"
        else:
            expected = f"in {'(' if low_open else '['}{low:g}, {high:g})"
        raise ValueError(f"{path} must be {expected} and finite, got {value}")


@dataclasses.dataclass
class ScheduleSettings(draccus.ChoiceRegistry):
    """Base of the learning-rate schedules (exponential | warmup_power | cosine).

    The schedule gives the rate of update t, t = 0, 1, ... counting the optimiser's updates (a
    step that dynamic loss scaling skips does not advance it); the peak is
    training.optimiser.learning_rate, and each parameter's multiplier applies on top.
    """

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def build(
        self, learning_rate: float, learning_rate_decay: float, total_steps: Optional[int]
    ) -> "Schedule":
        """The schedule this choice describes, peaking at ``learning_rate``; ``total_steps``
        (training.steps) resolves a null decay_steps."""
        raise NotImplementedError

    def validate(self, optimiser: "OptimiserSettings") -> None:
        """Raise ValueError naming the first impossible value (``optimiser``: the node holding
        this schedule, for the fields they share)."""


@ScheduleSettings.register_subclass("exponential")
@dataclasses.dataclass
class ExponentialScheduleSettings(ScheduleSettings):
    """learning_rate x 2^(-t x learning_rate_decay), both training.optimiser fields (the paper's
    schedule; constant when learning_rate_decay is 0)."""

    def build(
        self, learning_rate: float, learning_rate_decay: float, total_steps: Optional[int]
    ) -> "Schedule":
        from .schedules import Exponential

        return Exponential(learning_rate, learning_rate_decay)


@dataclasses.dataclass
class WarmupDecayScheduleSettings(ScheduleSettings):
    """Fields shared by the schedules that warm up linearly, then decay to a minimum."""

    warmup_steps: int = 0
    """Linear warm-up: the rate is peak x t / warmup_steps for t < warmup_steps, rising from 0
    at t = 0 (the peak is training.optimiser.learning_rate). 0: no warm-up, start at the peak."""
    decay_steps: Optional[int] = None
    """Steps the decay from the peak to the minimum takes after the warm-up; the rate stays at
    the minimum from t = warmup_steps + decay_steps on. null: to the end of the run
    (training.steps - warmup_steps, at least 1)."""
    min_learning_rate_fraction: float = 0.0
    """The minimum the rate decays to, as a fraction of the peak: min =
    min_learning_rate_fraction x training.optimiser.learning_rate, in [0, 1]. Relative, so a
    learning-rate search keeps the schedule's shape, and with independent weight decay its
    factor s(t) = learning_rate(t) / peak."""

    def _decay_steps(self, total_steps: Optional[int]) -> int:
        if self.decay_steps is not None:
            return self.decay_steps
        if total_steps is None:
            raise ValueError(
                f"training.optimiser.schedule.decay_steps is null (decay to the end of the"
                f" run), but the {self.kind} schedule was built without training.steps"
            )
        return max(total_steps - self.warmup_steps, 1)

    def validate(self, optimiser: "OptimiserSettings") -> None:
        path = "training.optimiser.schedule"
        if self.warmup_steps < 0:
            raise ValueError(f"{path}.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise ValueError(
                f"{path}.decay_steps must be >= 1 (null: to the end of the run),"
                f" got {self.decay_steps}"
            )
        check_range(f"{path}.min_learning_rate_fraction", self.min_learning_rate_fraction, 0)
        if self.min_learning_rate_fraction > 1:
            raise ValueError(
                f"{path}.min_learning_rate_fraction must be <= 1 (the minimum is that fraction"
                f" of the peak training.optimiser.learning_rate), got"
                f" {self.min_learning_rate_fraction}"
            )
        if optimiser.learning_rate_decay != 0:
            raise ValueError(
                "training.optimiser.learning_rate_decay is the exponential schedule's rate;"
                f" with training.optimiser.schedule.type={self.kind} it must be 0, got"
                f" {optimiser.learning_rate_decay}"
            )


@ScheduleSettings.register_subclass("warmup_power")
@dataclasses.dataclass
class WarmupPowerScheduleSettings(WarmupDecayScheduleSettings):
    """Linear warm-up over W = warmup_steps, then (peak - min) x (1 - min(t - W, C) / C)^power
    + min over C = decay_steps (Graphcore's sparse-LM schedule; power 0.5: square-root decay)."""

    power: float = 0.5
    """Exponent p of the decay (1: linear, 0.5: square root); > 0."""

    def build(
        self, learning_rate: float, learning_rate_decay: float, total_steps: Optional[int]
    ) -> "Schedule":
        from .schedules import WarmupPower

        return WarmupPower(
            learning_rate,
            self.warmup_steps,
            self._decay_steps(total_steps),
            self.min_learning_rate_fraction * learning_rate,
            self.power,
        )

    def validate(self, optimiser: "OptimiserSettings") -> None:
        super().validate(optimiser)
        check_range("training.optimiser.schedule.power", self.power, 0, low_open=True)


@ScheduleSettings.register_subclass("cosine")
@dataclasses.dataclass
class CosineScheduleSettings(WarmupDecayScheduleSettings):
    """Linear warm-up over W = warmup_steps, then min + (peak - min) x (1 + cos(pi x
    min(t - W, C) / C)) / 2 over C = decay_steps: half a cosine from the peak to the minimum."""

    def build(
        self, learning_rate: float, learning_rate_decay: float, total_steps: Optional[int]
    ) -> "Schedule":
        from .schedules import Cosine

        return Cosine(
            learning_rate,
            self.warmup_steps,
            self._decay_steps(total_steps),
            self.min_learning_rate_fraction * learning_rate,
        )


@dataclasses.dataclass
class OptimiserSettings(draccus.ChoiceRegistry):
    """Base of the optimiser choices (adamw | sgdm): fields shared by both."""

    learning_rate: float = 2**-10
    """Peak learning rate, at step 0 unless the schedule warms up (each parameter's multiplier
    from the scheme applies on top: parameters.json lists the effective rates)."""
    learning_rate_decay: float = 0.0
    """The exponential schedule's rate: learning rate at step t is learning_rate * 2 ** (-t *
    learning_rate_decay). Must be 0 with the other schedules."""
    weight_decay: float = 0.0
    """Decoupled weight decay: w -= learning_rate * weight_decay * w each step."""
    schedule: ScheduleSettings = dataclasses.field(default_factory=ExponentialScheduleSettings)
    """Learning-rate schedule: exponential (learning_rate_decay), warmup_power or cosine (every
    optimiser has one; switching training.optimiser.type resets it too)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def build(
        self,
        variables: Sequence["keras.Variable"],
        parameters: "ParameterTable",
        weights: WeightStorage = "master",
        seed: int = 0,
        weight_decay_mode: str = "coupled",
        total_steps: Optional[int] = None,
    ) -> "Optimiser":
        """The optimiser this choice describes, over ``variables`` (multipliers by path);
        ``total_steps`` (training.steps) ends a schedule whose decay_steps is null."""
        return self.optimiser_class()(
            self,
            variables,
            parameters,
            weights,
            seed,
            weight_decay_mode=weight_decay_mode,
            total_steps=total_steps,
        )

    def optimiser_class(self) -> type["Optimiser"]:
        """The optimiser class of this choice (imported on first use: TensorFlow loads)."""
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        check_range("training.optimiser.learning_rate", self.learning_rate, 0, low_open=True)
        check_range("training.optimiser.learning_rate_decay", self.learning_rate_decay, 0)
        check_range("training.optimiser.weight_decay", self.weight_decay, 0)
        self.schedule.validate(self)


@OptimiserSettings.register_subclass("adamw")
@dataclasses.dataclass
class AdamWSettings(OptimiserSettings):
    """Adam with decoupled weight decay (Loshchilov & Hutter)."""

    beta1: float = 0.9
    """Decay of the first-moment (mean gradient) estimate."""
    beta2: float = 0.999
    """Decay of the second-moment (mean squared gradient) estimate."""
    epsilon: float = 1e-8
    """Added to the root second moment in the update's denominator."""

    def optimiser_class(self) -> type["Optimiser"]:
        from .optimisers import AdamW

        return AdamW

    def validate(self) -> None:
        super().validate()
        for name in ("beta1", "beta2"):
            check_range(f"training.optimiser.{name}", getattr(self, name), 0, 1)
        # eps = 0 divides by zero where a gradient entry has always been zero.
        check_range("training.optimiser.epsilon", self.epsilon, 0, low_open=True)


@OptimiserSettings.register_subclass("sgdm")
@dataclasses.dataclass
class SGDMSettings(OptimiserSettings):
    """SGD with (heavy-ball) momentum."""

    momentum: float = 0.9
    """Velocity decay: v = momentum * v + g."""

    def optimiser_class(self) -> type["Optimiser"]:
        from .optimisers import SGDM

        return SGDM

    def validate(self) -> None:
        super().validate()
        check_range("training.optimiser.momentum", self.momentum, 0, 1)


ClippingMode = Literal["none", "global_norm", "norm", "rms"]
CLIPPING_MODES: tuple[str, ...] = get_args(ClippingMode)


@dataclasses.dataclass
class ClippingSettings:
    """Gradient clipping (scmm/training/clipping.py), applied to the true gradients: after the
    loss scale is divided out and the gradient factors applied, and after the finiteness
    check of dynamic loss scaling, just before the optimiser. Every step logs the global
    gradient norm before clipping (``grad_norm``); the per-tensor modes also log the fraction
    of gradient tensors they clipped (``clipped_fraction``)."""

    mode: ClippingMode = "none"
    """none: no clipping (the gradients reach the optimiser untouched); global_norm: scale
    every gradient by min(1, threshold / global norm), as tf.clip_by_global_norm; norm: clip
    each gradient tensor to L2 norm <= threshold, as tf.clip_by_norm; rms: clip each gradient
    tensor to root-mean-square <= threshold (a norm limit of threshold x sqrt(size)), the
    natural threshold for unit-scaled gradients, whose RMS is about 1 at init."""
    threshold: float = 1.0
    """The limit of the chosen mode: the global norm (global_norm), each tensor's L2 norm
    (norm) or each tensor's RMS (rms); > 0. Ignored when mode is none."""

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        if self.mode not in CLIPPING_MODES:
            modes = ", ".join(repr(m) for m in CLIPPING_MODES)
            raise ValueError(f"training.clipping.mode must be one of {modes}, got {self.mode!r}")
        if self.mode == "none":
            if not math.isfinite(self.threshold):
                raise ValueError(
                    f"training.clipping.threshold must be finite, got {self.threshold}"
                )
        else:
            check_range("training.clipping.threshold", self.threshold, 0, low_open=True)


@dataclasses.dataclass
class TrainingSettings:
    """How the model is trained and evaluated."""

    batch_sequences: int = 8
    """Sequences per batch (each data.sequence_length characters)."""
    steps: int = 2**12
    """Optimiser steps in total."""
    valid_interval: int = 2**10
    """Steps between validations (and checkpoints)."""
    optimiser: OptimiserSettings = dataclasses.field(default_factory=AdamWSettings)
    """Optimiser: adamw or sgdm, each with its own fields."""
    clipping: ClippingSettings = dataclasses.field(default_factory=ClippingSettings)
    """Gradient clipping: mode (none | global_norm | norm | rms) and threshold."""
    loss_scale: float = 1.0
    """Loss scale: the loss is multiplied by it before backprop, gradients divided after
    (the initial scale when loss_scaling=dynamic)."""
    loss_scaling: Literal["static", "dynamic"] = "static"
    """static: loss_scale throughout; dynamic: skip steps with non-finite gradients and shrink
    the scale, grow it after loss_scale_growth_interval finite steps."""
    loss_scale_factor: float = 2.0
    """Dynamic loss scaling: shrink/grow factor."""
    loss_scale_growth_interval: int = 2000
    """Dynamic loss scaling: consecutive finite steps before the scale grows."""
    iterations_per_loop: int = 16
    """Training steps run inside one compiled call (the IPU's iterations-per-loop)."""
    accumulation_steps: int = 1
    """Micro-batches per optimiser step (gradient accumulation): the batch of batch_sequences
    is split into this many equal parts, run one after another, and their gradients combined
    into the full-batch gradient (memory of one part, the update of the whole batch)."""
    accumulation_mode: Literal["mean", "sum"] = "mean"
    """mean: the combined gradient is the full-batch gradient (token-weighted over the parts);
    sum: accumulation_steps times it (Graphcore's Sum: the sum of the parts' mean gradients)."""
    sparsity: SparsitySettings = dataclasses.field(default_factory=SparsitySettings)
    """Sparse training: static, SET or RigL (off at sparsity 0)."""
    divergence_loss: Optional[float] = DEFAULT_DIVERGENCE_LOSS
    """A training loss above divergence_loss x ln(vocabulary size) ends the run as diverged,
    like a non-finite one. ln V is the loss of predicting every character uniformly, about
    where every model starts; 10 x that (47 nats at V = 107) means the model puts e^-47 on
    the right character. Runs that recover spike to a few x ln V (measured: 3.8 x for a
    regular model at AdamW learning rate 0.3, 1.4 x unit-scaled, float32 and float16), while
    an exploding float32 run climbs to 1e13 and beyond, finite, and would otherwise finish.
    null: only non-finite losses and weights are divergence."""

    weight_decay_mode: Literal["coupled", "independent"] = "coupled"
    """coupled: each step decays w by learning_rate(t) x weight_decay (AdamW's decoupled
    decay, so the decay moves with the peak learning rate); independent: by
    weight_decay x s(t), s(t) = learning_rate(t) / learning_rate the schedule factor, so a
    learning-rate sweep leaves the decay alone (u-mup's rule, after Wortsman et al. 2024).
    Each parameter's weight-decay multiplier applies in both; its learning-rate multiplier
    only in coupled."""

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        for name in (
            "batch_sequences",
            "valid_interval",
            "iterations_per_loop",
            "accumulation_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_sequences % self.accumulation_steps:
            raise ValueError(
                f"training.accumulation_steps {self.accumulation_steps} does not divide"
                f" training.batch_sequences {self.batch_sequences} (micro-batches are equal parts)"
            )
        if self.accumulation_mode not in ("mean", "sum"):
            raise ValueError(
                "training.accumulation_mode must be 'mean' or 'sum',"
                f" got {self.accumulation_mode!r}"
            )
        if self.steps < 0:
            raise ValueError(f"training.steps must be >= 0 (0: evaluate only), got {self.steps}")
        check_range("training.loss_scale", self.loss_scale, 0, low_open=True)
        check_range("training.loss_scale_factor", self.loss_scale_factor, 1, low_open=True)
        if self.divergence_loss is not None:
            # <= 1 would stop a healthy run at its first step (the initial loss is about ln V).
            check_range("training.divergence_loss", self.divergence_loss, 1, low_open=True)
        if self.loss_scale_growth_interval < 1:
            raise ValueError(
                "training.loss_scale_growth_interval must be >= 1,"
                f" got {self.loss_scale_growth_interval}"
            )
        self.clipping.validate()
        self.optimiser.validate()
        self.sparsity.validate()
