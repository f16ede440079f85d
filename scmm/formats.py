"""Number formats: quantise-dequantise to OCP FP8 (E4M3FN, E5M2), bfloat16 and float16.

``quantise(x, fmt)`` returns ``x`` rounded to the nearest value representable in ``fmt``
(ties to even, subnormals included), in ``x``'s own dtype, so a model computes in float32 (or
16-bit) on values an FP8 matmul would see. It is TensorFlow's own cast to the format and back:
that cast is bit-exact against ``ml_dtypes`` for float32, float16 and bfloat16 inputs, eager
and under XLA on CPU (tested over every representable value, every midpoint between
neighbours and its two adjacent floats, and a dense random sample across 50 octaves). XLA on
GPU was not exercised here (no GPU in the development environment).

Out-of-range values:
- ``saturate=False`` (the cast's own behaviour, the OCP non-saturating mode): a finite value
  beyond the largest finite value rounds to +-inf in E5M2 and float16, and to NaN in E4M3FN,
  which has no infinity.
- ``saturate=True`` (the OCP saturating mode): finite values clamp to +-max; infinities stay
  infinite in E5M2/float16 and become NaN in E4M3FN (an infinity is not a finite overflow).
NaN stays NaN in every mode.

The gradient is straight-through: the incoming gradient passes unchanged where the input is
within the representable range (or is clamped by saturation), and is zero where a
non-saturating cast overflowed (the output there is inf/NaN and carries no gradient).
"""

import dataclasses
from typing import Any, Literal

import ml_dtypes
import numpy as np
import tensorflow as tf

FormatName = Literal["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"]

# Short names accepted everywhere a format is configured.
ALIASES = {"e4m3": "float8_e4m3fn", "e4m3fn": "float8_e4m3fn", "e5m2": "float8_e5m2"}

_TF_DTYPES: dict[str, tf.DType] = {
    "float32": tf.float32,
    "bfloat16": tf.bfloat16,
    "float16": tf.float16,
    "float8_e4m3fn": tf.dtypes.experimental.float8_e4m3fn,
    "float8_e5m2": tf.dtypes.experimental.float8_e5m2,
}


@dataclasses.dataclass(frozen=True)
class Format:
    """A number format's range (from ``ml_dtypes.finfo``) and TensorFlow dtype."""

    name: str
    max_finite: float
    smallest_normal: float
    smallest_subnormal: float
    has_infinity: bool

    @property
    def dtype(self) -> tf.DType:
        """The TensorFlow storage dtype."""
        return _TF_DTYPES[self.name]


def get_format(name: str) -> Format:
    """The format called ``name`` (or an alias such as ``e4m3``); a clear error otherwise."""
    canonical = ALIASES.get(name, name)
    if canonical not in _TF_DTYPES:
        known = sorted([*_TF_DTYPES, *ALIASES])
        raise ValueError(f"unknown number format {name!r}; expected one of {', '.join(known)}")
    info = ml_dtypes.finfo(np.dtype(getattr(ml_dtypes, canonical, canonical)))
    return Format(
        name=canonical,
        max_finite=float(info.max),
        smallest_normal=float(info.smallest_normal),
        smallest_subnormal=float(info.smallest_subnormal),
        has_infinity=canonical != "float8_e4m3fn",
    )


def quantise(x: tf.Tensor, fmt: str, saturate: bool = False) -> tf.Tensor:
    """``x`` rounded to ``fmt`` (nearest, ties to even) and returned in ``x``'s dtype.

    Straight-through gradient (see the module docstring). Formats at least as wide as
    ``x``'s dtype in both range and precision (float32 for any input; a 16-bit format for
    the same 16-bit input) return ``x`` unchanged.
    """
    target = get_format(fmt)
    if _no_op(x.dtype, target.name):
        return x
    return _quantise(x, target, saturate)


def _no_op(dtype: tf.DType, target: str) -> bool:
    return target in ("float32", dtype.name)


def _quantise(x: tf.Tensor, target: Format, saturate: bool) -> tf.Tensor:
    @tf.custom_gradient
    def forward(value: tf.Tensor) -> Any:
        result = _cast_round_trip(value, target, saturate)

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            if saturate:
                return upstream
            # A non-saturating overflow produced inf/NaN: no gradient flows through it.
            finite_out = tf.math.is_finite(result) | ~tf.math.is_finite(value)
            return tf.where(finite_out, upstream, tf.zeros_like(upstream))

        return result, grad

    return forward(x)


def _cast_round_trip(x: tf.Tensor, target: Format, saturate: bool) -> tf.Tensor:
    if saturate:
        limit = tf.constant(target.max_finite, x.dtype)
        clipped = tf.clip_by_value(x, -limit, limit)
        # Clamp finite values only: infinities and NaNs pass to the cast unchanged.
        x = tf.where(tf.math.is_finite(x), clipped, x)
    return tf.cast(tf.cast(x, target.dtype), x.dtype)


def quantise_gradient(x: tf.Tensor, fmt: str, saturate: bool = False) -> tf.Tensor:
    """Identity in the forward pass; the gradient flowing back through it is quantised."""
    target = get_format(fmt)

    @tf.custom_gradient
    def identity(value: tf.Tensor) -> Any:
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            if _no_op(upstream.dtype, target.name):
                return upstream
            return _cast_round_trip(upstream, target, saturate)

        return tf.identity(value), grad

    return identity(x)
