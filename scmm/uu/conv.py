"""``scmm.uu.Conv1D``: ``keras.layers.Conv1D`` with a unit kernel and a unit-scaled product.

``call`` is ``scmm.U.conv1d`` (output (k c_in / groups)^-1/2, x-gradient
(k c_out / (groups s))^-1/2, tied by the constraint; kernel gradient (batch out_steps)^-1/2),
then the bias (gradient rows^-1/2, ``scmm.U.linear``'s bias rule) and a unit-scaled
activation (``scmm.uu.activation``). Padding "valid", "same" or "causal", strides, dilation
and groups as in Keras. Refused: channels_first data (the ops are written for channels_last),
LoRA and Keras's quantized dtype policies (their kernels bypass the unit scales).
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional.conv import conv1d
from ..functional.linear import bias_add
from ..parameters import ParameterInfo
from .activation import activation_name, unit_activation
from .base import PACKAGE, PrecisionLike, UnitScaled
from .dense import refuse_keras_quantization
from .einsum_dense import unit_normal


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv1D(UnitScaled, keras.layers.Conv1D):
    """Unit-scaled ``keras.layers.Conv1D`` (same arguments; channels_last only; plus
    ``scheme``, ``constraint``, ``precision``)."""

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = 1,
        padding: str = "valid",
        data_format: Optional[str] = None,
        dilation_rate: Any = 1,
        groups: int = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = None,
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        *,
        lora_rank: Optional[int] = None,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if data_format not in (None, "channels_last"):
            raise ValueError(f"uu.Conv1D supports channels_last only, got {data_format!r}")
        if lora_rank:
            raise ValueError(f"uu.Conv1D does not support LoRA, got lora_rank={lora_rank}")
        self.activation_name = activation_name(activation)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format="channels_last",
            dilation_rate=dilation_rate,
            groups=groups,
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
        refuse_keras_quantization(self, "uu.Conv1D")
        self.init_unit_scaling(scheme, constraint, precision)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:  # pylint: disable=arguments-differ
        with self.precision_scope():
            y = conv1d(
                inputs,
                self.kernel,
                strides=self.strides[0],
                padding=self.padding,
                dilation_rate=self.dilation_rate[0],
                groups=self.groups,
                constraint=self.constraint,  # type: ignore[arg-type]
            )  # (batch, out_steps, filters)
            if self.use_bias:
                y = bias_add(y, self.bias)
            return unit_activation(self.activation_name, y, 1.0, self.constraint)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        if not self.built:
            raise ValueError(f"{self.name}: parameter_info needs a built layer")
        taps, group_in, _ = (int(d) for d in self._kernel.shape)
        info = {"kernel": ParameterInfo("weight", taps * group_in)}
        if self.use_bias:
            info["bias"] = ParameterInfo("bias")
        return info

    def enable_lora(self, rank: int, *args: Any, **kwargs: Any) -> None:
        del args, kwargs
        raise ValueError(f"uu.Conv1D does not support LoRA (rank {rank})")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}
