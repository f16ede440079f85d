"""``scmm.uu.EinsumDense``: ``keras.layers.EinsumDense`` with unit-scaled arithmetic.

The kernel starts at N(0, 1) and the einsum is ``scmm.U.weight_einsum``: output scale
fan_in^-1/2 (fan-in = the kernel dims contracted with the input), x-gradient scale
(kernel dims in the output)^-1/2, tied by the constraint; kernel gradient rows^-1/2. The bias
(zeros) is added unscaled; its gradient is scaled by (output size / bias size)^-1/2, the
number of output entries each bias entry is added to. With ``role="readout"`` under u-muP the
output scale is 1/fan_in (mu-P's readout) and an unset constraint leaves it untied.
"""

from typing import Any, Optional, cast

import keras
import tensorflow as tf

from ..ops.kernels import as_compute
from ..parameters import ParameterInfo
from ..uscale.scaling import Constraint, scaling
from ..functional.einsum import kernel_fan_in, parse_equation, weight_einsum
from .base import (
    PACKAGE,
    PrecisionLike,
    RefusesKerasQuantization,
    UnitScaled,
    refuse_lora_and_quantization,
)

ROLES = ("weight", "readout")


def unit_normal() -> keras.initializers.Initializer:
    """The unit-scaled kernel initialiser, N(0, 1)."""
    return keras.initializers.RandomNormal(stddev=1.0)


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"EinsumDense role must be one of {ROLES}, got {role!r}")
    return role


def add_broadcast_bias(y: tf.Tensor, bias: Any) -> tf.Tensor:
    """y + bias (bias broadcast against y's trailing dims), bias gradient (rows)^-1/2 with
    rows = y.size / bias.size: the number of output entries each bias entry reaches."""
    bias_t = as_compute(bias, y.dtype)
    entries = max(int(bias_t.shape.num_elements() or 1), 1)
    if y.shape.is_fully_defined():
        factor: Any = (y.shape.num_elements() / entries) ** -0.5
    else:
        factor = tf.math.rsqrt(tf.cast(tf.size(y), tf.float32) / entries)
    return y + scaling(bias_t, backward=factor)


@keras.saving.register_keras_serializable(package=PACKAGE)
class EinsumDense(UnitScaled, RefusesKerasQuantization, keras.layers.EinsumDense):
    """Unit-scaled ``keras.layers.EinsumDense`` (same arguments; see the module docstring).

    Extra arguments: ``scheme``, ``constraint``, ``precision`` (``scmm.uu.base``) and
    ``role`` ("weight", or "readout" for the output projection). Refused: a non-linear
    ``activation`` (use a ``scmm.uu`` activation layer after it), LoRA, and Keras's
    quantization (``quantize``): simulate formats with ``scmm.simulate_fp8`` instead.
    """

    refused_as = "uu.EinsumDense"
    quantize_refusal = (
        ": its scales would be lost. Simulate number formats with scmm.simulate_fp8 instead"
    )

    def __init__(  # pylint: disable=too-many-arguments,too-many-locals,too-many-positional-arguments
        self,
        equation: str,
        output_shape: Any,
        activation: Any = None,
        bias_axes: Optional[str] = None,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        lora_rank: Optional[int] = None,
        lora_alpha: Optional[float] = None,
        gptq_unpacked_column_size: Optional[int] = None,
        quantization_config: Any = None,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        role: str = "weight",
        **kwargs: Any,
    ):
        refuse_lora_and_quantization(
            "uu.EinsumDense",
            lora_rank,
            quantization_config is not None or bool(gptq_unpacked_column_size),
        )
        super().__init__(
            equation,
            output_shape,
            activation=activation,
            bias_axes=bias_axes,
            kernel_initializer=unit_normal() if kernel_initializer is None else kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            lora_alpha=lora_alpha,
            **kwargs,
        )
        if self.activation not in (None, keras.activations.linear):
            raise ValueError(
                f"uu.EinsumDense computes a linear map, got activation={activation!r}; apply a"
                " scmm.uu activation layer after it"
            )
        self.init_unit_scaling(scheme, constraint, precision)
        self.role = _check_role(role)
        parse_equation(self.equation)  # fail now on equations the scales cannot handle

    @classmethod
    def adopt(
        cls,
        layer: keras.layers.EinsumDense,
        scheme: str,
        constraint: Optional[str],
        precision: PrecisionLike,
    ) -> "EinsumDense":
        """Turn a built Keras ``EinsumDense`` (e.g. inside ``MultiHeadAttention``) into this
        class in place: same object, variables and weight paths; unit-scaled ``call``."""
        if not isinstance(layer, keras.layers.EinsumDense):
            raise ValueError(f"EinsumDense.adopt takes a keras EinsumDense, got {type(layer)}")
        if layer.activation not in (None, keras.activations.linear) or layer.lora_enabled:
            raise ValueError(f"cannot unit-scale {layer.name!r}: it has an activation or LoRA")
        layer.__class__ = cls
        # object.__setattr__: Keras's attribute tracker is locked on a built layer, and
        # these are plain settings, not state to track.
        object.__setattr__(layer, "role", "weight")
        UnitScaled.init_unit_scaling(layer, scheme, constraint, precision)
        return layer

    def _weight_role(self) -> str:
        return "readout" if self.role == "readout" else "weight"

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        del training
        readout = self.role == "readout" and self.scheme == "umup"
        constraint: Optional[Constraint] = cast(Constraint, self.constraint)
        if readout and self._explicit_constraint is None:
            constraint = None  # u-muP's readout is unconstrained by default
        with self.precision_scope():
            y = weight_einsum(self.equation, inputs, self.kernel, constraint, readout=readout)
        if self.bias is not None:
            y = add_broadcast_bias(y, self.bias)
        return y

    def parameter_info(self) -> dict[str, ParameterInfo]:
        if not self.built:
            raise ValueError(f"{self.name}: parameter_info needs a built layer")
        info = {
            "kernel": ParameterInfo(
                self._weight_role(),  # type: ignore[arg-type]
                kernel_fan_in(self.equation, tuple(self._kernel.shape)),
            )
        }
        if self.bias is not None:
            info["bias"] = ParameterInfo("bias")
        return info

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config(), "role": self.role}
