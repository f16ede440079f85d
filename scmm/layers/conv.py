"""Causal grouped 1-D convolution sequence mixer."""

from typing import Any

import keras
import tensorflow as tf

from .base import ScaledLayer


@keras.saving.register_keras_serializable(package="scmm")
class CausalConv(ScaledLayer):
    """y_t = ReLU(b + sum_{k<K} W_k x_{t-K+1+k}) with channels split into ``groups``.

    Causality comes from padding K-1 zeros on the left only: output t sees inputs <= t.
    Weights: ``kernel`` (kernel_size, hidden_size / groups, hidden_size), TF's grouped-conv
    layout with output channels group-major, fan-in kernel_size x hidden_size / groups;
    ``bias`` (hidden_size,; unless ``use_bias=False``).
    """

    def __init__(
        self, hidden_size: int, kernel_size: int, groups: int, use_bias: bool = True, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.use_bias = use_bias
        if hidden_size % groups:
            raise ValueError(f"groups={groups} must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.groups = groups

    def build(self, input_shape: Any = None) -> None:
        group_size = self.hidden_size // self.groups
        self.kernel = self.add_parameter(
            "kernel",
            (self.kernel_size, group_size, self.hidden_size),
            "weight",
            fan_in=self.kernel_size * group_size,
        )
        self.bias = (
            self.add_parameter("bias", (self.hidden_size,), "bias", init="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = self.ops.causal_conv(x, self.read_kernel("kernel"), self.groups)  # (b, s, hidden)
        if self.bias is not None:
            y = self.ops.add_bias(y, self.bias)
        return self.ops.relu(y)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "kernel_size": self.kernel_size,
            "groups": self.groups,
            "use_bias": self.use_bias,
        }
