"""Unit-scaled twins of every baseline layer in ``scmm.layers``.

Each class subclasses its baseline twin, so the constructor arguments, ``get_config`` and the
weight names and shapes are identical (a checkpoint's weights load into either). What changes:

- initialisation: every matrix N(0, 1), biases zero, gains one (the baseline uses N(0, 1/fan_in));
- ``call``: the ``scmm.uscale`` ops, which put forward outputs, input gradients and weight
  gradients at unit scale at initialisation.

A model switches with one setting (``unit_scale``) or one import (``scmm.uscale.layers``).
"""

import math
from typing import Any

import keras
import tensorflow as tf

from .. import layers as base
from ..layers.attention import sinusoid_embedding
from ..layers.core import seeded_normal
from . import attention_ops, nonlinear, ops, rnn_ops
from .calibration import read_weight
from .scaling import scaling


def _unit_weight(layer: base.SeededLayer, name: str, shape: tuple[int, ...], index: int) -> Any:
    return layer.add_weight(
        name=name, shape=shape, initializer=seeded_normal(layer.weight_seed(index), 1.0)
    )


class Embedding(base.Embedding):
    """Unit-scaled token embedding (table gradient scaled to unit RMS)."""

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return ops.embedding_lookup(self.embeddings, tokens, dtype=self.compute_dtype)


class Shift(base.Shift):
    """Shift with a unit padding vector whose gradient (summed over the batch) is rescaled."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden); the padding's gradient sums over the batch rows.
        batch = x.shape[0]
        pad = read_weight(self.padding, x.dtype)
        if batch is not None:
            pad = scaling(pad, backward=batch**-0.5)
        pad = tf.broadcast_to(pad, tf.stack([tf.shape(x)[0], 1, self.hidden_size]))
        return tf.concat([pad, x[:, :-1, :]], axis=1)


class LayerNorm(base.LayerNorm):
    """Layer norm (float32 statistics) with unit-scaled gain and bias gradients."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return ops.layer_norm(x, self.gamma, self.beta, self.epsilon)


class Projection(base.Projection):
    """Unit-scaled projection: unit kernel, (fan_in fan_out)^-1/4 both ways (gmean)."""

    def build(self, input_shape: Any = None) -> None:
        self.kernel = _unit_weight(self, "kernel", (self.input_size, self.output_size), 0)
        self.bias = (
            self.add_weight(name="bias", shape=(self.output_size,), initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = ops.projection(x, self.kernel)
        return ops.add_bias(y, self.bias) if self.bias is not None else y


class FFN(base.FFN):
    """Unit-scaled FFN: projection, scaled ReLU, projection."""

    projection_class = Projection

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.down(nonlinear.relu(self.up(x)))  # (b, s, hidden)


class CausalConv(base.CausalConv):
    """Unit-scaled causal grouped convolution followed by a scaled ReLU."""

    def build(self, input_shape: Any = None) -> None:
        shape = (self.kernel_size, self.hidden_size // self.groups, self.hidden_size)
        self.kernel = _unit_weight(self, "kernel", shape, 0)
        self.bias = self.add_weight(name="bias", shape=(self.hidden_size,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = ops.causal_conv1d(x, self.kernel, self.groups)  # (b, s, hidden)
        return nonlinear.relu(ops.add_bias(y, self.bias))


class RecurrentHighway(base.RecurrentHighway):
    """Unit-scaled recurrent highway cell (gate pre-activations match the baseline at init)."""

    def build(self, input_shape: Any = None) -> None:
        shape = (self.hidden_size, 2, self.hidden_size)
        self.input_kernel = _unit_weight(self, "input_kernel", shape, 0)
        self.recurrent_kernel = _unit_weight(self, "recurrent_kernel", shape, 1)
        self.bias = self.add_weight(name="bias", shape=(2, self.hidden_size), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return rnn_ops.recurrent_highway(
            x, self.input_kernel, self.recurrent_kernel, self.bias, self.rebias
        )


class Attention(base.Attention):
    """Unit-scaled causal multi-head attention with relative sinusoid position scores."""

    def build(self, input_shape: Any = None) -> None:
        self.qkv = _unit_weight(self, "qkv", (self.hidden_size, 3, self.heads, self.head_size), 0)
        self.positional = _unit_weight(
            self, "positional", (2 * self.frequencies, self.heads, self.head_size), 1
        )
        self.output_kernel = _unit_weight(
            self, "output_kernel", (self.heads, self.head_size, self.hidden_size), 2
        )
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.hidden_size,), initializer="zeros"
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden)
        batch, seq = x.shape[0], x.shape[1]
        if batch is None or seq is None:
            raise ValueError("unit-scaled Attention needs static batch and sequence sizes")
        q, k, v = attention_ops.qkv_projection(x, self.qkv)  # each (b, heads, s, hs)
        embedding = sinusoid_embedding(seq, self.frequencies, self.max_period)[::-1].copy()
        pos_keys = attention_ops.positional_keys(embedding, self.positional, batch, x.dtype)
        mixed = attention_ops.causal_attention(q, k, v, pos_keys, self.query_chunk)
        mixed = tf.reshape(mixed, [batch, seq, self.heads * self.head_size])  # (b, s, h*hs)
        kernel = tf.reshape(
            read_weight(self.output_kernel, x.dtype), [self.heads * self.head_size, -1]
        )
        return ops.add_bias(ops.projection(mixed, kernel), self.output_bias)  # (b, s, hidden)


class Residual(base.Residual):
    """Unit-scaled residual block: y = sqrt(1 - tau) x + sqrt(tau) f(x), branch grads unit.

    ``tau`` replaces the baseline's (skip, branch) multipliers: the branch input carries
    sqrt(tau) in the backward pass and its output sqrt(tau) in the forward pass
    (``residual_split`` / ``residual_add``), so the branch sees unit gradients.
    """

    norm_class = LayerNorm

    def __init__(
        self,
        body: keras.layers.Layer,
        hidden_size: int,
        norm: base.residual.NormPlacement = "pre",
        tau: float = 0.5,
        **kwargs: Any,
    ):
        super().__init__(
            body, hidden_size, norm, skip=math.sqrt(1 - tau), branch=math.sqrt(tau), **kwargs
        )
        self.tau = tau

    def call(self, x: tf.Tensor) -> tf.Tensor:
        skip, branch_input = ops.residual_split(x, self.tau)
        norm = self.norm
        if norm is not None and self.norm_placement == "pre":
            branch_input = norm(branch_input)
        y = ops.residual_add(skip, self.body(branch_input), self.tau)
        return norm(y) if norm is not None and self.norm_placement == "post" else y


def residual_tau(weighting: str, alpha: float, index: int) -> float:
    """tau of the ``index``-th (1-based) residual block; "plain" has no unit-scaled form."""
    if weighting == "fixed":
        return alpha
    if weighting == "mean":
        return 1.0 / (index + 1)
    raise ValueError(
        f"unit-scaled models need model.residual.weighting fixed or mean, got {weighting!r}"
        " (plain x + f(x) grows the residual stream and is not unit-scaled)"
    )


__all__ = [
    "Attention",
    "CausalConv",
    "Embedding",
    "FFN",
    "LayerNorm",
    "Projection",
    "RecurrentHighway",
    "Residual",
    "Shift",
    "residual_tau",
]
