"""Recurrent highway network (Zilly et al. 2017) scanned over the sequence.

One highway layer per step (recurrence depth 1) with a coupled carry gate:

    h_t = tanh(W_H x_t + R_H s_{t-1} + b_H)                 candidate
    g_t = sigmoid(W_T x_t + R_T s_{t-1} + b_T - rebias)     transform gate
    s_t = s_{t-1} + g_t * (h_t - s_{t-1})                   (carry = 1 - g_t)

``rebias`` shifts the transform gate towards carrying the state, as Zilly et al. recommend
(a negative initial transform bias), while keeping b_T itself initialised at zero.
"""

from typing import Any

import keras
import tensorflow as tf

from .base import ScaledLayer


@keras.saving.register_keras_serializable(package="scmm")
class RecurrentHighway(ScaledLayer):
    """RHN cell scanned over time: (batch, seq, hidden) -> states (batch, seq, hidden).

    Weights: ``input_kernel`` and ``recurrent_kernel`` (hidden_size, 2, hidden_size), the
    candidate and transform halves; ``bias`` (2, hidden_size; unless ``use_bias=False``: the
    gates then have only the constant ``rebias``). The gates see [x_t, s_{t-1}],
    so both kernels have the fan-in of the concatenation, 2 hidden_size.
    """

    def __init__(self, hidden_size: int, rebias: float = 1.0, use_bias: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.use_bias = use_bias
        self.hidden_size = hidden_size
        self.rebias = rebias

    def build(self, input_shape: Any = None) -> None:
        shape = (self.hidden_size, 2, self.hidden_size)
        fan_in = 2 * self.hidden_size
        self.input_kernel = self.add_parameter("input_kernel", shape, "weight", fan_in=fan_in)
        self.recurrent_kernel = self.add_parameter(
            "recurrent_kernel", shape, "weight", fan_in=fan_in, seed_index=1
        )
        self.bias = (
            self.add_parameter("bias", (2, self.hidden_size), "bias", init="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.ops.recurrent_highway(
            x,
            self.read_kernel("input_kernel"),
            self.read_kernel("recurrent_kernel"),
            self.bias,
            self.rebias,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "rebias": self.rebias,
            "use_bias": self.use_bias,
        }
