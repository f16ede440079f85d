"""Unit-scaled activation layers: ``Activation`` and ``ReLU`` (``scmm.U``'s elementwise ops).

``Activation`` takes the name of a Keras activation it has a unit-scaled twin for. Keras's
``"gelu"`` activation is the exact (erf) form (``keras.activations.gelu`` defaults to
``approximate=False``, unlike ``keras.ops.gelu``), so the layer uses that form and its scales.
"""

from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from ..functional import elementwise
from .base import PACKAGE, PrecisionLike, UnitScaled

# Keras's serialised activation name -> the unit-scaled op (mult and constraint as keywords).
_UNIT_ACTIVATIONS: dict[str, Callable[..., tf.Tensor]] = {
    "relu": lambda x, mult, constraint: elementwise.relu(x, constraint),
    "gelu": lambda x, mult, constraint: elementwise.gelu(x, False, mult, constraint),
    "silu": elementwise.silu,
    "tanh": lambda x, mult, constraint: elementwise.tanh(x, constraint),
    "sigmoid": lambda x, mult, constraint: elementwise.sigmoid(x, constraint),
    "linear": lambda x, mult, constraint: x,
}
UNIT_ACTIVATIONS = tuple(_UNIT_ACTIVATIONS)
_TEMPERED = ("gelu", "silu")


def activation_name(activation: Any) -> str:
    """Keras's name for ``activation`` (a name or a Keras activation function), if scmm has a
    unit-scaled twin of it; else a ValueError."""
    if activation is None:
        activation = "linear"
    try:
        name = keras.activations.serialize(keras.activations.get(activation))
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"unknown activation {activation!r}; scmm.uu has unit-scaled {UNIT_ACTIVATIONS}"
        ) from error
    if not isinstance(name, str) or name not in _UNIT_ACTIVATIONS:
        raise ValueError(
            f"no unit-scaled version of activation {activation!r}; scmm.uu.Activation"
            f" supports {UNIT_ACTIVATIONS}"
        )
    return name


def unit_activation(name: str, x: tf.Tensor, mult: float, constraint: str) -> tf.Tensor:
    """The unit-scaled activation ``name`` (from ``activation_name``) of x."""
    return _UNIT_ACTIVATIONS[name](x, mult, constraint)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Activation(UnitScaled, keras.layers.Activation):
    """``keras.layers.Activation`` unit-scaled: relu, gelu (erf form), silu, tanh, sigmoid or
    linear. ``mult`` tempers gelu (gelu(mult x) / mult) and silu (x sigmoid(mult x)); it must
    stay 1 for the others."""

    def __init__(
        self,
        activation: Any,
        *,
        mult: float = 1.0,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        name = activation_name(activation)
        mult = elementwise.check_mult(mult, f"activation {name!r}")
        if mult != 1.0 and name not in _TEMPERED:
            raise ValueError(f"mult applies to {_TEMPERED} only; got mult={mult} for {name!r}")
        super().__init__(name, **kwargs)
        self.init_unit_scaling(scheme, constraint, precision)
        self.activation_name = name
        self.mult = mult

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        with self.precision_scope():
            return unit_activation(self.activation_name, inputs, self.mult, self.constraint)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config(), "mult": self.mult}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ReLU(UnitScaled, keras.layers.ReLU):
    """``keras.layers.ReLU`` unit-scaled. Only the plain ReLU has unit scales, so
    ``max_value``, ``negative_slope`` and ``threshold`` must keep their defaults."""

    def __init__(
        self,
        max_value: Optional[float] = None,
        negative_slope: float = 0.0,
        threshold: float = 0.0,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        options = {"max_value": max_value, "negative_slope": negative_slope, "threshold": threshold}
        defaults = {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}
        changed = {k: v for k, v in options.items() if v != defaults[k]}
        if changed:
            raise ValueError(
                f"scmm.uu.ReLU supports only the plain ReLU; got {changed}"
                " (max_value=None, negative_slope=0, threshold=0 expected)"
            )
        super().__init__(max_value, negative_slope, threshold, **kwargs)
        self.init_unit_scaling(scheme, constraint, precision)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        with self.precision_scope():
            return elementwise.relu(inputs, self.constraint)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}
