"""scmm.formats: quantisation bit-exact against ml_dtypes, saturation, NaN/inf, gradients."""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from scmm.formats import get_format, quantise, quantise_gradient

FP8 = {"float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}
SOURCES = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}


def hard_cases(fmt: str) -> np.ndarray:
    """Every FP8 value, every midpoint between neighbours and the floats either side of it,
    a dense random sample over 50 octaves, and the specials."""
    dtype = FP8[fmt]
    every = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    finite = np.unique(every[np.isfinite(every)])
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(100_000) * np.exp2(rng.uniform(-30, 20, 100_000))
    specials = [np.inf, -np.inf, np.nan, 1e30, -1e30, 0.0, -0.0, 448.0, 464.0, 57344.0, 61440.0]
    return np.concatenate(
        [
            every,
            mids,
            np.nextafter(mids, np.float32(np.inf)),
            np.nextafter(mids, np.float32(-np.inf)),
            sample.astype(np.float32),
            np.array(specials, np.float32),
        ]
    )


def same_bits(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got32, want32 = got.astype(np.float32), want.astype(np.float32)
    return (got32.view(np.uint32) == want32.view(np.uint32)) | (np.isnan(got32) & np.isnan(want32))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fmt", FP8)
@pytest.mark.parametrize("xla", [False, True])
def test_bit_exact_against_ml_dtypes(fmt: str, source: str, xla: bool) -> None:
    numpy_source = ml_dtypes.bfloat16 if source == "bfloat16" else np.dtype(source)
    with np.errstate(over="ignore"):
        values = hard_cases(fmt).astype(numpy_source)
    want = values.astype(FP8[fmt]).astype(numpy_source)
    fn = tf.function(lambda x: quantise(x, fmt), jit_compile=True) if xla else None
    tensor = tf.constant(values, SOURCES[source])
    got = (fn(tensor) if fn else quantise(tensor, fmt)).numpy()
    assert got.dtype == numpy_source
    mismatch = ~same_bits(got, want)
    assert not mismatch.any(), (values[mismatch][:5], got[mismatch][:5], want[mismatch][:5])


def test_format_ranges_are_ocp() -> None:
    e4m3, e5m2 = get_format("e4m3"), get_format("e5m2")
    assert (e4m3.max_finite, e4m3.smallest_normal, e4m3.smallest_subnormal) == (448, 2**-6, 2**-9)
    assert (e5m2.max_finite, e5m2.smallest_normal, e5m2.smallest_subnormal) == (
        57344,
        2**-14,
        2**-16,
    )
    assert not e4m3.has_infinity and e5m2.has_infinity
    with pytest.raises(ValueError, match="unknown number format 'e3m4x'"):
        get_format("e3m4x")


def test_round_to_nearest_even_and_subnormals() -> None:
    # E4M3 around 1: spacing 2^-3. 1 + 2^-4 is a tie between 1 and 1.125: even mantissa is 1.
    values = tf.constant([1 + 2**-4, 1 + 3 * 2**-4, 2**-9, 2**-10, 1.5 * 2**-10, 3 * 2**-10])
    got = quantise(values, "e4m3").numpy().tolist()
    # 2^-10 is the tie between 0 and the smallest subnormal 2^-9: to even, 0.
    assert got == [1.0, 1.25, 2**-9, 0.0, 2**-9, 2**-8]


def test_non_saturating_overflow_and_specials() -> None:
    values = tf.constant([500.0, -500.0, np.inf, -np.inf, np.nan, 1e5, 6e4])
    e4m3 = quantise(values, "e4m3").numpy()
    assert np.isnan(e4m3[:5]).all() and np.isnan(e4m3[5:]).all()
    e5m2 = quantise(values, "e5m2").numpy()
    assert e5m2[0] == 512 and e5m2[1] == -512
    assert e5m2[2] == np.inf and e5m2[3] == -np.inf and np.isnan(e5m2[4])
    assert e5m2[5] == np.inf and e5m2[6] == 57344  # 6e4 rounds down to the max


def test_saturating_mode_clamps_finite_values_only() -> None:
    values = tf.constant([500.0, -1e30, np.inf, -np.inf, np.nan, 3.0])
    e4m3 = quantise(values, "e4m3", saturate=True).numpy()
    assert e4m3[0] == 448 and e4m3[1] == -448 and e4m3[5] == 3.0
    assert np.isnan(e4m3[2:5]).all()  # no infinity in E4M3FN; NaN stays NaN
    e5m2 = quantise(values, "e5m2", saturate=True).numpy()
    assert e5m2[0] == 512 and e5m2[1] == -57344
    assert e5m2[2] == np.inf and e5m2[3] == -np.inf and np.isnan(e5m2[4])


def test_float32_format_is_the_identity() -> None:
    values = tf.constant(np.random.default_rng(1).standard_normal(1000).astype(np.float32))
    assert quantise(values, "float32") is values
    assert quantise(tf.cast(values, tf.bfloat16), "bfloat16").dtype == tf.bfloat16


def test_straight_through_gradient_within_range_zero_on_overflow() -> None:
    values = tf.constant([0.1, 3.0, -7.0, 1000.0])
    upstream = tf.constant([1.0, 2.0, 3.0, 4.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        plain = quantise(values, "e4m3")
        saturated = quantise(values, "e4m3", saturate=True)
    assert tape.gradient(plain, values, upstream).numpy().tolist() == [1.0, 2.0, 3.0, 0.0]
    assert tape.gradient(saturated, values, upstream).numpy().tolist() == [1.0, 2.0, 3.0, 4.0]


def test_quantise_gradient_is_identity_forward_and_rounds_backward() -> None:
    values = tf.constant([1.0, 2.0, 3.0])
    upstream = tf.constant([1 + 2**-4, 1e-9, 1e5])
    with tf.GradientTape() as tape:
        tape.watch(values)
        out = quantise_gradient(values, "e5m2")
    assert out.numpy().tolist() == [1.0, 2.0, 3.0]
    grad = tape.gradient(out, values, upstream).numpy()
    # E5M2 near 1: spacing 2^-2, so 1 + 2^-4 rounds to 1; 1e-9 flushes; 1e5 overflows to inf.
    assert grad.tolist() == [1.0, 0.0, np.inf]
