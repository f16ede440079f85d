"""``scmm.uu.Dense`` / ``DenseReadout``: ``keras.layers.Dense`` with unit-scaled arithmetic.

The kernel starts at N(0, 1) and ``call`` is ``scmm.U.linear`` (output fan_in^-1/2,
x-gradient fan_out^-1/2, tied by the constraint; kernel and bias gradients rows^-1/2).

``role="readout"`` marks the model's output layer (``DenseReadout``, the PyTorch library's
``LinearReadout``):

- under "umup" it is mu-P's readout, ``scmm.U.readout``: output 1/fan_in, x-gradient
  fan_out^-1/2, untied unless ``constraint`` is given ("forward" ties both to 1/fan_in);
- under "unit" it is the unit-scaling paper's output projection: ``scmm.U.linear`` with the
  constraint given, "separate" by default (unit output *and* unit x-gradient). The readout
  comes after the last residual add, where the paper treats every edge as a cut edge; its x's
  gradient is then the true one times a constant (fan_in / fan_out)^1/4 relative to "gmean".

A non-linear ``activation`` is applied unit-scaled with the layer's constraint
(``scmm.uu.activation``: relu, gelu (Keras's erf form), silu, tanh, sigmoid); any other is
refused. Refused too: LoRA and Keras's quantization (``quantize``, ``quantization_config``
and quantized dtype policies such as "int8_from_float32"), whose kernels bypass the unit
scales; simulate number formats with ``scmm.simulate_fp8`` / ``precision=`` instead.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional.linear import linear, readout
from ..parameters import ParameterInfo
from .activation import activation_name, unit_activation
from .base import (  # refuse_keras_quantization: uu.Conv1D and uu.Embedding import it from here
    PACKAGE,
    PrecisionLike,
    RefusesKerasQuantization,
    UnitScaled,
    refuse_keras_quantization,
    refuse_lora_and_quantization,
)
from .einsum_dense import unit_normal

ROLES = ("weight", "readout")


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dense(UnitScaled, RefusesKerasQuantization, keras.layers.Dense):
    """Unit-scaled ``keras.layers.Dense`` (same arguments; see the module docstring).

    Extra: ``scheme``, ``constraint``, ``precision`` (``scmm.uu.base``) and ``role``
    ("weight" or "readout").
    """

    refused_as = "uu.Dense"
    quantize_refusal = (
        ": Keras's float8 path would drop the unit scales. Simulate number formats with"
        " scmm.simulate_fp8 instead"
    )

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        lora_rank: Optional[int] = None,
        lora_alpha: Optional[float] = None,
        quantization_config: Any = None,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        role: str = "weight",
        **kwargs: Any,
    ):
        del lora_alpha  # (LoRA is refused below)
        refuse_lora_and_quantization("uu.Dense", lora_rank, quantization_config is not None)
        if role not in ROLES:
            raise ValueError(f"uu.Dense role must be one of {ROLES}, got {role!r}")
        self.activation_name = activation_name(activation)
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=unit_normal() if kernel_initializer is None else kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            **kwargs,
        )
        refuse_keras_quantization(self, "uu.Dense")
        self.init_unit_scaling(scheme, constraint, precision)
        self.role = role

    @property
    def product_constraint(self) -> Optional[str]:
        """The constraint ``call`` passes to its product (None: the umup readout, untied)."""
        if self.role != "readout":
            return self.constraint
        if self.scheme == "umup":
            return self._explicit_constraint
        return "separate" if self._explicit_constraint is None else self._explicit_constraint

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        del training
        constraint: Any = self.product_constraint
        with self.precision_scope():
            if self.role == "readout" and self.scheme == "umup":
                y = readout(inputs, self.kernel, self.bias, constraint)  # (..., units)
            else:
                y = linear(inputs, self.kernel, self.bias, constraint)  # (..., units)
            return unit_activation(self.activation_name, y, 1.0, self.constraint)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        if not self.built:
            raise ValueError(f"{self.name}: parameter_info needs a built layer")
        role: Any = "readout" if self.role == "readout" else "weight"
        info = {"kernel": ParameterInfo(role, int(self._kernel.shape[0]))}
        if self.bias is not None:
            info["bias"] = ParameterInfo("bias")
        return info

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config(), "role": self.role}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseReadout(Dense):
    """``uu.Dense`` with ``role="readout"`` (the PyTorch library's ``LinearReadout``)."""

    def __init__(self, units: int, **kwargs: Any):
        kwargs.setdefault("role", "readout")
        super().__init__(units, **kwargs)
