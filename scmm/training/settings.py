"""Training settings: batch, steps, optimiser, loss scale and how 16-bit weights are kept."""

import dataclasses
from typing import TYPE_CHECKING, Literal, Sequence

import draccus

from ..precision_settings import WeightStorage

if TYPE_CHECKING:
    import keras

    from ..parameters import ParameterTable
    from .optimisers import Optimiser


@dataclasses.dataclass
class OptimiserSettings(draccus.ChoiceRegistry):
    """Base of the optimiser choices (adamw | sgdm): fields shared by both."""

    learning_rate: float = 2**-10
    """Peak learning rate, at step 0 (each parameter's multiplier from the scheme applies on
    top: parameters.json lists the effective rates)."""
    learning_rate_decay: float = 0.0
    """Learning rate at step t is learning_rate * 2 ** (-t * learning_rate_decay)."""
    weight_decay: float = 0.0
    """Decoupled weight decay: w -= learning_rate * weight_decay * w each step."""

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
    ) -> "Optimiser":
        """The optimiser this choice describes, over ``variables`` (multipliers by path)."""
        return self.optimiser_class()(self, variables, parameters, weights, seed)

    def optimiser_class(self) -> type["Optimiser"]:
        """The optimiser class of this choice (imported on first use: TensorFlow loads)."""
        raise NotImplementedError

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        if not self.learning_rate > 0:
            raise ValueError(
                f"training.optimiser.learning_rate must be > 0, got {self.learning_rate}"
            )
        if self.learning_rate_decay < 0:
            raise ValueError(
                "training.optimiser.learning_rate_decay must be >= 0,"
                f" got {self.learning_rate_decay}"
            )
        if self.weight_decay < 0:
            raise ValueError(
                f"training.optimiser.weight_decay must be >= 0, got {self.weight_decay}"
            )


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
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"training.optimiser.{name} must be in [0, 1), got {getattr(self, name)}"
                )


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
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"training.optimiser.momentum must be in [0, 1), got {self.momentum}")


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

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value."""
        for name in ("batch_sequences", "valid_interval", "iterations_per_loop"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"training.steps must be >= 0 (0: evaluate only), got {self.steps}")
        if not self.loss_scale > 0:
            raise ValueError(f"training.loss_scale must be > 0, got {self.loss_scale}")
        if not self.loss_scale_factor > 1:
            raise ValueError(
                f"training.loss_scale_factor must be > 1, got {self.loss_scale_factor}"
            )
        if self.loss_scale_growth_interval < 1:
            raise ValueError(
                "training.loss_scale_growth_interval must be >= 1,"
                f" got {self.loss_scale_growth_interval}"
            )
        self.optimiser.validate()
