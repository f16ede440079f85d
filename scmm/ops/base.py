"""The op-set interface: the arithmetic a layer may use, with one signature per op.

A layer (``scmm.layers``) is written once against this interface; the scaling scheme decides
which op set it gets. ``PlainOps`` is ordinary TF (the regular models), ``UnitOps`` the same
maths with unit-scaled forward and backward passes. Both route every matmul through
``scmm.precision`` (simulated low-precision formats), so a layer cannot forget the rounding.
"""

import abc
import string
from typing import Optional

import numpy as np
import tensorflow as tf


def contraction_equation(x_rank: int, kernel_rank: int, axes: int) -> str:
    """einsum equation contracting x's last ``axes`` axes with the kernel's first ``axes``.

    E.g. (4, 3, 2) -> "abcd,cde->abe" (attention's (b, s, heads, hs) x (heads, hs, h)).
    """
    if not 1 <= axes <= min(x_rank, kernel_rank):
        raise ValueError(f"cannot contract {axes} axes of ranks {x_rank} and {kernel_rank}")
    letters = string.ascii_lowercase
    x_axes = letters[:x_rank]
    extra = letters[x_rank : x_rank + kernel_rank - axes]
    kernel_axes = x_axes[x_rank - axes :] + extra
    return f"{x_axes},{kernel_axes}->{x_axes[: x_rank - axes]}{extra}"


class OpSet(abc.ABC):  # pylint: disable=too-many-public-methods  # one method per op
    """The ops every scmm layer computes with (shapes in each docstring)."""

    name: str = ""
    loss_reduction: str = "mean"
    """How ``cross_entropy`` reduces tokens in its backward pass: "mean" (the 1/count of a mean
    reaches the logits) or "sum" (the unit-scaled loss undoes it: ~1 per scored token). The
    trainer combines micro-batch gradients accordingly (``scmm.training.accumulation``)."""

    @abc.abstractmethod
    def init_std(self, fan_in: int) -> float:
        """Initial std of a weight whose op sums ``fan_in`` input terms."""

    def sparse_init_factor(self, density: float) -> float:
        """Factor on a weight's initial values when only ``density`` of them are kept.

        1 here; the plain op set rescales by density^-1/2 (Glorot rescaled by density, as
        Graphcore's sparse layers do), so an output sums as much variance as a dense one's.
        """
        del density
        return 1.0

    def sparse_kernel(self, kernel: tf.Tensor, density: float) -> tf.Tensor:
        """``kernel`` as its op reads it when only ``density`` of its entries are active.

        The kernel itself (plain: its init carries the factor). Unit-scaled op sets multiply
        it by density^-1/2 forward: their scales come from the dense fan-in and fan-out, and
        a kernel with only d of its entries active sums d of the terms in both the output
        and the input gradient (``UnitOps.sparse_kernel``).
        """
        del density
        return kernel

    @abc.abstractmethod
    def projection(self, x: tf.Tensor, kernel: tf.Tensor, axes: int = 1) -> tf.Tensor:
        """x (..., *in) contracted with kernel (*in, *out) over ``axes`` axes -> (..., *out)."""

    def readout(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        """The model's output projection x (..., in) @ kernel (in, classes).

        A ``projection`` here; u-mup's op set gives it mu-P's forward 1/fan_in.
        """
        return self.projection(x, kernel)

    @abc.abstractmethod
    def add_bias(self, x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
        """x + bias, bias broadcast over x's leading axes."""

    @abc.abstractmethod
    def gain(self, x: tf.Tensor, gain: tf.Tensor) -> tf.Tensor:
        """x * gain, gain broadcast over x's leading axes."""

    @abc.abstractmethod
    def embedding_lookup(
        self, table: tf.Tensor, ids: tf.Tensor, dtype: Optional[tf.DType] = None
    ) -> tf.Tensor:
        """table (vocab, d) gathered at ids (...) -> (..., d), in ``dtype`` if given."""

    @abc.abstractmethod
    def shift_right(self, x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
        """x (b, s, h) one step right, position 0 filled with the learned ``padding`` (h,)."""

    @abc.abstractmethod
    def layer_norm(
        self,
        x: tf.Tensor,
        gain: Optional[tf.Tensor],
        offset: Optional[tf.Tensor],
        epsilon: float = 1e-5,
    ) -> tf.Tensor:
        """Layer norm over the last axis (float32 statistics), then gain and offset."""

    @abc.abstractmethod
    def causal_conv(self, x: tf.Tensor, kernel: tf.Tensor, groups: int) -> tf.Tensor:
        """Causal grouped conv: x (b, s, c_in), kernel (K, c_in/groups, c_out) -> (b, s, c_out)."""

    @abc.abstractmethod
    def relu(self, x: tf.Tensor) -> tf.Tensor:
        """ReLU (scaled in the unit set)."""

    @abc.abstractmethod
    def gelu(self, x: tf.Tensor) -> tf.Tensor:
        """Exact (erf) GELU (scaled in the unit set)."""

    def ffn_activation(self, x: tf.Tensor, kind: str) -> tf.Tensor:
        """The FFN's nonlinearity ``kind`` (relu | gelu); u-mup's op set tempers it."""
        if kind == "relu":
            return self.relu(x)
        if kind == "gelu":
            return self.gelu(x)
        raise ValueError(f"FFN activation must be relu|gelu, got {kind!r}")

    def dropout_scale(self, keep_probability: float) -> float:
        """Factor on the kept values of ``dropout``: 1/p (inverted dropout keeps the mean)."""
        return 1.0 / keep_probability

    def dropout(self, x: tf.Tensor, keep_probability: float, seed: tf.Tensor) -> tf.Tensor:
        """x (any shape) with each element kept with probability p, times
        ``dropout_scale(p)``, else 0. The mask is a pure function of ``seed`` ((2,) int32, a
        stateless seed) and x's shape, so a step can be replayed exactly (resume).
        The gradient is the same mask and factor on the incoming gradient."""
        if keep_probability >= 1.0:
            return x
        uniform = tf.random.stateless_uniform(tf.shape(x), seed, dtype=tf.float32)
        kept = x * tf.cast(self.dropout_scale(keep_probability), x.dtype)
        return tf.where(uniform < keep_probability, kept, tf.zeros_like(x))

    @abc.abstractmethod
    def qkv_projection(
        self, x: tf.Tensor, kernel: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """x (b, s, h) with kernel (h, 3, heads, hs) -> q, k, v, each (b, heads, s, hs)."""

    @abc.abstractmethod
    def positional_keys(
        self, embedding: np.ndarray, weight: tf.Tensor, batch: int, dtype: tf.DType
    ) -> tf.Tensor:
        """Relative-position keys: embedding (r, f) x weight (f, heads, hs) -> (heads, r, hs)."""

    @abc.abstractmethod
    def attention(
        self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, pos_keys: tf.Tensor, query_chunk: int
    ) -> tf.Tensor:
        """Causal relative-position softmax attention -> (b, s, heads, hs)."""

    @abc.abstractmethod
    def recurrent_highway(
        self,
        x: tf.Tensor,
        input_kernel: tf.Tensor,
        recurrent_kernel: tf.Tensor,
        bias: Optional[tf.Tensor],
        rebias: float,
    ) -> tf.Tensor:
        """RHN states (b, s, h) from x (b, s, in), kernels (in|h, 2, h), bias (2, h) or None."""

    @abc.abstractmethod
    def residual_split(self, x: tf.Tensor, tau: Optional[float]) -> tuple[tf.Tensor, tf.Tensor]:
        """(skip, branch input) of a residual block, both x in the forward pass."""

    @abc.abstractmethod
    def residual_add(
        self, skip: tf.Tensor, branch_output: tf.Tensor, tau: Optional[float]
    ) -> tf.Tensor:
        """sqrt(1 - tau) skip + sqrt(tau) branch (tau None: skip + branch)."""

    @abc.abstractmethod
    def cross_entropy(
        self,
        logits: tf.Tensor,
        targets: tf.Tensor,
        mask: tf.Tensor,
        weights: Optional[tf.Tensor] = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(masked mean cross-entropy, token count), both float32, from logits (..., classes).

        ``weights`` (float32, the targets' shape, no gradient) multiplies each scored token's
        cross-entropy; the sum is still divided by the token count (Graphcore's weighted loss).
        """
