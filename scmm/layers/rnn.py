"""Recurrent highway network (Zilly et al. 2017) scanned over the sequence.

One highway layer per step (recurrence depth 1) with a coupled carry gate:

    h_t = tanh(W_H x_t + R_H s_{t-1} + b_H)                 candidate
    g_t = sigmoid(W_T x_t + R_T s_{t-1} + b_T - rebias)     transform gate
    s_t = s_{t-1} + g_t * (h_t - s_{t-1})                   (carry = 1 - g_t)

``rebias`` shifts the transform gate towards carrying the state, as Zilly et al. recommend
(a negative initial transform bias), while keeping b_T itself initialised at zero.
"""

from typing import Any

import tensorflow as tf

from .. import precision
from .core import SeededLayer, seeded_normal


def highway_scan(gates_in: tf.Tensor, recurrent: tf.Tensor) -> tf.Tensor:
    """Run the RHN recurrence: gates_in (s, b, 2, h) input halves (bias and rebias included),
    recurrent kernel (h, 2, h) -> states (b, s, h). Shared by the unit-scaled twin."""

    def step(state: tf.Tensor, gate_in: tf.Tensor) -> tf.Tensor:
        # state: (b, h), gate_in: (b, 2, h)
        pre = gate_in + precision.einsum("bh,hgk->bgk", state, recurrent)
        candidate = tf.tanh(pre[:, 0])
        transform = tf.sigmoid(pre[:, 1])
        return state + transform * (candidate - state)

    initial = tf.zeros_like(gates_in[0, :, 0])  # (b, h)
    states = tf.scan(step, gates_in, initializer=initial)  # (s, b, h)
    return tf.transpose(states, [1, 0, 2])  # (b, s, h)


class RecurrentHighway(SeededLayer):
    """RHN cell scanned over time: (batch, seq, hidden) -> states (batch, seq, hidden)."""

    def __init__(self, hidden_size: int, rebias: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.rebias = rebias

    def build(self, input_shape: Any = None) -> None:
        # Gates see [x_t, s_{t-1}], so each kernel uses the fan-in of the concatenation.
        stddev = (2 * self.hidden_size) ** -0.5
        shape = (self.hidden_size, 2, self.hidden_size)
        self.input_kernel = self.add_weight(
            name="input_kernel", shape=shape, initializer=seeded_normal(self.weight_seed(0), stddev)
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel",
            shape=shape,
            initializer=seeded_normal(self.weight_seed(1), stddev),
        )
        self.bias = self.add_weight(name="bias", shape=(2, self.hidden_size), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        dtype = x.dtype
        # The input half of every gate does not depend on the state: one big matmul up front.
        bias = tf.cast(self.bias, dtype) - tf.constant([[0.0], [self.rebias]], dtype)  # (2, h)
        gates_in = precision.einsum("bsh,hgk->sbgk", x, tf.cast(self.input_kernel, dtype)) + bias
        recurrent = tf.cast(self.recurrent_kernel, dtype)  # (h, 2, h)
        return highway_scan(gates_in, recurrent)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_size": self.hidden_size, "rebias": self.rebias}
