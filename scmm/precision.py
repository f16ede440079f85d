"""Simulated low-precision matmuls: the hooks every matmul/conv of the models goes through.

A model enters ``scope(settings)`` around its trunk (``CharLM`` does so in ``call``); inside
it, ``einsum`` rounds both operands to their formats (activations, weights) in the forward
pass and rounds the gradient arriving at the product in the backward pass, then computes in
the compute dtype -- what an FP8 matmul with higher-precision accumulation sees. The weight
gradient the backward matmul produces is rounded to ``weight_gradients`` (float16 for FP16
training, where it is a float16 matmul output; float32 for FP8 recipes). Outside a
scope, or with every format float32, ``einsum`` is exactly ``tf.einsum`` (no extra ops).

Unit-scaled ops call ``operand`` / ``output`` themselves so the rounding happens on the
unit-scale tensors (before a scale is folded into a weight, and on the unit gradient that
arrives at a matmul output), which is what makes FP8 work for them without per-tensor scales.

``scaling="dynamic"`` is the baseline FP8 libraries use: before the cast, each tensor is
multiplied by the power of two that brings its current abs max to the format's max, and divided
by it after (exact, being a power of two). The scope is Python state read while a function is
traced, so a compiled step captures the settings active when it was traced.

``rounding="stochastic"`` rounds every operand and gradient stochastically (``seed=None`` in
``scmm.formats.quantise``: each rounding op draws from TensorFlow's stateful generator, so
every tensor and every step gets fresh randomness).
"""

import contextlib
import math
import threading
from typing import Any, Iterator, Optional

import tensorflow as tf

from .formats import get_format, quantise
from .precision_settings import PrecisionSettings

_STATE = threading.local()


@contextlib.contextmanager
def scope(settings: Optional[PrecisionSettings]) -> Iterator[None]:
    """Matmuls traced inside use ``settings`` (None or all-float32: untouched)."""
    previous = getattr(_STATE, "settings", None)
    _STATE.settings = settings if settings is not None and settings.enabled else None
    try:
        yield
    finally:
        _STATE.settings = previous


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Matmuls traced inside are not simulated (e.g. the output projection)."""
    with scope(None):
        yield


def current() -> Optional[PrecisionSettings]:
    """The active settings, or None."""
    settings: Optional[PrecisionSettings] = getattr(_STATE, "settings", None)
    return settings


def _round(x: tf.Tensor, fmt: str, settings: PrecisionSettings) -> tf.Tensor:
    """x rounded to ``fmt`` (with dynamic scaling if asked); straight-through gradient."""
    if settings.scaling == "none":
        return _cast(x, fmt, settings)
    scale = tf.stop_gradient(_power_of_two_scale(x, fmt))
    return _cast(x * scale, fmt, settings) / scale


def _cast(x: tf.Tensor, fmt: str, settings: PrecisionSettings) -> tf.Tensor:
    y = quantise(x, fmt, saturate=settings.saturate, rounding=settings.rounding)
    if settings.subnormals or fmt == "float32":
        return y
    # Flush-to-zero hardware: |y| below the smallest normal reads as 0. The flush is exact
    # (y - flushed is 0 or y), and the gradient stays straight-through like the rounding's.
    smallest_normal = tf.cast(get_format(fmt).smallest_normal, y.dtype)
    flushed = tf.where(tf.abs(y) < smallest_normal, tf.zeros_like(y), y)
    return y + tf.stop_gradient(flushed - y)


def _power_of_two_scale(x: tf.Tensor, fmt: str) -> tf.Tensor:
    """2^floor(log2(max / amax)) as x's dtype; 1 for an all-zero (or non-finite) tensor."""
    amax = tf.reduce_max(tf.abs(tf.cast(x, tf.float32)))
    exponent = tf.floor(math.log2(get_format(fmt).max_finite) - tf.math.log(amax) / math.log(2.0))
    # Keep the scale itself finite in x's dtype (float16 tops out at 2^15).
    limit = 14.0 if x.dtype == tf.float16 else 100.0
    exponent = tf.clip_by_value(exponent, -limit, limit)
    ok = tf.math.is_finite(exponent) & (amax > 0)
    return tf.cast(tf.where(ok, tf.pow(2.0, exponent), 1.0), x.dtype)


def operand(x: tf.Tensor, role: str) -> tf.Tensor:
    """A matmul input rounded to the format of ``role`` ("activation" or "weight").

    A weight operand's gradient (the matmul's dW) is rounded to ``weight_gradients``.
    """
    settings = current()
    if settings is None:
        return x
    if role != "weight":
        return _round(x, settings.activations, settings)
    rounded = _round(x, settings.weights, settings)
    return _round_gradient(rounded, settings.weight_gradients, settings)


def output(y: tf.Tensor) -> tf.Tensor:
    """Identity forward; the gradient arriving at a matmul output is rounded."""
    settings = current()
    if settings is None:
        return y
    return _round_gradient(y, settings.gradients, settings)


def _round_gradient(y: tf.Tensor, fmt: str, settings: PrecisionSettings) -> tf.Tensor:
    """Identity forward; the gradient flowing back through it is rounded to ``fmt``."""
    if fmt == "float32":
        return y

    @tf.custom_gradient
    def identity(value: tf.Tensor) -> Any:
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return _round(upstream, fmt, settings)

        return tf.identity(value), grad

    return identity(y)


def einsum(equation: str, a: tf.Tensor, b: tf.Tensor, b_role: str = "weight") -> tf.Tensor:
    """``tf.einsum(equation, a, b)`` with ``a`` an activation and ``b`` of ``b_role``."""
    if current() is None:
        return tf.einsum(equation, a, b)
    return output(tf.einsum(equation, operand(a, "activation"), operand(b, b_role)))


def tensordot(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """x (..., i) @ w (i, o): ``tf.tensordot`` (XLA on CPU runs it much faster than an
    ellipsis einsum) with the operands and output gradient rounded like ``einsum``."""
    if current() is None:
        return tf.tensordot(x, w, axes=1)
    return output(tf.tensordot(operand(x, "activation"), operand(w, "weight"), axes=1))
