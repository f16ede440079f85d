"""The plain op set: ordinary TF arithmetic, the regular (not unit-scaled) models' numerics.

Weights are initialised N(0, 1/fan_in); nothing is rescaled. Every matmul goes through
``scmm.precision`` (``einsum`` / ``tensordot``), which rounds its operands and the gradient
arriving at its output when simulated low precision is active.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from .. import precision
from . import kernels
from .base import OpSet, contraction_equation
from .kernels import as_compute


def _round_activations(equation: str, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return precision.einsum(equation, a, b, "activation")


class PlainOps(OpSet):
    """Ordinary TF ops with simulated-precision hooks on every matmul."""

    name = "plain"

    def init_std(self, fan_in: int) -> float:
        return fan_in**-0.5

    def sparse_init_factor(self, density: float) -> float:
        return float(density) ** -0.5

    # Linear maps ------------------------------------------------------------------------------

    def projection(self, x: tf.Tensor, kernel: tf.Tensor, axes: int = 1) -> tf.Tensor:
        w = tf.cast(kernel, x.dtype)
        if axes == 1:
            return precision.tensordot(x, w)
        return precision.einsum(contraction_equation(len(x.shape), len(w.shape), axes), x, w)

    def add_bias(self, x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        return x + tf.cast(bias, x.dtype)

    def gain(self, x: tf.Tensor, gain: tf.Tensor) -> tf.Tensor:
        return x * tf.cast(gain, x.dtype)

    def embedding_lookup(
        self, table: tf.Tensor, ids: tf.Tensor, dtype: Optional[tf.DType] = None
    ) -> tf.Tensor:
        out = tf.gather(tf.convert_to_tensor(table), ids)  # (..., d)
        return out if dtype is None else as_compute(out, dtype)

    def shift_right(self, x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
        return kernels.shift_right(x, tf.cast(padding, x.dtype))

    def layer_norm(
        self,
        x: tf.Tensor,
        gain: Optional[tf.Tensor],
        offset: Optional[tf.Tensor],
        epsilon: float = 1e-5,
    ) -> tf.Tensor:
        y = kernels.normalise(x, epsilon)
        if gain is not None:
            y = self.gain(y, gain)
        return self.add_bias(y, offset) if offset is not None else y

    def causal_conv(self, x: tf.Tensor, kernel: tf.Tensor, groups: int) -> tf.Tensor:
        return kernels.causal_conv_taps(x, tf.cast(kernel, x.dtype), groups, precision.einsum)

    # Nonlinearities ---------------------------------------------------------------------------

    def relu(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(x)

    def gelu(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.gelu(x, approximate=False)

    # Attention --------------------------------------------------------------------------------

    def qkv_projection(
        self, x: tf.Tensor, kernel: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        qkv = precision.einsum("bsh,hkna->kbnsa", x, tf.cast(kernel, x.dtype))  # (3, b, n, s, a)
        return qkv[0], qkv[1], qkv[2]

    def positional_keys(
        self, embedding: np.ndarray, weight: tf.Tensor, batch: int, dtype: tf.DType
    ) -> tf.Tensor:
        del batch  # the plain keys do not depend on it
        return precision.einsum(
            "rf,fna->nra", tf.constant(embedding, dtype), tf.cast(weight, dtype)
        )  # (heads, r, hs)

    def attention(
        self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, pos_keys: tf.Tensor, query_chunk: int
    ) -> tf.Tensor:
        def mix(weights: tf.Tensor, values: tf.Tensor, stop: int) -> tf.Tensor:
            del stop
            return precision.einsum("bnij,bnja->bina", weights, values, "activation")

        return kernels.causal_relative_attention(
            q, k, v, pos_keys, query_chunk, _round_activations, mix
        )

    # Recurrence -------------------------------------------------------------------------------

    def recurrent_highway(
        self,
        x: tf.Tensor,
        input_kernel: tf.Tensor,
        recurrent_kernel: tf.Tensor,
        bias: Optional[tf.Tensor],
        rebias: float,
    ) -> tf.Tensor:
        dtype = x.dtype
        # The input half of every gate does not depend on the state: one big matmul up front.
        shifted = -tf.constant([[0.0], [rebias]], dtype)  # (2, 1)
        if bias is not None:
            shifted = tf.cast(bias, dtype) + shifted  # (2, h)
        gates_in = precision.einsum("bsh,hgk->sbgk", x, tf.cast(input_kernel, dtype)) + shifted
        return kernels.highway_scan(gates_in, tf.cast(recurrent_kernel, dtype))

    # Residuals and loss -----------------------------------------------------------------------

    def residual_split(self, x: tf.Tensor, tau: Optional[float]) -> tuple[tf.Tensor, tf.Tensor]:
        return x, x

    def residual_add(
        self, skip: tf.Tensor, branch_output: tf.Tensor, tau: Optional[float]
    ) -> tf.Tensor:
        if tau is None:  # plain x + f(x)
            return skip + branch_output
        dtype = skip.dtype
        y = skip * tf.cast(math.sqrt(1.0 - tau), dtype) + branch_output * tf.cast(
            math.sqrt(tau), dtype
        )
        # The branch reads y's gradient only through the sqrt(tau) multiply, so without this
        # XLA recomputes the residual stream's whole gradient chain in every block.
        return kernels.materialised_gradient(y)

    def cross_entropy(
        self,
        logits: tf.Tensor,
        targets: tf.Tensor,
        mask: tf.Tensor,
        weights: Optional[tf.Tensor] = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        total, n_tokens = kernels.cross_entropy_sum(logits, targets, mask, weights)
        return total / tf.maximum(n_tokens, 1.0), n_tokens
