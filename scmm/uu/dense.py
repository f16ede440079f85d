"""``scmm.uu.Dense`` / ``DenseReadout``: ``keras.layers.Dense`` with unit-scaled arithmetic.

The kernel starts at N(0, 1); ``call`` is ``scmm.U.linear`` (output fan_in^-1/2, x-gradient
fan_out^-1/2, tied by the constraint; kernel and bias gradients rows^-1/2). ``role="readout"``
is the model's output layer: under u-mup it is mu-P's readout (``scmm.U.readout``: output
1/fan_in, untied unless a constraint is given); under unit scaling it is the ordinary
projection with the constraint given (``unit_scale`` passes "separate": after the last residual
add every edge is a cut edge). A non-linear ``activation`` is applied unit-scaled (relu and
gelu from ``scmm.uscale``, others from ``scmm.U`` when it has them), else refused.
"""

from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from .. import uscale
from ..parameters import ParameterInfo
from ..functional.linear import linear, readout
from .base import PACKAGE, PrecisionLike, UnitScaled
from .einsum_dense import unit_normal

ROLES = ("weight", "readout")


def unit_activation(name: str, constraint: str) -> Optional[Callable[[tf.Tensor], tf.Tensor]]:
    """The unit-scaled activation called ``name`` (None for linear); ValueError if unknown."""
    if name in ("linear", "None"):
        return None
    if name == "relu":
        return lambda x: uscale.relu(x, constraint)  # type: ignore[arg-type]
    if name == "gelu":  # keras.activations.gelu: the exact (erf) form
        return lambda x: uscale.gelu(x, constraint)  # type: ignore[arg-type]
    from .. import functional  # pylint: disable=import-outside-toplevel

    fn = getattr(functional, name, None)
    if fn is None:
        raise ValueError(f"no unit-scaled activation {name!r}; use relu, gelu or linear")
    return lambda x: fn(x, constraint=constraint)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dense(UnitScaled, keras.layers.Dense):
    """Unit-scaled ``keras.layers.Dense`` (same arguments; see the module docstring).

    Extra: ``scheme``, ``constraint``, ``precision`` (``scmm.uu.base``) and ``role``. Refused:
    LoRA and Keras's quantization (simulate formats with ``scmm.simulate_fp8``).
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        lora_rank: Optional[int] = None,
        quantization_config: Any = None,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        role: str = "weight",
        **kwargs: Any,
    ):
        if lora_rank:
            raise ValueError(f"uu.Dense does not support LoRA, got lora_rank={lora_rank}")
        if quantization_config is not None:
            raise ValueError("uu.Dense does not support Keras quantization; use scmm.simulate_fp8")
        if role not in ROLES:
            raise ValueError(f"uu.Dense role must be one of {ROLES}, got {role!r}")
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=unit_normal() if kernel_initializer is None else kernel_initializer,
            bias_initializer=bias_initializer,
            **kwargs,
        )
        self.init_unit_scaling(scheme, constraint, precision)
        self.role = role
        self._unit_activation = unit_activation(
            keras.activations.serialize(self.activation) if activation else "linear",
            self.constraint,
        )

    def call(self, inputs: tf.Tensor, training: Any = None) -> tf.Tensor:
        del training
        with self.precision_scope():
            if self.role == "readout" and self.scheme == "umup":
                explicit = self._explicit_constraint
                y = readout(inputs, self.kernel, self.bias, explicit)  # type: ignore[arg-type]
            else:
                y = linear(inputs, self.kernel, self.bias, self.constraint)  # type: ignore[arg-type]
        return y if self._unit_activation is None else self._unit_activation(y)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        if not self.built:
            raise ValueError(f"{self.name}: parameter_info needs a built layer")
        role = "readout" if self.role == "readout" else "weight"
        info = {"kernel": ParameterInfo(role, int(self._kernel.shape[0]))}  # type: ignore[arg-type]
        if self.bias is not None:
            info["bias"] = ParameterInfo("bias")
        return info

    def quantize(self, mode: Any = None, type_check: bool = True, config: Any = None) -> None:
        del type_check, config
        raise ValueError(
            f"uu.Dense cannot be quantized with Keras (mode={mode!r}): Keras's float8 path would"
            " drop the unit scales. Simulate number formats with scmm.simulate_fp8 instead"
        )

    def enable_lora(self, rank: int, *args: Any, **kwargs: Any) -> None:
        del args, kwargs
        raise ValueError(f"uu.Dense does not support LoRA (rank {rank})")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config(), "role": self.role}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DenseReadout(Dense):
    """``uu.Dense`` with ``role="readout"`` (the PyTorch library's ``LinearReadout``)."""

    def __init__(self, units: int, **kwargs: Any):
        kwargs.setdefault("role", "readout")
        super().__init__(units, **kwargs)
