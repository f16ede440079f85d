"""Replicas' gradients and metrics combined into the global batch's (data parallelism).

The global batch of one optimiser step is split over R replicas (and, inside each, over M
micro-batches). The combination is that of gradient accumulation
(``scmm.training.accumulation``), across devices instead of across time:

- ``"mean"`` loss reduction (an ordinary masked-mean cross-entropy): replica r's gradient is
  of its own mean over n_r tokens, so the global gradient is sum_r n_r g_r / sum_r n_r:
  token-weighted, exact whatever each replica's token count (masks, padding).
- ``"sum"`` (the unit-scaled cross-entropy): the replicas' gradients add, because the trainer
  traces each replica's step under ``scmm.uscale.batch_split(R)`` (nested with the
  micro-batches' M: R x M parts), so every rows^-1/2 counts the global rows. A mean over
  replicas without it would be 1/sqrt(R) of the one-device gradient.

Metrics combine like accumulation's (``combine_outputs``): per-token averages token-weighted,
``n_tokens`` summed, ``*_rms`` as the root of the mean square, ``perplexity`` as exp of the
combined ``xentropy``. One all-reduce carries gradients and metrics together.
"""

from typing import Any, Callable, Mapping

import tensorflow as tf

from .accumulation import REDUCTIONS

# Inside a replica: a list of tensors -> each summed over the replicas.
AllSum = Callable[[list[tf.Tensor]], list[tf.Tensor]]


def combine_replicas(
    outputs: Mapping[str, tf.Tensor],
    grads: list[Any],
    reduction: str,
    all_sum: AllSum,
    replicas: int,
) -> tuple[dict[str, tf.Tensor], list[Any]]:
    """(global outputs, global gradients) from one replica's (module docstring); call inside
    the replica. With one replica, the inputs unchanged."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if replicas == 1:
        return dict(outputs), list(grads)
    count = tf.cast(outputs["n_tokens"], tf.float32)
    keys = [key for key in outputs if key != "n_tokens"]
    # Per-token averages are summed weighted by the replica's tokens, *_rms as squares.
    local = [
        (
            tf.square(tf.cast(outputs[k], tf.float32))
            if k.endswith("_rms")
            else tf.cast(outputs[k], tf.float32) * count
        )
        for k in keys
    ]
    present = [i for i, g in enumerate(grads) if g is not None]
    # An embedding's IndexedSlices becomes dense: replicas touch different rows.
    dense = [tf.convert_to_tensor(grads[i]) for i in present]
    if reduction == "mean":
        dense = [g * tf.cast(count, g.dtype) for g in dense]
    summed = all_sum([count, *local, *dense])
    total, sums, summed_grads = summed[0], summed[1 : 1 + len(keys)], summed[1 + len(keys) :]
    safe = tf.maximum(total, 1.0)
    combined: dict[str, tf.Tensor] = {"n_tokens": total}
    for key, value in zip(keys, sums):
        combined[key] = tf.sqrt(value / replicas) if key.endswith("_rms") else value / safe
    if "perplexity" in combined and "xentropy" in combined:
        combined["perplexity"] = tf.exp(combined["xentropy"])
    if reduction == "mean":
        summed_grads = [g / tf.cast(safe, g.dtype) for g in summed_grads]
    result: list[Any] = [None] * len(grads)
    for index, grad in zip(present, summed_grads):
        result[index] = grad
    return combined, result
