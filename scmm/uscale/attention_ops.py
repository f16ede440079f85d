"""Unit-scaled pieces of causal relative-position attention (``scmm.layers.Attention``).

A unit-scaled Attention layer with unit-initialised weights is::

    q, k, v = qkv_projection(x, qkv)                  # (b, heads, s, hs) each, unit
    pos = positional_keys(embedding, positional, b)   # (heads, s, hs), unit
    mixed = causal_attention(q, k, v, pos)            # (b, s, heads, hs), plain mixing
    out = add_bias(projection(mixed, output_kernel), output_bias)

At initialisation this is the baseline layer's function with every weight rescaled. The score
temperature is unchanged: (q.k + q.p) / sqrt(hs), each term unit, so the logits have variance
~2, as in the baseline. The temperature is part of the model, not of its scaling.

Softmax + mixing is one op A(q, k, v) = scale * softmax(scores) v with the same scale on the
q, k and v gradients (the consistent choice for three non-cut inputs: the output scale equals
every input-gradient scale). The default scale is 1, plain softmax mixing, as in the paper's
char-LM code; ``attention_scale`` gives the factor that would make A unit for iid values, and
``causal_attention`` explains why the models do not use it.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from .. import precision
from ..ops.kernels import as_compute, causal_relative_attention
from .batch_split import global_rows
from .ops import weight_contraction
from .scaling import Constraint, constrain, scaling, static_size

# The logits are content + position scores, each ~unit, so their nominal variance is 2. Within a
# row the position scores of nearby distances are strongly correlated (smooth sinusoids), so
# they spread the softmax less than independent noise would. 1.35 is the iid variance at which
# ``attention_scale`` matches the measured output std for the char-LM shapes (unit q, k, v:
# output 1.00; without the position term the formula at variance 1 gives 0.96).
LOGIT_VARIANCE = 1.35


def qkv_projection(
    x: tf.Tensor, weight: tf.Tensor, constraint: Constraint = "forward"
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """x (b, s, m) with weight (m, 3, heads, hs) -> q, k, v, each (b, heads, s, hs).

    A ``projection`` with m inputs and n = 3 heads hs outputs. Weight-gradient scale (b s)^-1/2.

    The default constraint is "forward" (scale m^-1/2, both ways), *not* gmean. The scale of q
    and k is the softmax temperature, which is part of the model. With "forward", q, k and v
    are unit, as in the baseline with its N(0, 1/m) init. gmean ((m n)^-1/4, the char-LM
    code's (3 d h heads)^-1/4) would shrink them by (m/n)^1/4 = 0.76 for the char-LM shapes.
    That flattens the softmax, and measured end to end it gives output std 0.59 and k-grad
    0.37. With "forward" the measured stds are all within [0.8, 1.7]: x-grad ~1.6 (3 heads hs
    gradients summed over m inputs).
    """
    m = static_size(x.shape[-1:], "qkv_projection input")
    n = static_size(weight.shape[1:], "qkv_projection weight")
    rows = global_rows(static_size(x.shape[:-1], "qkv_projection input"))
    scales = constrain(m**-0.5, n**-0.5, constraint)

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.einsum("bsm,mkna->kbnsa", inputs, w)  # (3, b, heads, s, hs)

    qkv = weight_contraction(x, weight, contract, scales, rows**-0.5)
    return qkv[0], qkv[1], qkv[2]


def positional_keys(
    embedding: np.ndarray,
    weight: tf.Tensor,
    batch: int,
    dtype: Optional[tf.DType] = None,
    logit_variance: float = LOGIT_VARIANCE,
) -> tf.Tensor:
    """Relative-position keys p_r = c e_r W: embedding (r, f) x weight (f, heads, hs).

    Computed in ``dtype`` (default: the weight's dtype).

    ``embedding`` is a constant, e.g. the reversed ``sinusoid_embedding`` rows the baseline
    layer uses. The forward scale c = 1 / rms(||e_r||) makes p unit. For sin/cos pairs that is
    frequencies^-1/2 exactly, the char-LM code's rule.

    The weight is a cut edge, so its gradient scale is free. Its gradient e^T g_p sums over
    about r/2 distances (mean e^2 = 1/2). Each g_p[r] sums over the b x (s - r) queries at
    distance r, weighted by their attention probabilities, whose squares average 1/alpha^2.
    So the scale is alpha (b r / 2)^-1/2, divided by 0.63. That constant was measured at init
    for the char-LM shapes: the softmax Jacobian's centring, and the squared weights
    concentrating at short distances. The tests check std within [0.5, 2].
    """
    rows = embedding.shape[0]
    forward = float(np.mean(np.sum(np.square(embedding, dtype=np.float64), axis=-1))) ** -0.5
    alpha = attention_scale(rows, logit_variance)
    backward = alpha * (global_rows(batch) * rows / 2) ** -0.5 / POSITIONAL_GRAD_STD
    dtype = tf.as_dtype(dtype or weight.dtype)
    w = scaling(
        precision.operand(as_compute(weight, dtype), "weight"), forward=forward, backward=backward
    )
    e = precision.operand(tf.constant(embedding, dtype), "activation")
    return precision.output(tf.einsum("rf,fna->nra", e, w))  # (heads, r, hs)


# Measured std of the positional weight gradient for the char-LM shapes with the scale
# alpha (b r / 2)^-1/2 alone; dividing by it brings the std to ~1.
POSITIONAL_GRAD_STD = 0.63


def attention_scale(seq: int, logit_variance: float = LOGIT_VARIANCE) -> float:
    """alpha for causal softmax attention over ``seq`` positions: 1 / rms of the output.

    Query i mixes i + 1 unit values with softmax weights w, so its output variance is
    sum_j w_ij^2. For n iid logits of variance v, E sum w^2 ~ e^v / (n + e^v - 1). That is 1
    for n = 1 and e^v / n for large n (a ratio-of-moments estimate of the log-normal weights).
    Averaged over the rows n = 1..seq::

        alpha = (mean_n e^v / (n + e^v - 1)) ** -1/2

    By symmetry, the mean over keys of v's gradient variance, sum_i w_ij^2, is the same
    number, so alpha also makes v's gradient ~unit. q and k get the same alpha (the constraint).
    Their gradients pass through the softmax Jacobian. Measured for the char-LM shapes (b 8,
    s 256, 2 heads x 64, alpha 3.91) with unit q, k, v: output 1.00, q-grad 1.00, k-grad 0.80,
    v-grad 1.00. End to end from x through ``qkv_projection``: see
    ``tests/test_uscale_ops.py``.
    """
    growth = math.exp(logit_variance)
    n = np.arange(1, seq + 1, dtype=np.float64)
    return float(np.mean(growth / (n + growth - 1.0)) ** -0.5)


def causal_attention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    pos_keys: tf.Tensor,
    query_chunk: int = 64,
    scale: float = 1.0,
    temperature: Optional[float] = None,
) -> tf.Tensor:
    """scale * softmax((q k^T + rel(q p^T)) t + causal mask) v -> (b, s, heads, hs).

    t is ``temperature``: 1 / sqrt(hs) by default (the char-LM models), mult / hs under u-mup.

    q, k, v: (b, heads, s, hs). pos_keys: (heads, s, hs) for distances s-1 ... 0 (as from
    ``positional_keys`` on the reversed sinusoid embedding). Scores, mask (-3e4) and
    ``relative_shift`` are the plain op set's (``scmm.ops.kernels``), including the query chunking.
    ``scale`` multiplies the output (forward) and the q, k and v gradients (backward). pos_keys
    is a cut edge (only ``positional`` feeds it) and passes unscaled (cast to q's dtype).

    Why the default scale is 1 (plain mixing, the paper's char-LM code) and not
    ``attention_scale`` (alpha, 3.9 for s = 256), which makes the output unit for iid values:

    - Values are iid only in the first layer on random tokens. On text, and deeper in a model,
      the stream is strongly correlated across positions and a softmax average of correlated
      values hardly shrinks. Measured at init on the depth-8 paper attention model (text
      batch), the attention layers' outputs are 0.43-0.80 with scale 1 (backward 1.04-1.24);
      with alpha^1/2 they are 0.79-1.79 (backward 0.70-1.30); full alpha grew them to 3.4
      by layer 3 and pushed every backward gradient through the final norm down to ~0.4.
    - Training quality. The output scale is a forward multiplier, so it changes the model, not
      only its numerics. Median validation BPC of 3 seeds on the reduced paper attention model
      (hidden 64, depth 2, 400 steps, best LR of each): pre-norm scale 1 2.736, alpha^1/2
      2.818, alpha 3.053, alpha^-1/2 2.821 (regular baseline 2.749); post-norm scale 1 2.692,
      regular 2.771. A larger output puts more of the untrained attention average into the
      residual stream; plain mixing keeps the baseline's balance.
    """
    dtype = q.dtype
    if scale != 1.0:
        q, k, v = (scaling(t, backward=scale) for t in (q, k, v))
    # Rounded once here (the scores and mixing below see the rounded unit-scale tensors).
    q, k, v = (precision.operand(t, "activation") for t in (q, k, v))
    pos_keys = precision.operand(as_compute(pos_keys, dtype), "activation")

    def contract(equation: str, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return precision.output(tf.einsum(equation, a, b))

    def mix(weights: tf.Tensor, values: tf.Tensor, stop: int) -> tf.Tensor:
        # Probabilities average 1/stop: times stop they are unit-scale for the low-precision
        # cast (an exact static rescaling when stop is a power of two).
        weights = precision.operand(weights * tf.cast(stop, dtype), "activation")
        return precision.output(tf.einsum("bnij,bnja->bina", weights, values)) / tf.cast(
            stop, dtype
        )

    out = causal_relative_attention(q, k, v, pos_keys, query_chunk, contract, mix, temperature)
    return scaling(out, forward=scale) if scale != 1.0 else out
