"""Layers the ``unit_scale`` transform inserts into a Functional graph.

A Functional model's ``x + f(x)`` and ``keras.ops`` calls are graph nodes, not layers, so the
transform needs layers to put in their place (symbolic tensors can only pass through layers and
``keras.ops``):

- ``ResidualBranch(tau)``: the branch's input, identity forward, gradient times sqrt(tau)
  (``scmm.uscale.residual_split``); the skip itself passes unchanged.
- ``ResidualMerge(tau)``: ``sqrt(1 - tau) skip + sqrt(tau) branch`` with the branch's gradient
  left unit (``scmm.uscale.residual_add``). Together they are the residual of scmm's models.
- ``FunctionalOp(function, options)``: calls ``scmm.U.<function>`` (``matmul``, ``einsum``,
  ``softmax``, ...) with fixed keyword options, in place of the ``keras.ops`` call of that name.

They are ordinary registered layers, so a transformed model saves to ``.keras`` and loads back.
"""

import inspect
from typing import Any, Mapping, Optional

import keras
import tensorflow as tf

from .. import uscale
from .base import PACKAGE, PrecisionLike, UnitScaled

# Options an op takes positionally before its tensor inputs.
LEADING_OPTIONS = ("subscripts",)


def _check_tau(tau: float) -> float:
    if not 0.0 < float(tau) < 1.0:
        raise ValueError(f"residual tau must be in (0, 1), got {tau!r}")
    return float(tau)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBranch(keras.layers.Layer):
    """The input of a residual branch: x in the forward pass, gradient times sqrt(tau)."""

    def __init__(self, tau: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.tau = _check_tau(tau)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        return uscale.residual_split(inputs, self.tau)[1]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tau": self.tau}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualMerge(keras.layers.Layer):
    """``[skip, branch] -> sqrt(1 - tau) skip + sqrt(tau) branch`` (unit-scaled residual add)."""

    def __init__(self, tau: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.tau = _check_tau(tau)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:  # pylint: disable=arguments-differ
        if len(inputs) != 2:
            raise ValueError(f"ResidualMerge takes [skip, branch], got {len(inputs)} tensors")
        skip, branch = inputs
        return uscale.residual_add(skip, branch, self.tau)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tau": self.tau}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FunctionalOp(UnitScaled, keras.layers.Layer):
    """``scmm.U.<function>(*inputs, **options)`` as a layer (positional tensor inputs)."""

    def __init__(
        self,
        function: str,
        options: Optional[Mapping[str, Any]] = None,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.init_unit_scaling(scheme, constraint, precision)
        from .. import functional  # pylint: disable=import-outside-toplevel

        if not callable(getattr(functional, function, None)):
            raise ValueError(f"scmm.U has no op {function!r}")
        self.function = function
        self.options = dict(options or {})

    def call(self, *inputs: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        from .. import functional  # pylint: disable=import-outside-toplevel

        fn = getattr(functional, self.function)
        options = dict(self.options)
        if "constraint" in inspect.signature(fn).parameters:
            options["constraint"] = self.constraint
        # keras.ops.einsum's subscripts come before its operands (U.einsum(subscripts, x, y)).
        leading = [options.pop(name) for name in LEADING_OPTIONS if name in options]
        with self.precision_scope():
            return fn(*leading, *inputs, **options)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self.unit_config(),
            "function": self.function,
            "options": dict(self.options),
        }
