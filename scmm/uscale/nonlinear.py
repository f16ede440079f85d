"""Unit-scaled nonlinearities, softmax and the softmax cross-entropy loss.

Elementwise ops follow the recipe in ``scmm.uscale.ops``. The ideal scales are the reciprocal
stds of f(x) and of f'(x) g for x, g ~ N(0, 1), and the constraint resolves them. Under
"gmean", the constrained scale c is applied as a plain multiply c f(x), which is already the
consistent pair.
"""

import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from .scaling import Constraint, constrain, scaling, static_size

# (ideal output scale, ideal input-gradient scale) for x, g ~ N(0, 1): 1 / std(f(x)) and
# 1 / std(f'(x) g). These are the paper's appendix table. relu is exact; the others are numeric
# integrals to ~3 digits, checked by the tests.
RELU_SCALES = (math.sqrt(2.0 / (1.0 - 1.0 / math.pi)), math.sqrt(2.0))
GELU_SCALES = (1.701, 1.481)
TANH_SCALES = (1.593, 1.467)
SIGMOID_SCALES = (4.802, 4.722)


def _elementwise(
    fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    scales: tuple[float, float],
    constraint: Constraint,
) -> tf.Tensor:
    forward, backward = constrain(*scales, constraint)
    if forward == backward:
        return fn(x) * tf.cast(forward, x.dtype)
    return scaling(fn(scaling(x, backward=backward)), forward=forward)


def relu(x: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Scaled ReLU. Ideal: out sqrt(2 / (1 - 1/pi)) ~ 1.713, grad sqrt(2). gmean ~ 1.552."""
    return _elementwise(tf.nn.relu, x, RELU_SCALES, constraint)


def gelu(x: tf.Tensor, constraint: Constraint = "gmean", mult: Optional[float] = None) -> tf.Tensor:
    """Scaled exact (erf) GELU; with ``mult``, of ``mult`` x divided by ``mult`` (u-mup's
    alpha_ffn-act).

    No mult: ideal out 1.701, grad 1.481 (the paper's table), gmean 1.587, as in the paper. A
    mult (1 included): the ideal scales of gelu(mult x) / mult computed exactly
    (``gelu_scales``), not the PyTorch library's log-interpolated fit.
    """
    if mult is None:
        return _elementwise(lambda t: tf.nn.gelu(t, approximate=False), x, GELU_SCALES, constraint)

    def tempered(t: tf.Tensor) -> tf.Tensor:
        return tf.nn.gelu(t * tf.cast(mult, t.dtype), approximate=False) / tf.cast(mult, t.dtype)

    return _elementwise(tempered, x, gelu_scales(mult), constraint)


def gelu_scales(mult: float) -> tuple[float, float]:
    """(1 / std(f(x)), 1 / rms(f'(x))) of f(x) = gelu(mult x) / mult for x ~ N(0, 1).

    Gauss-Hermite quadrature with 200 nodes: f and f' are smooth, so this is exact to float
    precision (at mult 1 it gives 1.7009 and 1.4811, the paper's table). f' rms is the std of
    f'(x) g for an independent unit gradient g.
    """
    if not (math.isfinite(mult) and mult > 0):
        raise ValueError(f"gelu mult must be a finite number > 0, got {mult!r}")
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()  # expectation under N(0, 1)
    z = mult * nodes
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    value = z * cdf / mult
    slope = cdf + z * pdf  # d/dx gelu(mult x) / mult = gelu'(mult x)
    mean = float(np.sum(weights * value))
    std = math.sqrt(float(np.sum(weights * value * value)) - mean * mean)
    rms = math.sqrt(float(np.sum(weights * slope * slope)))
    return 1.0 / std, 1.0 / rms


def tanh(x: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Scaled tanh. Ideal: out 1.593, grad 1.467. gmean 1.529."""
    return _elementwise(tf.tanh, x, TANH_SCALES, constraint)


def sigmoid(x: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Scaled sigmoid. Ideal: out 4.802 (std of f only, f has mean 1/2), grad 4.722.

    Not for gates. A gate multiplies another tensor and must stay in (0, 1), so
    ``scmm.uscale.rnn_ops`` uses a plain sigmoid and scales the pre-activations instead.
    """
    return _elementwise(tf.sigmoid, x, SIGMOID_SCALES, constraint)


def softmax(x: tf.Tensor, axis: int = -1) -> tf.Tensor:
    """s * softmax(x) over ``axis`` of size s, with gradient scale s (paper table: a = b = s).

    This is exact for the *mean*: every output row then averages exactly 1. For unit-normal
    logits the output std is sqrt(e - 1) ~ 1.31 (log-normal), and the gradient std is also
    not 1. Causal attention rows have only i + 1 live entries, so ``attention_ops`` scales
    the attention op as a whole instead of using this.
    """
    s = x.shape[axis]
    if s is None:
        raise ValueError(f"softmax needs a static size on axis {axis}, got {x.shape}")
    return tf.nn.softmax(x, axis=axis) * tf.cast(s, x.dtype)


def softmax_cross_entropy(
    logits: tf.Tensor,
    targets: tf.Tensor,
    mask: tf.Tensor,
    mult: float = 1.0,
    weights: Optional[tf.Tensor] = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(masked mean cross-entropy, token count), both float32, from logits (..., s).

    Forward: exactly ``scmm.models.masked_cross_entropy``'s sum / max(count, 1), bit for bit.
    The loss is a final output, so it is not unit-scaled.

    Backward: the logits' gradient is (softmax - onehot) per scored token. Its std over the
    s classes is sqrt(s - 1) / s for near-uniform predictions. It is scaled by s / sqrt(s - 1),
    and the 1/count of the mean is undone (``scaling(backward=count)``, as if the loss were a
    sum over tokens). The logits' gradient std is then ~1 at every scored position, whatever
    the batch size. Unscored positions get exactly zero.

    ``mult`` (u-mup's alpha_loss-softmax) is a softmax temperature: the loss is that of
    ``mult * logits``, and the backward scale is divided by ``mult`` so the logits' gradient
    stays ~1 (exact for near-uniform predictions, as at u-mup's initialisation).

    ``weights`` (float32, the targets' shape, no gradient): the loss is sum(w CE) / count, the
    count still that of the scored tokens (Graphcore's weighted loss). Each scored token's
    logits gradient is then w times the unit one, and it is *not* rescaled back: its std over
    the scored positions is rms(w) (``tests/test_loss_weighting.py`` states the measurement).
    A factor 1 / rms(w) would depend on the batch, so the gradient of a batch would no longer
    be the sum of its parts' gradients (micro-batching), and it would change the objective's
    balance between steps; rms(w) ~ 0.2-0.5 on text is well inside every format's range.
    """
    classes = static_size(logits.shape[-1:], "softmax_cross_entropy logits")
    if classes < 2:
        raise ValueError(f"softmax_cross_entropy needs >= 2 classes, got {classes}")
    if not (math.isfinite(mult) and mult > 0):
        raise ValueError(f"cross-entropy mult must be a finite number > 0, got {mult!r}")
    logits32 = scaling(
        tf.cast(logits, tf.float32), backward=classes / math.sqrt(classes - 1) / mult
    )
    if mult != 1.0:
        logits32 = logits32 * mult
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits32)
    weights_f = tf.cast(mask, tf.float32)
    if weights is None:
        total = tf.reduce_sum(per_token * weights_f)
    else:
        token_weights = tf.stop_gradient(tf.cast(weights, tf.float32))
        total = tf.reduce_sum(per_token * weights_f * token_weights)
    n_tokens = tf.reduce_sum(weights_f)
    count = tf.maximum(n_tokens, 1.0)
    return scaling(total / count, backward=tf.stop_gradient(count)), n_tokens
