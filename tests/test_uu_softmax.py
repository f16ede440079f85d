"""scmm.U.softmax and scmm.uu.Softmax: exact moments, unit-rms scales, Keras contract."""

import pathlib
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.functional.softmax import gradient_moment, softmax_scales, sum_square_weights

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("variance", [0.25, 1.0, 2.0])
@pytest.mark.parametrize("count", [1, 3, 8, 64])
def test_softmax_moments_match_monte_carlo(variance: float, count: int) -> None:
    x = RNG.normal(size=(200_000 // count + 2000, count)) * np.sqrt(variance)
    w = np.exp(x - x.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    s2, s3 = np.sum(w**2, axis=1), np.sum(w**3, axis=1)
    assert np.mean(s2) == pytest.approx(float(sum_square_weights(count, variance)), rel=0.02)
    if count > 1:
        moment = np.mean(s2 - 2 * s3 + s2**2)
        assert moment == pytest.approx(gradient_moment(count, variance), rel=0.02)


def _rms(value: Any) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(value)))))


@pytest.mark.parametrize("mult", [1.0, 0.25])
def test_softmax_output_and_gradient_have_unit_rms(mult: float) -> None:
    x = tf.constant(RNG.normal(size=(128, 256)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = U.softmax(x, mult=mult, constraint="separate")
        loss = tf.reduce_sum(y * tf.random.stateless_normal(y.shape, seed=[4, 0]))
    grad = tape.gradient(loss, x)
    assert _rms(y) == pytest.approx(1.0, rel=0.1)
    assert _rms(grad) == pytest.approx(1.0, rel=0.1)
    # Not unit std: every row sums to the output scale, so the mean is scale / n, not 0.
    assert float(np.mean(y)) == pytest.approx(softmax_scales(256, mult)[0] / 256, rel=1e-4)


def test_softmax_equals_keras_times_the_constrained_scale() -> None:
    x = tf.constant(RNG.normal(size=(4, 32)).astype("float32"))
    forward, backward = softmax_scales(32, 0.5)
    expected = keras.ops.softmax(x * 0.5) * np.sqrt(forward * backward)
    np.testing.assert_allclose(U.softmax(x, mult=0.5), expected, rtol=1e-5)
    np.testing.assert_allclose(
        U.softmax(x, axis=0, constraint="forward"),
        keras.ops.softmax(x, axis=0) * softmax_scales(4, 1.0)[0],
        rtol=1e-5,
    )


def test_softmax_scale_limits() -> None:
    uniform = softmax_scales(100, 1e-4)
    assert uniform[0] == pytest.approx(100, rel=1e-3)  # flat: 1 / rms = n
    assert uniform[1] == pytest.approx(100 / 1e-4, rel=1e-2)


def test_uu_softmax_layer(tmp_path: pathlib.Path) -> None:
    x = RNG.normal(size=(4, 8, 16)).astype("float32")
    layer = uu.Softmax(axis=1, mult=0.5, constraint="forward")
    np.testing.assert_allclose(layer(x), U.softmax(x, 1, 0.5, "forward"), rtol=1e-6)
    uu_checks.check_config_round_trip(layer)
    uu_checks.check_keras_file_round_trip(lambda: uu.Softmax(mult=2.0), x, tmp_path)
    for policy in ("float32", "mixed_bfloat16"):
        uu_checks.check_fit_step(uu.Softmax, x, policy)


def test_softmax_errors() -> None:
    x = tf.ones([2, 3])
    with pytest.raises(ValueError, match="mult must be a finite number > 0, got -1"):
        U.softmax(x, mult=-1.0)
    with pytest.raises(ValueError, match="unknown constraint 'x'"):
        U.softmax(x, constraint="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis 2 out of range"):
        U.softmax(x, axis=2)
    with pytest.raises(ValueError, match="one int axis"):
        uu.Softmax(axis=(1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not take a mask"):
        uu.Softmax()(x, mask=tf.ones([2, 3], tf.bool))
