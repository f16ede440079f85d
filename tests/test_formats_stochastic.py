"""scmm.formats stochastic rounding: on the grid, one of the two neighbours, unbiased, seeded.

Statistical checks use N draws of one value and a 4-sigma binomial bound: the fraction of draws
rounded up is within 4 sqrt(p (1 - p) / N) of p = (|x| - low) / ulp, and the mean within ulp
times that. Each bound fails by chance with probability ~6e-5 (fixed seeds make the run
repeatable anyway).
"""

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from scmm import precision
from scmm.formats import get_format, quantise, quantise_gradient
from scmm.precision_settings import PrecisionSettings

NUMPY_FORMATS: dict[str, Any] = {
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
}
BITS = {"float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8, "bfloat16": np.uint16}
SEED = (3, 7)


def grid(fmt: str) -> np.ndarray:
    """Every finite value of ``fmt``, sorted, as float64 (zero once)."""
    bits = np.arange(2 ** (8 if fmt.startswith("float8") else 16), dtype=np.int64)
    pattern = bits.astype(BITS.get(fmt, np.uint16))
    with np.errstate(invalid="ignore"):  # NaN patterns
        values = pattern.view(NUMPY_FORMATS[fmt]).astype(np.float64)
    return np.unique(values[np.isfinite(values)])


def neighbours(values: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """The largest grid value <= x and the smallest >= x (within the finite range)."""
    points = grid(fmt)
    x = values.astype(np.float64)
    upper = np.searchsorted(points, x, side="left")
    lower = np.searchsorted(points, x, side="right") - 1
    return points[lower], points[upper]


def sample(fmt: str, size: int = 40_000) -> np.ndarray:
    """Random magnitudes over the format's whole finite range (subnormals included), both signs."""
    info = get_format(fmt)
    rng = np.random.default_rng(11)
    low, high = np.log2(info.smallest_subnormal) - 2, np.log2(info.max_finite)
    magnitude = np.exp2(rng.uniform(low, high, size))
    return (magnitude * rng.choice([-1.0, 1.0], size)).astype(np.float32)


def stochastic(x: tf.Tensor, fmt: str, seed: Any = SEED, **kwargs: Any) -> tf.Tensor:
    return quantise(x, fmt, rounding="stochastic", seed=seed, **kwargs)


@pytest.mark.parametrize("fmt", NUMPY_FORMATS)
@pytest.mark.parametrize("xla", [False, True])
def test_results_are_on_the_grid_and_one_of_the_two_neighbours(fmt: str, xla: bool) -> None:
    values = sample(fmt)
    fn = tf.function(lambda x: stochastic(x, fmt), jit_compile=True) if xla else None
    tensor = tf.constant(values)
    got = (fn(tensor) if fn else stochastic(tensor, fmt)).numpy()
    # On the grid: the value is its own nearest quantisation, bit for bit.
    assert np.array_equal(
        got.view(np.uint32), quantise(tf.constant(got), fmt).numpy().view(np.uint32)
    )
    low, high = neighbours(values, fmt)
    assert np.all((got == low) | (got == high))
    # Both neighbours occur (the draw is not stuck on one side).
    inexact = low != high
    assert 0.3 < np.mean(got[inexact] == high[inexact]) < 0.7


@pytest.mark.parametrize("fmt", NUMPY_FORMATS)
def test_exact_values_and_specials_are_unchanged(fmt: str) -> None:
    exact = grid(fmt).astype(np.float32)
    got = stochastic(tf.constant(np.concatenate([exact, -exact])), fmt).numpy()
    assert np.array_equal(got, np.concatenate([exact, -exact]))
    specials = stochastic(tf.constant([np.nan, -np.nan, np.inf, -np.inf, 0.0]), fmt).numpy()
    nearest = quantise(tf.constant([np.nan, -np.nan, np.inf, -np.inf, 0.0]), fmt).numpy()
    assert np.isnan(specials[:2]).all()
    np.testing.assert_array_equal(specials, nearest)  # inf -> inf, or NaN in E4M3FN


def fractions_case(fmt: str) -> list[tuple[float, float, float]]:
    """(x, low, ulp) triples: normal near 1, subnormal, below the smallest subnormal, near max."""
    info = get_format(fmt)
    ulp_one = 2.0**-info.mantissa_bits
    smallest = info.smallest_subnormal
    top_ulp = 2.0 ** (np.floor(np.log2(info.max_finite)) - info.mantissa_bits)
    below_max = info.max_finite - top_ulp
    return [
        (1 + 0.25 * ulp_one, 1.0, ulp_one),
        (-(1 + 0.875 * ulp_one), -1.0, ulp_one),
        (2 * smallest + 0.5 * smallest, 2 * smallest, smallest),
        (0.125 * smallest, 0.0, smallest),
        (below_max + 0.75 * top_ulp, below_max, top_ulp),
    ]


@pytest.mark.parametrize("fmt", NUMPY_FORMATS)
def test_unbiased_and_probability_up_equals_fractional_distance(fmt: str) -> None:
    draws = 2**15
    for x, low, ulp in fractions_case(fmt):
        p = abs(x - low) / ulp  # away from zero with the fractional distance
        got = stochastic(tf.fill([draws], tf.constant(x, tf.float32)), fmt).numpy()
        away = np.abs(got.astype(np.float64)) > abs(low)
        assert np.all((got == low) | (np.abs(got - low) == ulp)), (fmt, x)
        sigma = np.sqrt(p * (1 - p) / draws)
        assert abs(away.mean() - p) <= 4 * sigma, (fmt, x, away.mean(), p)
        assert abs(got.astype(np.float64).mean() - x) <= 4 * sigma * ulp, (fmt, x)


def test_determinism_per_seed_and_eager_equals_jit() -> None:
    x = tf.constant(sample("float8_e4m3fn", 4096))
    jit = tf.function(lambda v, s: stochastic(v, "e4m3", seed=s), jit_compile=True)
    graph = tf.function(lambda v, s: stochastic(v, "e4m3", seed=s))
    first = stochastic(x, "e4m3", seed=[1, 2]).numpy()
    np.testing.assert_array_equal(first, stochastic(x, "e4m3", seed=[1, 2]).numpy())
    np.testing.assert_array_equal(first, graph(x, tf.constant([1, 2])).numpy())
    np.testing.assert_array_equal(first, jit(x, tf.constant([1, 2])).numpy())
    assert not np.array_equal(first, stochastic(x, "e4m3", seed=[1, 3]).numpy())


def test_seed_none_draws_fresh_randomness_eagerly_and_compiled() -> None:
    x = tf.fill([4096], tf.constant(1 + 2**-5))  # a quarter of the way up in E4M3
    jit = tf.function(lambda v: quantise(v, "e4m3", rounding="stochastic"), jit_compile=True)
    for run in (lambda v: quantise(v, "e4m3", rounding="stochastic"), jit):
        a, b = run(x).numpy(), run(x).numpy()
        assert set(np.unique(a)) <= {1.0, 1.125}
        assert not np.array_equal(a, b)
        assert 0.2 < np.mean(a == 1.125) < 0.3


@pytest.mark.parametrize(
    "source, fmt",
    [
        ("float16", "float8_e4m3fn"),
        ("float16", "float8_e5m2"),
        ("float16", "bfloat16"),
        ("bfloat16", "float8_e4m3fn"),
        ("bfloat16", "float8_e5m2"),
    ],
)
def test_16_bit_inputs(source: str, fmt: str) -> None:
    dtype = tf.float16 if source == "float16" else tf.bfloat16
    limit = min(get_format(source).max_finite, get_format(fmt).max_finite) / 2
    values = sample("float16" if source == "float16" else fmt)
    values = values[np.abs(values) < limit]
    x = tf.cast(tf.constant(values), dtype)
    got = stochastic(x, fmt)
    assert got.dtype == dtype
    exact_source = tf.cast(x, tf.float32).numpy()
    got32 = tf.cast(got, tf.float32).numpy()
    low, high = neighbours(exact_source, fmt)
    assert np.all((got32 == low) | (got32 == high))
    inexact = low != high
    assert inexact.mean() > 0.3 and 0.3 < np.mean(got32[inexact] == high[inexact]) < 0.7


def test_overflow_and_saturation_follow_nearest_mode() -> None:
    # E4M3FN: 448 is the max; the next grid step 480 does not exist (it is NaN).
    x = tf.fill([4096], tf.constant(456.0))  # a quarter of the way from 448 to 480
    plain = stochastic(x, "e4m3").numpy()
    assert set(np.unique(plain[~np.isnan(plain)])) == {448.0}
    assert 0.2 < np.isnan(plain).mean() < 0.3
    assert set(np.unique(stochastic(x, "e4m3", saturate=True).numpy())) == {448.0}
    # E5M2: beyond 57344 the next step 65536 is infinity; saturation clamps finite values.
    e5m2 = stochastic(tf.fill([4096], tf.constant(59392.0)), "e5m2").numpy()
    assert set(np.unique(e5m2)) == {57344.0, np.inf}
    specials = stochastic(tf.constant([1e30, np.inf]), "e5m2", saturate=True).numpy()
    assert specials.tolist() == [57344.0, np.inf]


def test_straight_through_gradient_and_stochastic_gradient_rounding_under_jit() -> None:
    values = tf.constant(sample("float8_e5m2", 2048))
    upstream = tf.constant(sample("float8_e5m2", 2048)[::-1].copy())

    @tf.function(jit_compile=True)
    def grads(v: tf.Tensor, g: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            forward = quantise(v, "e5m2", saturate=True, rounding="stochastic", seed=SEED)
            backward = quantise_gradient(v, "e5m2", saturate=True, rounding="stochastic", seed=SEED)
        return tape.gradient(forward, v, g), tape.gradient(backward, v, g)

    through, rounded = (t.numpy() for t in grads(values, upstream))
    np.testing.assert_array_equal(through, upstream.numpy())
    low, high = neighbours(upstream.numpy(), "float8_e5m2")
    assert np.all((rounded == low) | (rounded == high))
    np.testing.assert_array_equal(rounded, grads(values, upstream)[1].numpy())  # seeded


def test_bad_rounding_and_seed_are_rejected() -> None:
    x = tf.constant([1.0])
    with pytest.raises(ValueError, match="unknown rounding 'up'; expected one of nearest"):
        quantise(x, "e4m3", rounding="up")
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        quantise_gradient(x, "e4m3", rounding="up")
    with pytest.raises(ValueError, match=r"seed must be an integer tensor of shape \(2,\)"):
        quantise(x, "e4m3", rounding="stochastic", seed=[1, 2, 3])
    with pytest.raises(ValueError, match="seed must be an integer tensor"):
        quantise(x, "e4m3", rounding="stochastic", seed=[1.0, 2.0])


def test_precision_settings_rounding_is_validated_and_plumbed() -> None:
    with pytest.raises(ValueError, match="model.precision.rounding='up'; expected one of"):
        PrecisionSettings(rounding="up").validate()  # type: ignore[arg-type]
    settings = PrecisionSettings(activations="e4m3", weights="e4m3", rounding="stochastic")
    settings.validate()
    x = tf.fill([4096], tf.constant(1 + 2**-5))
    with precision.scope(settings):
        activation = precision.operand(x, "activation").numpy()
        weight = precision.operand(x, "weight").numpy()
    for got in (activation, weight):
        assert set(np.unique(got)) == {1.0, 1.125}
    assert not np.array_equal(activation, weight)  # each operand draws its own randomness
    with precision.scope(PrecisionSettings(activations="e4m3")):
        assert set(np.unique(precision.operand(x, "activation").numpy())) == {1.0}
