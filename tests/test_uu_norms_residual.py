"""scmm.U layer_norm / rms_norm / dropout / residual_split / residual_add and the layers
scmm.uu.LayerNormalization / RMSNormalization / Dropout / Residual."""

import math
import pathlib
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf
import uu_checks

import scmm.functional as U
from scmm import uu
from scmm.parameters import ParameterInfo


def normal(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def grads_of(
    fn: Callable[[], tf.Tensor], sources: Sequence[Any], seed: int = 5
) -> tuple[np.ndarray, list[np.ndarray]]:
    """fn() and the gradients of ``sources`` for a fixed N(0, 1) upstream gradient."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([s for s in sources if isinstance(s, tf.Tensor)])
        out = fn()
        upstream = tf.constant(normal(out.shape, seed), dtype=out.dtype)
        objective = tf.reduce_sum(out * upstream)
    grads = tape.gradient(objective, list(sources))
    return np.asarray(out), [np.asarray(tf.convert_to_tensor(g)) for g in grads]


def built_pair(
    uu_layer: keras.layers.Layer, keras_layer: keras.layers.Layer, x: np.ndarray
) -> None:
    """Build both layers and give them the same (random) weights."""
    uu_layer(x[:1]), keras_layer(x[:1])  # pylint: disable=expression-not-assigned
    for i, (a, b) in enumerate(zip(uu_layer.weights, keras_layer.weights)):
        value = 1.0 + 0.3 * normal(a.shape, 10 + i)
        a.assign(value)
        b.assign(value)


# Norms ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_scales(kind: str) -> None:
    layer = uu.LayerNormalization() if kind == "layer" else uu.RMSNormalization()
    stats = uu_checks.scale_stats(layer, normal([512, 512], 1))
    for key, value in stats.items():  # output, grad_input_0, grad_gamma / grad_beta / grad_scale
        assert value == pytest.approx(1.0, rel=0.1), key
    assert len(stats) == (4 if kind == "layer" else 3)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_equals_keras_and_scales_parameter_gradients(kind: str) -> None:
    x = normal([6, 10, 32], 2)
    if kind == "layer":
        ours = uu.LayerNormalization(epsilon=1e-5)
        theirs = keras.layers.LayerNormalization(epsilon=1e-5)
    else:
        ours, theirs = uu.RMSNormalization(), keras.layers.RMSNormalization()
    built_pair(ours, theirs, x)
    xt = tf.constant(x)
    out, grads = grads_of(lambda: ours(xt), [xt, *ours.trainable_weights])
    ref, ref_grads = grads_of(lambda: theirs(xt), [xt, *theirs.trainable_weights])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[0], ref_grads[0], rtol=1e-5, atol=1e-6)
    for grad, ref_grad in zip(grads[1:], ref_grads[1:]):  # rows = 6 * 10
        np.testing.assert_allclose(grad, ref_grad / math.sqrt(60), rtol=1e-5, atol=1e-6)


def test_layer_norm_multiple_axes_and_functional_aliases() -> None:
    x = tf.constant(normal([8, 4, 16], 3))
    gamma, beta = tf.constant(normal([4, 16], 4)), tf.constant(normal([4, 16], 5))
    out, (g_gamma, g_beta) = grads_of(
        lambda: U.layer_normalization(x, gamma, beta, axis=[1, 2], epsilon=1e-3), [gamma, beta]
    )
    ref, (r_gamma, r_beta) = grads_of(
        lambda: keras.ops.layer_normalization(x, gamma, beta, axis=[1, 2], epsilon=1e-3),
        [gamma, beta],
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_gamma, r_gamma / math.sqrt(8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_beta, r_beta / math.sqrt(8), rtol=1e-5, atol=1e-6)
    scale = tf.constant(normal([16], 6))
    out, (g_scale,) = grads_of(lambda: U.rms_normalization(x, scale), [scale])
    ref, (r_scale,) = grads_of(lambda: keras.ops.rms_normalization(x, scale), [scale])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_scale, r_scale / math.sqrt(32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_norm_rows_are_dynamic_in_a_model_with_unknown_batch(kind: str) -> None:
    layer = uu.LayerNormalization() if kind == "layer" else uu.RMSNormalization()
    inputs = keras.Input(shape=(10, 32))  # batch None: rows come from tf.shape
    model = keras.Model(inputs, layer(inputs))
    reference = keras.layers.LayerNormalization() if kind == "layer" else None
    reference = reference or keras.layers.RMSNormalization()
    x = normal([6, 10, 32], 7)
    built_pair(layer, reference, x)

    @tf.function(input_signature=[tf.TensorSpec([None, 10, 32])])
    def traced(batch: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            objective = tf.reduce_sum(model(batch) * tf.constant(normal([6, 10, 32], 5)))
        return tape.gradient(objective, model.trainable_weights)

    _, ref_grads = grads_of(lambda: reference(tf.constant(x)), reference.trainable_weights)
    for grad, ref_grad in zip(traced(tf.constant(x)), ref_grads):
        np.testing.assert_allclose(grad.numpy(), ref_grad / math.sqrt(60), rtol=1e-5, atol=1e-6)


def test_norm_twins_from_keras_config_have_the_same_variables() -> None:
    x = normal([4, 8, 16], 1)
    for original, twin_class in [
        (keras.layers.LayerNormalization(epsilon=1e-5, center=False), uu.LayerNormalization),
        (keras.layers.LayerNormalization(axis=[1, 2]), uu.LayerNormalization),
        (keras.layers.RMSNormalization(epsilon=1e-5), uu.RMSNormalization),
    ]:
        twin = twin_class(**original.get_config(), scheme="umup")
        original(x), twin(x)  # pylint: disable=expression-not-assigned
        assert [(w.name, w.shape) for w in twin.weights] == [
            (w.name, w.shape) for w in original.weights
        ]
        assert {k: v for k, v in twin.get_config().items() if k in original.get_config()} == (
            original.get_config()
        )


def test_norm_parameter_info() -> None:
    layer = uu.LayerNormalization()
    layer.build((None, 8))
    assert layer.parameter_info() == {
        "gamma": ParameterInfo("gain"),
        "beta": ParameterInfo("offset"),
    }
    no_beta = uu.LayerNormalization(center=False)
    no_beta.build((None, 8))
    assert no_beta.parameter_info() == {"gamma": ParameterInfo("gain")}
    assert uu.RMSNormalization().parameter_info() == {"scale": ParameterInfo("gain")}


def test_norm_errors() -> None:
    with pytest.raises(ValueError, match="does not support rms_scaling=True"):
        uu.LayerNormalization(rms_scaling=True)
    with pytest.raises(ValueError, match="epsilon must be a number >= 0 or None, got -1"):
        uu.RMSNormalization(epsilon=-1)
    x = tf.constant(normal([4, 8]))
    with pytest.raises(
        ValueError, match="layer_norm axis 2 is out of range for an input of rank 2"
    ):
        U.layer_norm(x, axis=2)
    with pytest.raises(ValueError, match=r"gamma has shape \(4,\); expected \(8,\)"):
        U.layer_norm(x, gamma=tf.ones([4]))
    with pytest.raises(ValueError, match="rms_norm axis .* repeats an axis"):
        U.rms_norm(x, axis=[1, -1])


# Dropout --------------------------------------------------------------------------------------


def test_dropout_is_variance_preserving_and_equals_keras_times_sqrt_keep() -> None:
    x = tf.constant(normal([2**16], 1))
    out, (grad,) = grads_of(lambda: U.dropout(x, 0.4, seed=3), [x])
    ref, (ref_grad,) = grads_of(lambda: keras.random.dropout(x, 0.4, seed=3), [x])
    np.testing.assert_allclose(out, ref * math.sqrt(0.6), rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad * math.sqrt(0.6), rtol=1e-6)
    assert np.std(out) == pytest.approx(1.0, rel=0.1)
    assert np.std(grad) == pytest.approx(1.0, rel=0.1)
    assert np.std(ref) == pytest.approx(0.6**-0.5, rel=0.05)  # Keras's alone is not unit
    assert np.mean(out == 0) == pytest.approx(0.4, abs=0.02)


def test_dropout_layer_matches_keras_and_is_identity_at_inference() -> None:
    x = normal([64, 32], 2)
    ours, theirs = uu.Dropout(0.25, seed=7), keras.layers.Dropout(0.25, seed=7)
    np.testing.assert_allclose(
        np.asarray(ours(x, training=True)),
        np.asarray(theirs(x, training=True)) * math.sqrt(0.75),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(ours(x)), x)
    shared = np.asarray(uu.Dropout(0.5, noise_shape=(None, 1), seed=1)(x, training=True))
    assert np.all((shared == 0).all(axis=1) | (shared != 0).all(axis=1))  # whole rows drop
    stats = uu_checks.scale_stats(uu.Dropout(0.3, seed=4), normal([256, 256], 3), training=True)
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)


def test_dropout_errors() -> None:
    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\), got 1"):
        uu.Dropout(1)
    with pytest.raises(ValueError, match=r"dropout rate must be a number in \[0, 1\), got -0.1"):
        U.dropout(tf.ones([3]), -0.1)
    with pytest.raises(ValueError, match="dropout needs a floating-point tensor"):
        U.dropout(tf.ones([3], tf.int32), 0.5)


# Residual -------------------------------------------------------------------------------------


def unit_branch(width: int = 16) -> keras.Sequential:
    """A branch whose output is unit for a unit input: a Dense with std width^-1/2 weights."""
    init = keras.initializers.RandomNormal(stddev=width**-0.5, seed=3)
    return keras.Sequential([keras.layers.Dense(width, kernel_initializer=init)])


def test_tau_conventions() -> None:
    for tau_lib in (0.2, 1.0, 3.0):
        tau = U.tau_from_library(tau_lib)
        assert math.sqrt(1 - tau) == pytest.approx(1 / math.sqrt(1 + tau_lib**2))
        assert math.sqrt(tau) == pytest.approx(tau_lib / math.sqrt(1 + tau_lib**2))
    assert U.tau_from_library(1.0) == 0.5


@pytest.mark.parametrize("tau", [0.1, 0.5, 0.9])
def test_residual_functional_is_the_true_gradient_of_the_interpolation(tau: float) -> None:
    branch = unit_branch(256)
    x = tf.constant(normal([512, 256], 1))
    branch(x)
    kernel = branch.layers[0].kernel

    def unit() -> tf.Tensor:
        skip, branch_input = U.residual_split(x, tau)
        return U.residual_add(skip, branch(branch_input), tau)

    out, (g_x, g_kernel) = grads_of(unit, [x, kernel])
    ref, (r_x, r_kernel) = grads_of(
        lambda: math.sqrt(1 - tau) * x + math.sqrt(tau) * branch(x), [x, kernel]
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Sums of 256 (x) or 512 (kernel) float32 products: compare at 1e-5 of the largest entry.
    np.testing.assert_allclose(g_x, r_x, rtol=1e-5, atol=1e-5 * np.abs(r_x).max())
    # x gets the true gradient; the branch sees the unit upstream gradient, not sqrt(tau) times.
    want_kernel = r_kernel / math.sqrt(tau)
    np.testing.assert_allclose(
        g_kernel, want_kernel, rtol=1e-5, atol=1e-5 * np.abs(want_kernel).max()
    )
    assert np.std(out) == pytest.approx(1.0, rel=0.1)
    assert np.std(g_x) == pytest.approx(1.0, rel=0.1)


def test_residual_layer_reference_and_parameter_info() -> None:
    x = normal([128, 16], 2)
    layer = uu.Residual(unit_branch(), tau=0.2)
    np.testing.assert_allclose(
        np.asarray(layer(x)),
        math.sqrt(0.8) * x + math.sqrt(0.2) * np.asarray(layer.branch(x)),
        rtol=1e-5,
        atol=1e-6,
    )
    normed = uu.Residual(uu.LayerNormalization(), tau=0.5)
    normed.build((None, 16))
    assert normed.parameter_info() == {
        "branch.gamma": ParameterInfo("gain"),
        "branch.beta": ParameterInfo("offset"),
    }
    assert not layer.parameter_info()  # a plain Keras branch declares nothing


def make_residual() -> keras.layers.Layer:
    branch = keras.Sequential([uu.LayerNormalization(), unit_branch(), uu.Activation("gelu")])
    return uu.Residual(branch, tau=0.3, scheme="umup")


SIMPLE_LAYERS: dict[str, tuple[Callable[[], keras.layers.Layer], np.ndarray]] = {
    "layer_norm": (lambda: uu.LayerNormalization(epsilon=1e-5, scheme="umup"), normal([4, 8, 16])),
    "layer_norm_axes": (lambda: uu.LayerNormalization(axis=[1, 2]), normal([4, 8, 16])),
    "rms_norm": (lambda: uu.RMSNormalization(constraint="forward"), normal([4, 8, 16])),
    "dropout": (lambda: uu.Dropout(0.2, seed=1), normal([4, 16])),
    "residual": (make_residual, normal([4, 16])),
}


@pytest.mark.parametrize("name", sorted(SIMPLE_LAYERS))
def test_layer_config_and_keras_file_round_trip(name: str, tmp_path: pathlib.Path) -> None:
    make, inputs = SIMPLE_LAYERS[name]
    uu_checks.check_config_round_trip(make())
    uu_checks.check_keras_file_round_trip(make, inputs, tmp_path)


@pytest.mark.parametrize("name", sorted(SIMPLE_LAYERS))
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_layer_fit_step(name: str, policy: str) -> None:
    make, inputs = SIMPLE_LAYERS[name]
    uu_checks.check_fit_step(make, inputs, policy)


def test_residual_errors() -> None:
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\).*got 1.0"):
        uu.Residual(unit_branch(), tau=1.0)
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\).*got 0"):
        U.residual_split(tf.ones([2, 3]), 0)
    with pytest.raises(ValueError, match="branch must be a Keras layer, got function"):
        uu.Residual(tf.tanh, tau=0.5)
    with pytest.raises(ValueError, match=r"branch output \(2, 4\) does not match the skip"):
        U.residual_add(tf.ones([2, 3]), tf.ones([2, 4]), 0.5)
    with pytest.raises(ValueError, match="library tau must be a finite number > 0, got -1"):
        U.tau_from_library(-1.0)
