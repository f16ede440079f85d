"""``SparseCategoricalCrossentropy``: a ``keras.losses.Loss`` for ``model.compile(loss=...)``
whose value is Keras's and whose logits gradient, through Keras's own reduction, is the
unit-scaled one of ``scmm.U.sparse_categorical_crossentropy``.

Keras's ``Loss.__call__`` takes the per-token values from ``call`` and reduces them itself:
``sum(values * sample_weight) / n`` with n the number of tokens (``"sum_over_batch_size"``,
the default) or plain sum (``"sum"``). So ``call`` returns per-token values built to survive
that reduction:

    value_i = loss_i * n / count  in the forward pass   (Keras's mean over the scored tokens)
    d value_i <- n * upstream     in the backward pass  (undoes Keras's 1 / n)

where count is the number of scored tokens (those not equal to ``ignore_class``; n when none
is ignored). The reduced loss is then sum(loss_i) / count, and each scored token's logits
gradient is the unit-scaled (softmax - onehot) V / sqrt(V - 1). Under ``"sum"`` the values
pass unchanged (a sum has no 1 / n). Sample weights multiply both, as in Keras.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional import losses
from ..uscale.scaling import scaling
from .base import PACKAGE

SUPPORTED_REDUCTIONS = ("sum_over_batch_size", "mean", "sum")


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Unit-scaled ``keras.losses.SparseCategoricalCrossentropy`` (logits only).

    ``mult`` is u-muP's loss-softmax multiplier (the loss of ``mult`` x logits). Reductions
    ``"sum_over_batch_size"`` / ``"mean"`` (the mean over scored tokens) and ``"sum"``; the
    per-token ``None`` / ``"none"`` and ``"mean_with_sample_weight"`` are refused, because
    the gradient scale depends on the reduction.
    """

    def __init__(
        self,
        from_logits: bool = True,
        ignore_class: Optional[int] = None,
        mult: float = 1.0,
        reduction: Optional[str] = "sum_over_batch_size",
        name: str = "sparse_categorical_crossentropy",
        dtype: Any = None,
    ):
        self.mult = losses.check_loss_options(from_logits, mult)
        if reduction not in SUPPORTED_REDUCTIONS:
            raise ValueError(
                f"unit-scaled cross-entropy supports reduction in {SUPPORTED_REDUCTIONS}, got"
                f" {reduction!r}: the logits' gradient scale depends on the reduction"
            )
        if ignore_class is not None and (
            isinstance(ignore_class, bool) or not isinstance(ignore_class, int)
        ):
            raise ValueError(f"ignore_class must be an int or None, got {ignore_class!r}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.ignore_class = ignore_class

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        per_token, valid = losses.token_losses(
            y_true, y_pred, ignore_class=self.ignore_class, mult=self.mult
        )
        if self.reduction == "sum":
            return tf.cast(per_token, self.dtype)
        tokens = tf.cast(tf.size(per_token), tf.float32)
        count = tokens if valid is None else tf.maximum(tf.reduce_sum(valid), 1.0)
        tokens, count = tf.stop_gradient(tokens), tf.stop_gradient(count)
        values = scaling(per_token, forward=tokens / count, backward=tokens)
        return tf.cast(values, self.dtype)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "from_logits": self.from_logits,
            "ignore_class": self.ignore_class,
            "mult": self.mult,
        }
