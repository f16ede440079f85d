"""Number formats: quantise-dequantise to OCP FP8 (E4M3FN, E5M2), bfloat16 and float16.

``quantise(x, fmt)`` returns ``x`` rounded to the nearest value representable in ``fmt``
(ties to even, subnormals included), in ``x``'s own dtype, so a model computes in float32 (or
16-bit) on values an FP8 matmul would see. It is TensorFlow's own cast to the format and back
(for float32 inputs to FP8 under XLA, the same rounding in bit arithmetic,
``_nearest_fp8_float32``, which XLA on CPU runs ~3x faster than its converts; tested
bit-exact the same way):
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

``rounding="stochastic"`` rounds to one of the two neighbouring values of the format instead,
away from zero with probability equal to the fractional distance ``(|x| - low) / ulp``, so
the rounding is unbiased in expectation (``stochastic_grid_value`` has the arithmetic and
its limits). Representable values, infinities and NaN come out as in nearest mode, and so
does overflow: a value between the largest finite value and the next power of the grid goes
up to it with probability frac, and is then inf/NaN (non-saturating) like a nearest overflow;
saturation clamps first. ``seed``: a (2,) integer tensor; the draws are a counter-based hash
of it and each element's index, so the same seed gives the same roundings eagerly, in
``tf.function`` and under XLA. ``None`` draws the seed from TensorFlow's stateful generator at
every call (reproducible under ``tf.random.set_seed`` when not compiled; under XLA it is
XLA's own generator, fresh each execution).
"""

import dataclasses
from typing import Any, Literal, Optional

import ml_dtypes
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # pylint: disable=no-name-in-module

FormatName = Literal["float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"]
Rounding = Literal["nearest", "stochastic"]
ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic")

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
    mantissa_bits: int
    min_exponent: int
    """Exponent of the smallest normal value (its ulp is 2^(min_exponent - mantissa_bits))."""

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
        mantissa_bits=int(info.nmant),
        min_exponent=int(info.minexp),
    )


def quantise(
    x: tf.Tensor,
    fmt: str,
    saturate: bool = False,
    rounding: str = "nearest",
    seed: Optional[Any] = None,
) -> tf.Tensor:
    """``x`` rounded to ``fmt`` and returned in ``x``'s dtype.

    rounding: "nearest" (ties to even) or "stochastic" (seed: a (2,) integer tensor, or None
    for TensorFlow's stateful generator; see the module docstring). Straight-through gradient.
    Formats at least as wide as ``x``'s dtype in both range and precision (float32 for any
    input; a 16-bit format for the same 16-bit input) return ``x`` unchanged.
    """
    target = _checked_format(fmt, rounding)
    if _no_op(x.dtype, target.name):
        return x
    return _quantise(x, target, saturate, rounding, _as_seed(seed))


def check_rounding(rounding: str) -> str:
    """``rounding`` if it is "nearest" or "stochastic", else a ValueError naming it."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {', '.join(ROUNDINGS)}")
    return rounding


def _checked_format(fmt: str, rounding: str) -> Format:
    """The argument checks of ``quantise`` and ``quantise_gradient``: ``fmt``'s format, after
    ``rounding`` is checked too (format errors first). The seed is checked by each caller:
    ``quantise`` does not look at it when the rounding is a no-op."""
    target = get_format(fmt)
    check_rounding(rounding)
    return target


def _as_seed(seed: Optional[Any]) -> Optional[tf.Tensor]:
    if seed is None:
        return None
    tensor = tf.convert_to_tensor(seed)
    if not tensor.dtype.is_integer or tensor.shape.rank != 1 or tensor.shape[0] not in (2, None):
        raise ValueError(
            f"stochastic rounding seed must be an integer tensor of shape (2,), got"
            f" {tensor.dtype.name} of shape {tensor.shape}"
        )
    return tensor


def _no_op(dtype: tf.DType, target: str) -> bool:
    return target in ("float32", dtype.name)


def _quantise(
    x: tf.Tensor, target: Format, saturate: bool, rounding: str, seed: Optional[tf.Tensor]
) -> tf.Tensor:
    @tf.custom_gradient
    def forward(value: tf.Tensor) -> Any:
        result = _cast_round_trip(value, target, saturate, rounding, seed)

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            if saturate:
                return upstream
            # A non-saturating overflow produced inf/NaN: no gradient flows through it.
            finite_out = tf.math.is_finite(result) | ~tf.math.is_finite(value)
            return tf.where(finite_out, upstream, tf.zeros_like(upstream))

        return result, grad

    return forward(x)


def _cast_round_trip(
    x: tf.Tensor,
    target: Format,
    saturate: bool,
    rounding: str = "nearest",
    seed: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    if saturate:
        limit = tf.constant(target.max_finite, x.dtype)
        clipped = tf.clip_by_value(x, -limit, limit)
        # Clamp finite values only: infinities and NaNs pass to the cast unchanged.
        x = tf.where(tf.math.is_finite(x), clipped, x)
    if rounding == "stochastic":
        # A value on the format's grid (or one step past its max): the cast below is then
        # exact, or overflows exactly as a nearest cast would.
        on_grid = stochastic_grid_value(tf.cast(x, tf.float32), target, seed)
        return tf.cast(tf.cast(on_grid, target.dtype), x.dtype)
    if x.dtype == tf.float32 and target.name in _FP8 and in_xla_context():
        # XLA on CPU converts to FP8 slowly; TensorFlow's own graph keeps the plain casts
        # (which tests/test_precision_wiring.py finds in front of every matmul).
        return _nearest_fp8_float32(x, target)
    return tf.cast(tf.cast(x, target.dtype), x.dtype)


def in_xla_context() -> bool:
    """Whether the code being traced will be compiled by XLA (no public API says so)."""
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))


_FP8 = ("float8_e4m3fn", "float8_e5m2")


def _nearest_fp8_float32(x: tf.Tensor, target: Format) -> tf.Tensor:
    """float32 ``x`` rounded to nearest (ties to even) on an FP8 grid, as float32: bit-exact
    with the cast to the format and back (``tf.cast`` twice), about 3x cheaper under XLA on
    CPU, whose f32 -> f8 -> f32 converts cost ~2 ns an element against ~0.6 ns here.

    Normal range: round the float32 bit pattern to the format's mantissa bits (add half an
    ulp minus one, plus the kept lsb, then clear the dropped bits; a carry steps the
    exponent, up to infinity). Subnormal range (|x| < 2^min_exponent): |x| / ulp rounded to
    an integer (ties to even) times the fixed subnormal ulp, both power-of-two scalings, so
    exact ((|x| + C) - C rounds eagerly, but under XLA it came back unrounded, simplified
    away); float32 subnormal inputs become 0 either way, as the cast gives. Overflow past
    the largest finite value gives NaN (E4M3FN) or infinity (E5M2); NaN passes through; the
    sign is put back last, so negative values that round to zero give -0.
    """
    dropped = 23 - target.mantissa_bits
    bits = tf.bitcast(x, tf.int32)
    sign = tf.bitwise.bitwise_and(bits, tf.constant(-(2**31), tf.int32))
    magnitude = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFFFF, tf.int32))
    lsb = tf.bitwise.bitwise_and(tf.bitwise.right_shift(magnitude, dropped), 1)
    # NaN patterns may wrap here; they are replaced by x below.
    kept = magnitude + ((1 << (dropped - 1)) - 1) + lsb
    normal = tf.bitcast(
        tf.bitwise.bitwise_and(kept, tf.constant(-(1 << dropped), tf.int32)), tf.float32
    )
    absolute = tf.bitcast(magnitude, tf.float32)
    steps = 2.0 ** (target.mantissa_bits - target.min_exponent)  # subnormal ulps per unit
    subnormal = tf.round(absolute * steps) * (1.0 / steps)  # exact scalings; ties to even
    rounded = tf.where(absolute < 2.0**target.min_exponent, subnormal, normal)
    overflow = np.inf if target.has_infinity else np.nan
    rounded = tf.where(rounded > target.max_finite, tf.constant(overflow, tf.float32), rounded)
    signed = tf.bitcast(tf.bitwise.bitwise_or(tf.bitcast(rounded, tf.int32), sign), tf.float32)
    return tf.where(tf.math.is_nan(x), x, signed)


def quantise_gradient(
    x: tf.Tensor,
    fmt: str,
    saturate: bool = False,
    rounding: str = "nearest",
    seed: Optional[Any] = None,
) -> tf.Tensor:
    """Identity in the forward pass; the gradient flowing back through it is quantised
    (``rounding`` and ``seed`` as for ``quantise``)."""
    target = _checked_format(fmt, rounding)
    seed_tensor = _as_seed(seed)

    @tf.custom_gradient
    def identity(value: tf.Tensor) -> Any:
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            if _no_op(upstream.dtype, target.name):
                return upstream
            return _cast_round_trip(upstream, target, saturate, rounding, seed_tensor)

        return tf.identity(value), grad

    return identity(x)


def stochastic_grid_value(x: tf.Tensor, target: Format, seed: Optional[tf.Tensor]) -> tf.Tensor:
    """float32 ``x`` stochastically rounded onto ``target``'s grid, still as float32.

    The result is one of the two neighbouring grid values (away from zero with probability
    frac = (|x| - low) / ulp), or one grid step past the largest finite value, which the
    caller's cast turns into inf/NaN like a nearest overflow. Non-finite values pass through.
    """
    uniform = _uniform(tf.shape(x), seed)
    if target.name == "bfloat16":
        return _stochastic_bfloat16(x, uniform)
    return _stochastic_narrow(x, target, uniform)


# Multipliers of the "triple32" integer hash (Chris Wellons' hash-prospector): a bijection on
# 32-bit words with full avalanche, so hashed consecutive indices are independent-looking bits.
_HASH_ROUNDS = ((17, 0xED5AD4BB), (11, 0xAC4C1B51), (15, 0x31848BAB))


def _uniform(shape: tf.Tensor, seed: Optional[tf.Tensor]) -> tf.Tensor:
    """Uniform float32 draws in [0, 1), multiples of 2^-24, one per element of ``shape``.

    A counter-based hash of (element index, seed) in int32 arithmetic, not TensorFlow's
    stateless random ops: their XLA kernels draw different numbers from the eager ones, and
    a seeded rounding must be the same eagerly, in ``tf.function`` and compiled. ``seed``
    None: a (2,) seed drawn from TensorFlow's stateful generator (fresh at every call).
    """
    if seed is None:
        seed = tf.random.uniform([2], minval=-(2**31), maxval=2**31 - 1, dtype=tf.int32)
    seed = tf.cast(seed, tf.int32)  # an int64 seed keeps its low 32 bits
    xor = tf.bitwise.bitwise_xor
    key = _hash(xor(seed[0], _hash(xor(seed[1], 0x632BE5AB))))
    index = tf.reshape(tf.range(tf.reduce_prod(shape), dtype=tf.int32), shape)
    bits = _hash(_hash(xor(index, key)) + key)
    # The top 24 bits (a logical shift: mask off the arithmetic shift's sign copies).
    top = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 8), 0xFFFFFF)
    return tf.cast(top, tf.float32) * 2.0**-24


def _hash(x: tf.Tensor) -> tf.Tensor:
    """triple32 on int32 words (multiplication wraps; right shifts are made logical)."""
    for shift, multiplier in _HASH_ROUNDS:
        logical = tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, shift), (1 << (32 - shift)) - 1)
        x = tf.bitwise.bitwise_xor(x, logical) * _as_int32(multiplier)
    logical = tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, 14), (1 << 18) - 1)
    return tf.bitwise.bitwise_xor(x, logical)


def _as_int32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _stochastic_narrow(x: tf.Tensor, target: Format, uniform: tf.Tensor) -> tf.Tensor:
    """FP8 and float16 targets, in float32 arithmetic.

    The ulp at |x| is 2^(max(floor(log2|x|), min_exponent) - mantissa_bits), at least 2^-24
    (float16's smallest subnormal), so every intermediate is a normal float32 and exact:
    |x| / ulp < 2^(mantissa_bits + 1) is a power-of-two division, its floor and fraction are
    exact, and (floor + up) * ulp is a small integer times a power of two. One limit: TF's CPU
    kernels flush float32 subnormal inputs (|x| < 2^-126) to zero, so those round to 0
    (their true chance of rounding up to the format's smallest value is below 2^-102). frac
    is a multiple of 2^-23 where the format is normal, so P(u < frac) is exact for the
    uniforms u; in the format's subnormal range it is exact to within 2^-23.
    """
    magnitude = tf.abs(x)
    biased_exponent = tf.bitwise.right_shift(tf.bitcast(magnitude, tf.int32), 23)
    # floor(log2|x|) for normal float32 (a subnormal's -127 is below every min_exponent).
    exponent = tf.minimum(biased_exponent - 127, 127)
    ulp_exponent = tf.maximum(exponent, target.min_exponent) - target.mantissa_bits
    ulp = tf.bitcast(tf.bitwise.left_shift(ulp_exponent + 127, 23), tf.float32)
    steps = magnitude / ulp  # exact: a power-of-two division
    low = tf.floor(steps)
    up = tf.cast(uniform < steps - low, tf.float32)
    rounded = (low + up) * ulp
    return tf.where(tf.math.is_finite(x), tf.where(x < 0, -rounded, rounded), x)


def _stochastic_bfloat16(x: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
    """bfloat16 is the top 16 bits of float32, subnormals included: round the bit pattern.

    Integer arithmetic only, so float32 subnormals (bfloat16's own subnormal range) are
    rounded exactly, which float32 arithmetic under TF's flush-to-zero could not do. Adding
    one unit to the kept bits is the next bfloat16 value across exponents, up to infinity.
    """
    bits = tf.bitcast(x, tf.int32)
    sign = tf.bitwise.bitwise_and(bits, tf.constant(-(2**31), tf.int32))
    magnitude = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFFFF, tf.int32))
    dropped = tf.bitwise.bitwise_and(magnitude, tf.constant(0xFFFF, tf.int32))
    # frac = dropped / 2^16, exact in float32, and uniforms are multiples of 2^-24.
    up = uniform < tf.cast(dropped, tf.float32) * 2.0**-16
    kept = magnitude - dropped + tf.where(up, 0x10000, 0)
    rounded = tf.bitcast(tf.bitwise.bitwise_or(kept, sign), tf.float32)
    return tf.where(tf.math.is_nan(x), x, rounded)
