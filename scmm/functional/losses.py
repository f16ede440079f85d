"""Unit-scaled softmax cross-entropy under ``keras.ops``'s name, sparse_categorical_crossentropy.

The rule is ``scmm.uscale.softmax_cross_entropy``'s:

- Forward: the mean cross-entropy over the scored (non-ignored) tokens, exactly what
  ``keras.losses.SparseCategoricalCrossentropy(ignore_class=...)`` reports. (The PyTorch
  library divides by *all* tokens when some are ignored, which under-reports the loss.) The
  loss is a final output, so it is not unit-scaled.
- Backward: a scored token's logits gradient is (softmax - onehot), std ~sqrt(V - 1) / V over
  V classes for near-uniform predictions (as at initialisation). It is multiplied by
  V / sqrt(V - 1), and the mean's 1 / count is undone, so every scored position's logits
  gradient has std ~1 whatever the number of tokens; ignored positions get exactly zero. The
  count is a scalar tensor (it depends on the data and on a None batch).
- ``mult`` (u-muP's alpha_loss-softmax): the loss of ``mult`` x logits, with the backward scale
  divided by ``mult`` so that the logits gradient stays unit.

Unlike ``keras.ops.sparse_categorical_crossentropy`` (per-token values), this returns the
reduced scalar: the unit-scaled gradient needs to know the reduction. For ``model.compile``
use ``scmm.uu.losses.SparseCategoricalCrossentropy``, which hands Keras per-token values.
"""

import math
from typing import Optional

import tensorflow as tf

from ..uscale.scaling import scaling


def check_loss_options(from_logits: bool, mult: float) -> float:
    """``mult`` as a float; a ValueError for probabilities or a bad mult."""
    if from_logits is not True:
        raise ValueError(
            f"unit-scaled cross-entropy needs logits (from_logits=True), got from_logits="
            f"{from_logits!r}: its gradient scale is that of softmax(logits) - onehot"
        )
    if isinstance(mult, bool) or not isinstance(mult, (int, float)):
        raise ValueError(f"cross-entropy mult must be a finite number > 0, got {mult!r}")
    if not (math.isfinite(mult) and mult > 0):
        raise ValueError(f"cross-entropy mult must be a finite number > 0, got {mult!r}")
    return float(mult)


def _class_axis_last(output: tf.Tensor, axis: int) -> tuple[tf.Tensor, int]:
    rank = len(output.shape)
    if rank < 1 or not -rank <= axis < rank:
        raise ValueError(f"cross-entropy axis {axis} is out of range for logits {output.shape}")
    axis %= rank
    if axis != rank - 1:
        perm = [d for d in range(rank) if d != axis] + [axis]
        output = tf.transpose(output, perm)  # (..., classes)
    return output, axis


def _sparse_targets(target: tf.Tensor, logits_shape: tf.TensorShape, axis: int) -> tf.Tensor:
    # Keras accepts targets with a size-1 class axis; its losses hand them over as floats.
    token_shape = logits_shape[:-1]
    if len(target.shape) == len(token_shape) + 1 and target.shape[axis] == 1:
        target = tf.squeeze(target, axis=axis)
    if not target.shape.is_compatible_with(token_shape):
        raise ValueError(
            f"cross-entropy targets of shape {target.shape} do not match the logits' token"
            f" shape {token_shape} (logits {logits_shape} with the class axis removed)"
        )
    return target


def token_losses(
    target: tf.Tensor,
    output: tf.Tensor,
    axis: int = -1,
    ignore_class: Optional[int] = None,
    mult: float = 1.0,
) -> tuple[tf.Tensor, Optional[tf.Tensor]]:
    """(per-token float32 losses, float32 mask of scored tokens or None when all are).

    Ignored tokens have loss 0 and no gradient. The logits' gradient carries the
    V / (sqrt(V - 1) mult) factor; the caller undoes its reduction's 1 / count.
    """
    output = tf.convert_to_tensor(output)
    if not output.dtype.is_floating:
        raise ValueError(f"cross-entropy logits must be floating point, got {output.dtype.name}")
    logits, axis = _class_axis_last(output, axis)
    classes = logits.shape[-1]
    if classes is None or classes < 2:
        raise ValueError(f"cross-entropy needs a static class axis of size >= 2, got {classes}")
    target = _sparse_targets(tf.convert_to_tensor(target), logits.shape, axis)
    valid = None
    if ignore_class is not None:
        scored = tf.not_equal(target, tf.cast(ignore_class, target.dtype))
        target = tf.where(scored, target, tf.zeros_like(target))  # a valid class for ignored
        valid = tf.cast(scored, tf.float32)
    labels = tf.cast(target, tf.int32)
    logits32 = scaling(
        tf.cast(logits, tf.float32), backward=classes / math.sqrt(classes - 1) / mult
    )
    if mult != 1.0:
        logits32 = logits32 * mult
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits32)
    if valid is not None:
        per_token = tf.where(valid > 0, per_token, tf.zeros_like(per_token))
    return per_token, valid


def sparse_categorical_crossentropy(
    target: tf.Tensor,
    output: tf.Tensor,
    from_logits: bool = True,
    axis: int = -1,
    ignore_class: Optional[int] = None,
    mult: float = 1.0,
) -> tf.Tensor:
    """Mean softmax cross-entropy over scored tokens (float32 scalar), unit-scaled logits
    gradient. ``target`` holds class ids (those equal to ``ignore_class`` are not scored),
    ``output`` the logits with classes on ``axis``."""
    mult = check_loss_options(from_logits, mult)
    per_token, valid = token_losses(target, output, axis, ignore_class, mult)
    total = tf.reduce_sum(per_token)
    if valid is None:
        count = tf.cast(tf.size(per_token), tf.float32)
    else:
        count = tf.reduce_sum(valid)
    count = tf.stop_gradient(tf.maximum(count, 1.0))
    # The mean's 1 / count is undone in the backward pass: a sum's gradient per token.
    return scaling(total / count, backward=count)
