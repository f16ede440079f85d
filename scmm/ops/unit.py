"""The unit-scaled op set: the plain maths with separately scaled forward and backward passes.

Weights are initialised N(0, 1); each op (``scmm.uscale``) scales its output and its input
gradients from static shapes so that, at initialisation, activations and gradients sit near
unit scale. Simulated low precision rounds the unit-scale operands inside each op (before a
static scale is folded into a weight), which is why these models need no per-tensor scales.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from .. import uscale
from . import kernels
from .base import OpSet
from .kernels import as_compute


class UnitOps(OpSet):
    """Unit-scaled ops (unit-scaling paper, section 5; rules in ``scmm.uscale``)."""

    name = "unit"
    loss_reduction = "sum"  # uscale.softmax_cross_entropy undoes the mean's 1/count
    constraint: uscale.Constraint = "gmean"
    """How an op on a non-cut edge ties its output scale and its input-gradient scale: the
    geometric mean (unit-scaling paper, section 5). u-mup's op set uses "forward"."""

    def init_std(self, fan_in: int) -> float:
        return 1.0

    def sparse_kernel(self, kernel: tf.Tensor, density: float) -> tf.Tensor:
        # Only density x fan-in terms are summed per output (and density x fan-out per input
        # gradient): scale by the active count, (d n)^-1/2 = n^-1/2 d^-1/2. Backward 1: the
        # kernel is a cut edge, and its (dense) gradient keeps the unit rule.
        return uscale.scaling(kernel, forward=float(density) ** -0.5)

    # Linear maps ------------------------------------------------------------------------------

    def projection(self, x: tf.Tensor, kernel: tf.Tensor, axes: int = 1) -> tf.Tensor:
        if axes == 1:
            return uscale.projection(x, kernel, self.constraint)
        # A multi-axis contraction is a projection of the flattened axes (same fan-in and
        # fan-out, so the same scales).
        inner = math.prod(int(d) for d in x.shape[-axes:])
        x_flat = tf.reshape(x, [*x.shape[:-axes], inner])  # (..., in)
        w_flat = tf.reshape(as_compute(kernel, x.dtype), [inner, *kernel.shape[axes:]])
        return uscale.projection(x_flat, w_flat, self.constraint)

    def add_bias(self, x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        return uscale.add_bias(x, bias)

    def gain(self, x: tf.Tensor, gain: tf.Tensor) -> tf.Tensor:
        return uscale.multiply_gain(x, gain)

    def embedding_lookup(
        self, table: tf.Tensor, ids: tf.Tensor, dtype: Optional[tf.DType] = None
    ) -> tf.Tensor:
        return uscale.embedding_lookup(table, ids, dtype=dtype)

    def shift_right(self, x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
        # The padding's gradient sums over the batch rows.
        batch = x.shape[0]
        pad = as_compute(padding, x.dtype)
        if batch is not None:
            pad = uscale.scaling(pad, backward=uscale.global_rows(batch) ** -0.5)
        return kernels.shift_right(x, pad)

    def layer_norm(
        self,
        x: tf.Tensor,
        gain: Optional[tf.Tensor],
        offset: Optional[tf.Tensor],
        epsilon: float = 1e-5,
    ) -> tf.Tensor:
        return uscale.layer_norm(x, gain, offset, epsilon)

    def causal_conv(self, x: tf.Tensor, kernel: tf.Tensor, groups: int) -> tf.Tensor:
        return uscale.causal_conv1d(x, kernel, groups, self.constraint)

    # Nonlinearities ---------------------------------------------------------------------------

    def relu(self, x: tf.Tensor) -> tf.Tensor:
        return uscale.relu(x, self.constraint)

    def gelu(self, x: tf.Tensor) -> tf.Tensor:
        return uscale.gelu(x, self.constraint)

    def dropout_scale(self, keep_probability: float) -> float:
        # x m / sqrt(p): for a unit x, E[(x m)^2] / p = 1, so the output (and, the op being a
        # plain multiply, the input gradient) keeps unit variance, not unit mean.
        return keep_probability**-0.5

    # Attention --------------------------------------------------------------------------------

    def qkv_projection(
        self, x: tf.Tensor, kernel: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return uscale.qkv_projection(x, kernel)

    def positional_keys(
        self, embedding: np.ndarray, weight: tf.Tensor, batch: int, dtype: tf.DType
    ) -> tf.Tensor:
        return uscale.positional_keys(embedding, weight, batch, dtype)

    def attention(
        self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, pos_keys: tf.Tensor, query_chunk: int
    ) -> tf.Tensor:
        return uscale.causal_attention(q, k, v, pos_keys, query_chunk)

    # Recurrence -------------------------------------------------------------------------------

    def recurrent_highway(
        self,
        x: tf.Tensor,
        input_kernel: tf.Tensor,
        recurrent_kernel: tf.Tensor,
        bias: Optional[tf.Tensor],
        rebias: float,
    ) -> tf.Tensor:
        return uscale.recurrent_highway(x, input_kernel, recurrent_kernel, bias, rebias)

    # Residuals and loss -----------------------------------------------------------------------

    def residual_split(self, x: tf.Tensor, tau: Optional[float]) -> tuple[tf.Tensor, tf.Tensor]:
        return uscale.residual_split(x, _unit_tau(tau))

    def residual_add(
        self, skip: tf.Tensor, branch_output: tf.Tensor, tau: Optional[float]
    ) -> tf.Tensor:
        return uscale.residual_add(skip, branch_output, _unit_tau(tau))

    def cross_entropy(
        self,
        logits: tf.Tensor,
        targets: tf.Tensor,
        mask: tf.Tensor,
        weights: Optional[tf.Tensor] = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        return uscale.softmax_cross_entropy(logits, targets, mask, weights=weights)


def _unit_tau(tau: Optional[float]) -> float:
    if tau is None:
        raise ValueError(
            "unit-scaled residual blocks need a tau in (0, 1); plain x + f(x) grows the"
            " residual stream and has no unit-scaled form"
        )
    return tau
