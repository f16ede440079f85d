"""Unit-scaled nonlinearities, softmax and the softmax cross-entropy loss.

Elementwise ops follow the recipe in ``scmm.uscale.ops``. The ideal scales are the reciprocal
stds of f(x) and of f'(x) g for x, g ~ N(0, 1), and the constraint resolves them. Under
"gmean", the constrained scale c is applied as a plain multiply c f(x), which is already the
consistent pair.
"""

import math
from typing import Callable

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


def gelu(x: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Scaled exact (erf) GELU. Ideal: out 1.701, grad 1.481. gmean 1.587, as in the paper."""
    return _elementwise(lambda t: tf.nn.gelu(t, approximate=False), x, GELU_SCALES, constraint)


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
    logits: tf.Tensor, targets: tf.Tensor, mask: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(masked mean cross-entropy, token count), both float32, from logits (..., s).

    Forward: exactly ``scmm.models.masked_cross_entropy``'s sum / max(count, 1), bit for bit.
    The loss is a final output, so it is not unit-scaled.

    Backward: the logits' gradient is (softmax - onehot) per scored token. Its std over the
    s classes is sqrt(s - 1) / s for near-uniform predictions. It is scaled by s / sqrt(s - 1),
    and the 1/count of the mean is undone (``scaling(backward=count)``, as if the loss were a
    sum over tokens). The logits' gradient std is then ~1 at every scored position, whatever
    the batch size. Unscored positions get exactly zero.
    """
    classes = static_size(logits.shape[-1:], "softmax_cross_entropy logits")
    if classes < 2:
        raise ValueError(f"softmax_cross_entropy needs >= 2 classes, got {classes}")
    logits32 = scaling(tf.cast(logits, tf.float32), backward=classes / math.sqrt(classes - 1))
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits32)
    weights = tf.cast(mask, tf.float32)
    total = tf.reduce_sum(per_token * weights)
    n_tokens = tf.reduce_sum(weights)
    count = tf.maximum(n_tokens, 1.0)
    return scaling(total / count, backward=tf.stop_gradient(count)), n_tokens
