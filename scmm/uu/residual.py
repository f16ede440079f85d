"""``Residual(branch, tau)``: a layer wrapping a branch f in scmm's unit-scaled residual,
y = sqrt(1 - tau) x + sqrt(tau) f(x) (``scmm.U.residual_split`` / ``residual_add``).

The branch is any Keras layer (a ``keras.Sequential`` of ``scmm.uu`` layers, typically) whose
output has the input's shape. It is saved inside the wrapper's config with
``keras.layers.serialize`` and rebuilt with ``keras.layers.deserialize``, so the wrapper
round-trips through ``get_config`` and ``.keras`` files like any layer. Its parameters are
reported with a ``branch.`` prefix (``parameter_info``).
"""

import json
from typing import Any, Mapping, Optional, Union

import keras
import tensorflow as tf

from ..functional import residual
from ..parameters import ParameterInfo
from .base import PACKAGE, PrecisionLike, UnitScaled


@keras.saving.register_keras_serializable(package=PACKAGE)
class Residual(UnitScaled, keras.layers.Layer):
    """x -> sqrt(1 - tau) x + sqrt(tau) branch(x), with unit-scaled gradients both ways.

    ``tau`` in (0, 1) is the branch's share of the output variance (the PyTorch library's
    ratio tau_lib is ``scmm.U.tau_from_library(tau_lib)`` here). ``precision``, when given,
    is the scope the branch runs in; ``constraint`` is stored for a uniform API (the residual
    itself has nothing to tie).
    """

    def __init__(
        self,
        branch: Union[keras.layers.Layer, Mapping[str, Any]],
        tau: float,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if isinstance(branch, Mapping):
            branch = keras.layers.deserialize(dict(branch))
        if not isinstance(branch, keras.layers.Layer):
            raise ValueError(f"Residual branch must be a Keras layer, got {type(branch).__name__}")
        self.tau = residual.check_tau(tau)
        super().__init__(**kwargs)
        self.init_unit_scaling(scheme, constraint, precision)
        self.branch = branch

    def build(self, input_shape: Any) -> None:
        if not self.branch.built:
            self.branch.build(input_shape)
        self.built = True

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        skip, branch_input = residual.residual_split(inputs, self.tau)
        with self.precision_scope():
            branch_output = self.branch(branch_input)
        return residual.residual_add(skip, branch_output, self.tau)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def parameter_info(self) -> dict[str, ParameterInfo]:
        info = getattr(self.branch, "parameter_info", None)
        if info is None:
            return {}
        return {f"branch.{name}": value for name, value in info().items()}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            **self.unit_config(),
            # Through JSON, as a .keras file stores it (tuples come back as lists), so a
            # loaded layer's config equals the original's.
            "branch": json.loads(json.dumps(keras.layers.serialize(self.branch))),
            "tau": self.tau,
        }
