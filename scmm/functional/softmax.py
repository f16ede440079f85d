"""Unit-scaled softmax (``U.softmax``) and the softmax moments it and attention scale by.

For n iid logits x_j ~ N(0, v), let w = softmax(x) and S_k = sum_j w_j^k. Everything the
scales need is an expectation of a ratio of lognormal sums, computed exactly (to quadrature
accuracy) with the Laplace identity 1/A^p = int_0^inf t^(p-1) e^(-tA) dt / (p-1)!:

    E[S_2] = n int t M_2(t) L(t)^(n-1) dt,     L(t) = E[e^(-t e^x)],  M_k(t) = E[e^(kx - t e^x)]

and likewise for S_3 and S_2^2. L and M_k are one-dimensional integrals over x, done once per
variance on a fixed grid (numpy, at trace time), so a moment for any count n, a Python int or
an int tensor (per query row in attention), is one weighted sum of exp((n-1) log L) over the
grid. The ratio-of-moments estimate e^v / (n + e^v - 1) that ``scmm.uscale.attention_scale``
uses is 9% off in std at v = 1, n = 4..8 and 21% at v = 2; this is exact to < 0.5%.
"""

import functools
import math
from typing import Union

import numpy as np
import tensorflow as tf

from ..uscale.scaling import Constraint, constrain, scaling

Count = Union[int, np.ndarray, tf.Tensor]

# Grid over log t: the integrands are smooth in u = log t; t from e^-30 (count ~1e10 keys)
# to e^(8 sd + 6) (beyond it every e^(-t e^x) term has vanished).
_U_STEP = 0.04
_X_POINTS = 801


@functools.lru_cache(maxsize=64)
def _laplace_tables(variance: float) -> dict[str, np.ndarray]:
    """Per-grid-point arrays for logit variance ``variance`` (float64)."""
    if not (math.isfinite(variance) and variance >= 0):
        raise ValueError(f"softmax logit variance must be finite and >= 0, got {variance!r}")
    sd = math.sqrt(variance)
    u = np.arange(-30.0, 8.0 * sd + 6.0, _U_STEP)
    t = np.exp(u)[:, None]
    if sd == 0.0:
        x, px = np.zeros(1), np.ones(1)
    else:
        x = np.linspace(-9.0 * sd, 9.0 * sd, _X_POINTS)
        px = np.exp(-0.5 * (x / sd) ** 2)
        px /= px.sum()
    ex = np.exp(x)[None, :]
    kernel = np.exp(-t * ex) * px  # (grid, x)
    t1 = t[:, 0]
    m2, m3, m4 = (np.sum(kernel * ex**k, axis=1) for k in (2, 3, 4))
    log_l = np.log(np.maximum(np.sum(kernel, axis=1), 1e-300))
    # du-weighted integrands; dt = t du adds one power of t.
    return {
        "log_l": log_l,
        "s2": _U_STEP * t1**2 * m2,
        "s3": _U_STEP * t1**3 * m3 / 2.0,
        "s4": _U_STEP * t1**4 * m4 / 6.0,
        "s22": _U_STEP * t1**4 * m2 * m2 / 6.0,
    }


def sum_square_weights(count: Union[int, np.ndarray], variance: float) -> np.ndarray:
    """E[sum_j w_j^2] for ``count`` iid N(0, variance) logits (numpy; count >= 1)."""
    n = np.asarray(count, dtype=np.float64)[..., None]
    tables = _laplace_tables(float(variance))
    return np.asarray(n[..., 0] * np.sum(tables["s2"] * np.exp((n - 1) * tables["log_l"]), -1))


def _laplace_term(tables: dict, name: str, n: tf.Tensor, skip: float) -> tf.Tensor:
    """sum_k tables[name]_k * l_k^max(n - skip, 0) for counts n (..., 1), float32 (...)."""
    log_l = tf.constant(tables["log_l"], tf.float32)
    power = tf.exp(tf.maximum(n - skip, 0.0) * log_l)
    return tf.reduce_sum(tf.constant(tables[name], tf.float32) * power, axis=-1)


def sum_square_weights_tf(count: tf.Tensor, variance: float) -> tf.Tensor:
    """``sum_square_weights`` for an integer tensor of counts (>= 1), float32."""
    n = tf.cast(count, tf.float32)[..., None]
    return n[..., 0] * _laplace_term(_laplace_tables(float(variance)), "s2", n, 1.0)


def gradient_moment(count: int, variance: float) -> float:
    """E[S_2 - 2 S_3 + S_2^2]: n times the mean square of softmax's input gradient over its
    n entries, per unit mult^2, for a unit iid upstream gradient g.

    dx_i = w_i (g_i - sum_j w_j g_j) has variance w_i^2 (1 - 2 w_i + S_2) given w.
    """
    tables = _laplace_tables(float(variance))
    n = float(count)
    power = np.exp((n - 1) * tables["log_l"])
    s2 = n * np.sum(tables["s2"] * power)
    s3 = n * np.sum(tables["s3"] * power)
    s22 = n * np.sum(tables["s4"] * power)
    if count > 1:
        power2 = np.exp((n - 2) * tables["log_l"])
        s22 += n * (n - 1) * np.sum(tables["s22"] * power2)
    return float(s2 - 2 * s3 + s22)


def softmax_scales(size: int, mult: float = 1.0) -> tuple[float, float]:
    """Ideal (output, input-gradient) scales of softmax(mult x) over ``size`` entries.

    Output: 1 / rms(w) = (size / E[S_2])^1/2, unit *second moment* (a softmax's mean, 1/size,
    is never 0: the scaled output has mean (size E[S_2])^-1/2 ~ e^(-v/2) and std
    (1 - mean^2)^1/2). Gradient: (size / E[S_2 - 2 S_3 + S_2^2])^1/2 / mult, unit rms of
    dL/dx. Limits: uniform (mult -> 0) size and size / mult; one-hot size^1/2 both.
    """
    if not (math.isfinite(mult) and mult > 0):
        raise ValueError(f"softmax mult must be a finite number > 0, got {mult!r}")
    if size < 1:
        raise ValueError(f"softmax needs at least one entry on its axis, got {size}")
    variance = mult * mult
    output = math.sqrt(size / float(sum_square_weights(size, variance)))
    if size == 1:
        return output, 1.0  # the gradient is exactly 0; leave it alone
    gradient = math.sqrt(size / gradient_moment(size, variance)) / mult
    return output, gradient


def softmax(
    x: tf.Tensor, axis: int = -1, mult: float = 1.0, constraint: Constraint = "gmean"
) -> tf.Tensor:
    """Unit-scaled ``keras.ops.softmax(mult * x, axis)``.

    Scales from ``softmax_scales(n, mult)`` with n = x.shape[axis] (static), exact for iid
    N(0, 1) inputs: the output has unit rms (not unit std: see ``softmax_scales``) and the
    input gradient unit rms; ``constraint`` ties them (x is a non-cut edge). For large n at
    mult 1 both approach n e^-1/2: n = 256 gives 157.4 and 160.6 (gmean 159.0); at mult 1/4,
    248.2 and 995.0. ``scmm.uscale.softmax`` (the paper's table) uses n for both, exact only
    for the mean.
    """
    x = tf.convert_to_tensor(x)
    if not isinstance(axis, int):
        raise ValueError(f"U.softmax takes one int axis, got {axis!r}")
    if not -len(x.shape) <= axis < len(x.shape):
        raise ValueError(f"U.softmax: axis {axis} out of range for shape {x.shape}")
    size = x.shape[axis]
    if size is None:
        raise ValueError(f"U.softmax needs a static size on axis {axis}, got {x.shape}")
    forward, backward = constrain(*softmax_scales(int(size), float(mult)), constraint)

    def tempered(logits: tf.Tensor) -> tf.Tensor:
        if mult != 1.0:
            logits = logits * tf.cast(mult, logits.dtype)
        return tf.nn.softmax(logits, axis=axis)

    if forward == backward:
        return tempered(x) * tf.cast(forward, x.dtype)
    return scaling(tempered(scaling(x, backward=backward)), forward=forward)


def gradient_moment_tf(count: tf.Tensor, variance: float) -> tf.Tensor:
    """``gradient_moment`` for an integer tensor of counts (>= 1), float32 (0 for count 1)."""
    tables = _laplace_tables(float(variance))
    n = tf.cast(count, tf.float32)[..., None]
    s2 = sum_square_weights_tf(count, variance)
    s3 = n[..., 0] * _laplace_term(tables, "s3", n, 1.0)
    pairs = n[..., 0] * (n[..., 0] - 1.0)
    s22 = n[..., 0] * _laplace_term(tables, "s4", n, 1.0) + pairs * _laplace_term(
        tables, "s22", n, 2.0
    )
    return tf.maximum(s2 - 2.0 * s3 + s22, 0.0)
