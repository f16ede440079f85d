"""Causal grouped 1-D convolution sequence mixer."""

from typing import Any

import tensorflow as tf

from .. import precision
from .core import SeededLayer, seeded_normal


class CausalConv(SeededLayer):
    """y_t = ReLU(b + sum_{k<K} W_k x_{t-K+1+k}) with channels split into ``groups``.

    Causality comes from padding K-1 zeros on the left only: output t sees inputs <= t.
    The kernel has TF's grouped-conv layout (K, hidden/groups, hidden), output channels
    group-major. It is applied as K shifted per-group matmuls rather than ``tf.nn.conv1d``:
    XLA on CPU lowers grouped convolutions ~30x slower than these einsums.
    """

    def __init__(self, hidden_size: int, kernel_size: int, groups: int, **kwargs: Any):
        super().__init__(**kwargs)
        if hidden_size % groups:
            raise ValueError(f"groups={groups} must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.kernel_size = kernel_size
        self.groups = groups

    def build(self, input_shape: Any = None) -> None:
        fan_in = self.kernel_size * self.hidden_size // self.groups
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size, self.hidden_size // self.groups, self.hidden_size),
            initializer=seeded_normal(self.weight_seed(0), fan_in**-0.5),
        )
        self.bias = self.add_weight(name="bias", shape=(self.hidden_size,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden)
        seq = x.shape[1]
        group_size = self.hidden_size // self.groups
        padded = tf.pad(x, [[0, 0], [self.kernel_size - 1, 0], [0, 0]])  # (b, s+K-1, hidden)
        grouped = tf.reshape(padded, [-1, padded.shape[1], self.groups, group_size])
        kernel = tf.reshape(
            tf.cast(self.kernel, x.dtype),
            [self.kernel_size, group_size, self.groups, group_size],
        )  # (K, c_in, groups, c_out)
        y = precision.einsum("bsgc,cgo->bsgo", grouped[:, 0:seq], kernel[0])
        for tap in range(1, self.kernel_size):
            y += precision.einsum("bsgc,cgo->bsgo", grouped[:, tap : tap + seq], kernel[tap])
        y = tf.reshape(y, [-1, seq, self.hidden_size])  # (b, s, hidden)
        return tf.nn.relu(y + tf.cast(self.bias, x.dtype))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "kernel_size": self.kernel_size,
            "groups": self.groups,
        }
