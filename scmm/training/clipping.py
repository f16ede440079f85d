"""Gradient clipping: a pure function of the gradients and ``training.clipping``.

``clip_gradients(grads, settings)`` returns the clipped gradients and the step's clipping
metrics: ``grad_norm``, the global L2 norm of the gradients it was given (every mode, ``none``
included), and, for the per-tensor modes, ``clipped_fraction``, the fraction of gradient
tensors it clipped. The modes:

- ``none``: the gradients come back as they went in (the same tensors), so training is
  bit-identical to no clipping; only the norm is computed, for the log.
- ``global_norm``: every gradient times ``threshold x min(1 / norm, 1 / threshold)``, the
  arithmetic of ``tf.clip_by_global_norm`` op for op (so equal to it bit for bit).
- ``norm``: each tensor as ``tf.clip_by_norm(g, threshold)``, op for op.
- ``rms``: each tensor whose RMS (L2 norm / sqrt(number of elements)) is above ``threshold``
  times ``threshold / RMS``; a tensor at or under it is returned untouched. Unit-scaled
  gradients have RMS about 1 at init, so a threshold of a few is "clip the outliers" whatever
  the tensor's size, which no single norm threshold is.

The trainer calls it on the *unscaled* gradients (loss scale divided out, gradient factors
applied), after the finiteness check of dynamic loss scaling: Graphcore's sparse-LM optimiser
wrapper clips the scaled gradients, so its threshold silently moves with the loss scale.

Non-finite values are never made finite. A gradient tensor whose norm is inf or NaN (it holds
an inf or a NaN, or its sum of squares overflows float32) comes back all NaN in the per-tensor
modes, and a non-finite global norm makes every gradient NaN in ``global_norm`` mode (as in
``tf.clip_by_global_norm``). A static-loss-scale run then reports divergence as it would have
without clipping, and a dynamic one has already skipped the step. (``tf.clip_by_norm`` would
return zeros for a finite tensor whose sum of squares overflows; here it is NaN.)

Sparse gradients (``tf.IndexedSlices``, e.g. an embedding lookup's) are clipped by the norm of
the dense tensor they stand for: rows gathered more than once are summed first (the values'
own norm would overcount them), and the result is an ``IndexedSlices`` with one row per
index. The RMS of a sparse gradient divides by the dense tensor's size, unseen rows counted as
zeros. ``None`` gradients (unconnected variables) pass through and count for nothing.
"""

from typing import Optional, Sequence, Union

import tensorflow as tf

from .settings import ClippingSettings

Gradient = Union[tf.Tensor, tf.IndexedSlices]

GRAD_NORM = "grad_norm"
CLIPPED_FRACTION = "clipped_fraction"
# Every metric clip_gradients can return (the trainer refuses model outputs with these names).
CLIPPING_METRICS = (GRAD_NORM, CLIPPED_FRACTION)
PER_TENSOR_MODES = ("norm", "rms")


def metric_names(settings: ClippingSettings) -> tuple[str, ...]:
    """The metrics ``clip_gradients`` returns under ``settings``, in order."""
    return CLIPPING_METRICS if settings.mode in PER_TENSOR_MODES else (GRAD_NORM,)


def deduplicate(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """The same sparse gradient with each index once (its rows summed), so that its values
    have the norm of the dense tensor it stands for."""
    unique, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, grad.dense_shape)


def _values(grad: Gradient) -> tf.Tensor:
    return grad.values if isinstance(grad, tf.IndexedSlices) else tf.convert_to_tensor(grad)


def _like(grad: Gradient, values: tf.Tensor) -> Gradient:
    """``values`` in the form of ``grad`` (sparse stays sparse)."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    return values


def _size(grad: Gradient) -> tf.Tensor:
    """Number of elements of the dense tensor ``grad`` stands for (float32)."""
    if isinstance(grad, tf.IndexedSlices):
        if grad.dense_shape is None:
            raise ValueError("an IndexedSlices gradient without dense_shape has no RMS")
        return tf.cast(tf.reduce_prod(grad.dense_shape), tf.float32)
    return tf.cast(tf.size(grad), tf.float32)


def global_norm(values: Sequence[tf.Tensor]) -> tf.Tensor:
    """sqrt(sum of squares) over all of ``values`` in float32, computed as
    ``tf.linalg.global_norm`` does (bit-identical to it for float32 values)."""
    if not values:
        return tf.constant(0.0, tf.float32)
    half_squares = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in values]
    return tf.sqrt(tf.reduce_sum(tf.stack(half_squares)) * tf.constant(2.0, tf.float32))


def _tensor_norm(values: tf.Tensor) -> tf.Tensor:
    """L2 norm of one tensor, as ``tf.clip_by_norm`` computes it (float32)."""
    values = tf.cast(values, tf.float32)
    l2sum = tf.reduce_sum(values * values)
    positive = l2sum > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, l2sum, tf.ones_like(l2sum))), l2sum)


def _nan_unless_finite(norm: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.math.is_finite(norm), values, tf.constant(float("nan"), values.dtype))


def _clip_norm(values: tf.Tensor, norm: tf.Tensor, threshold: float) -> tf.Tensor:
    """tf.clip_by_norm's arithmetic: values x threshold / max(norm, threshold)."""
    limit = tf.constant(threshold, values.dtype)
    clipped = values * limit / tf.cast(tf.maximum(norm, threshold), values.dtype)
    return _nan_unless_finite(norm, clipped)


def _clip_rms(values: tf.Tensor, rms: tf.Tensor, threshold: float) -> tf.Tensor:
    """values x threshold / rms where rms > threshold (or is not finite), else values."""
    factor = tf.cast(tf.constant(threshold, tf.float32) / rms, values.dtype)
    clipped = _nan_unless_finite(rms, values * factor)
    return tf.where(rms <= threshold, values, clipped)


def clip_gradients(
    grads: Sequence[Optional[Gradient]], settings: ClippingSettings
) -> tuple[list[Optional[Gradient]], dict[str, tf.Tensor]]:
    """(clipped gradients, {metric: float32 scalar}) for ``settings.mode``; see the module
    docstring. The metrics are those of ``metric_names(settings)``."""
    settings.validate()
    present = [i for i, g in enumerate(grads) if g is not None]
    dense: dict[int, Gradient] = {
        i: deduplicate(g) if isinstance(g, tf.IndexedSlices) else g
        for i, g in ((i, grads[i]) for i in present)
    }
    norm = global_norm([_values(dense[i]) for i in present])
    metrics = {GRAD_NORM: norm}
    if settings.mode == "none":
        return list(grads), metrics

    out: list[Optional[Gradient]] = list(grads)
    threshold = float(settings.threshold)
    if settings.mode == "global_norm":
        # tf.clip_by_global_norm: a non-finite norm makes the scale (and every gradient) NaN.
        limit = tf.constant(threshold, tf.float32)
        scale = limit * tf.minimum(1.0 / norm, 1.0 / limit) + (norm - norm)
        for i in present:
            values = _values(dense[i])
            out[i] = _like(dense[i], values * tf.cast(scale, values.dtype))
        return out, metrics

    clipped = []
    for i in present:
        values = _values(dense[i])
        tensor_norm = _tensor_norm(values)
        if settings.mode == "norm":
            out[i] = _like(dense[i], _clip_norm(values, tensor_norm, threshold))
            clipped.append(~(tensor_norm <= threshold))
        else:  # rms
            rms = tensor_norm / tf.sqrt(_size(dense[i]))
            out[i] = _like(dense[i], _clip_rms(values, rms, threshold))
            clipped.append(~(rms <= threshold))
    metrics[CLIPPED_FRACTION] = (
        tf.reduce_mean(tf.cast(tf.stack(clipped), tf.float32))
        if clipped
        else tf.constant(0.0, tf.float32)
    )
    return out, metrics
