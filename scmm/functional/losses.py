"""The unit-scaled softmax cross-entropy under Keras's name (``scmm.U.sparse_categorical_crossentropy``).

The value is Keras's masked mean cross-entropy from logits (the mean over the *scored* tokens:
the PyTorch library's ``ignore_index`` divides by all tokens instead). The gradient is
``scmm.uscale.softmax_cross_entropy``'s: the logits' gradient scaled to std ~1 at every scored
position (times vocab / sqrt(vocab - 1), and the 1/count of the mean undone), exactly zero at
ignored ones. Unlike ``keras.ops.sparse_categorical_crossentropy`` it returns the reduced
scalar: the gradient's scale depends on the count of scored tokens, so it cannot be left to a
later reduction.
"""

from typing import Any, Optional

import tensorflow as tf

from .. import uscale


def sparse_categorical_crossentropy(  # pylint: disable=too-many-arguments
    target: Any,
    output: Any,
    from_logits: bool = True,
    axis: int = -1,
    ignore_class: Optional[int] = None,
    mult: float = 1.0,
) -> tf.Tensor:
    """Mean cross-entropy over the non-ignored targets (float32 scalar), unit-scaled gradient.

    target (...) int, output (..., classes) logits. ``mult``: u-mup's loss-softmax temperature.
    """
    if not from_logits:
        raise ValueError(
            "a unit-scaled cross-entropy needs logits (from_logits=True): its backward scales"
            " the logits' gradient, which probabilities do not have"
        )
    logits = tf.convert_to_tensor(output)
    if axis not in (-1, len(logits.shape) - 1):
        raise ValueError(f"the classes must be the last axis, got axis={axis}")
    target = tf.cast(tf.convert_to_tensor(target), tf.int32)
    if target.shape.rank == logits.shape.rank and target.shape[-1] == 1:
        target = tf.squeeze(target, -1)  # Keras accepts (..., 1) targets
    if ignore_class is None:
        mask = tf.ones_like(target, dtype=tf.float32)
    else:
        mask = tf.cast(tf.not_equal(target, ignore_class), tf.float32)
        target = tf.where(tf.equal(target, ignore_class), tf.zeros_like(target), target)
    loss, _ = uscale.softmax_cross_entropy(logits, target, mask, mult=mult)
    return loss
