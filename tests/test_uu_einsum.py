"""scmm.U.einsum / weight_einsum and scmm.uu.EinsumDense: scales, references, Keras contract."""

import pathlib
from typing import Any, Callable, cast

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.functional.einsum import kernel_fan_in
from scmm.uscale.scaling import Constraint

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 32, 64)).astype("float32")  # (batch, seq, features)


def _grads(fn: Callable, *arrays: np.ndarray, seed: int = 3) -> tuple[Any, Any, Any]:
    tensors = [tf.constant(t) for t in arrays]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn(*tensors)
        upstream = tf.random.stateless_normal(tf.shape(out), seed=[seed, 0])
        loss = tf.reduce_sum(out * upstream)
    return out, tape.gradient(loss, tensors), upstream


@pytest.mark.parametrize("constraint", ["separate", "gmean", "forward", "backward"])
def test_einsum_scales_follow_the_equation(constraint: str) -> None:
    # bmk,bkn->bmn: ideal output k^-1/2 = 128^-1/2, grad x n^-1/2 = 32^-1/2, grad y m^-1/2.
    x = RNG.normal(size=(16, 64, 128)).astype("float32")
    y = RNG.normal(size=(16, 128, 32)).astype("float32")
    scaled = cast(Constraint, constraint)
    out, (gx, gy), _ = _grads(lambda a, b: U.einsum("bmk,bkn->bmn", a, b, scaled), x, y)
    ideal = np.array([128**-0.5, 32**-0.5, 64**-0.5])
    tied = {
        "separate": ideal,
        "gmean": np.full(3, np.prod(ideal) ** (1 / 3)),
        "forward": np.full(3, ideal[0]),
        "backward": np.full(3, np.sqrt(ideal[1] * ideal[2])),
    }[constraint]
    measured = np.array([np.std(out), np.std(gx), np.std(gy)])
    np.testing.assert_allclose(measured, tied / ideal, rtol=0.1)


def test_einsum_equals_keras_times_its_scales() -> None:
    x, y = RNG.normal(size=(4, 8, 16)).astype("float32"), RNG.normal(size=(16, 8)).astype("float32")
    out, (gx, gy), upstream = _grads(lambda a, b: U.einsum("...k,kn->...n", a, b, "separate"), x, y)
    ref, (rx, ry), _ = _grads(lambda a, b: keras.ops.einsum("...k,kn->...n", a, b), x, y)
    np.testing.assert_allclose(out, ref / 4.0, rtol=1e-5)  # 16 summed: 16^-1/2
    # x's gradient: n = 8 output labels from y -> 8^-1/2; y's: the 4 x 8 batch rows -> 32^-1/2.
    np.testing.assert_allclose(gx, rx * 8**-0.5, rtol=1e-5)
    np.testing.assert_allclose(gy, ry * 32**-0.5, rtol=1e-5)
    del upstream


def test_einsum_dynamic_dims_match_static() -> None:
    x = RNG.normal(size=(4, 8, 16)).astype("float32")
    y = RNG.normal(size=(4, 16, 8)).astype("float32")
    spec = tf.TensorSpec([None, None, 16], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([None, 16, 8], tf.float32)])
    def dynamic(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, list]:
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            out = U.einsum("bmk,bkn->bmn", a, b)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, [a, b])

    with tf.GradientTape() as tape:
        a, b = tf.constant(x), tf.constant(y)
        tape.watch([a, b])
        static = U.einsum("bmk,bkn->bmn", a, b)
        loss = tf.reduce_sum(static * static)
    static_grads = tape.gradient(loss, [a, b])
    out, grads = dynamic(x, y)
    np.testing.assert_allclose(out, static, rtol=1e-5)
    for got, want in zip(grads, static_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)  # pow vs math rounding


def test_einsum_errors() -> None:
    x = tf.ones([2, 3])
    with pytest.raises(ValueError, match="explicit"):
        U.einsum("ab,bc", x, tf.ones([3, 2]))
    with pytest.raises(ValueError, match="two operands"):
        U.einsum("ab->ab", x, x)
    with pytest.raises(ValueError, match="unknown constraint 'mean'"):
        U.einsum("ab,bc->ac", x, tf.ones([3, 2]), "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit"):
        U.einsum("abc,bc->a", x, tf.ones([3, 2]))


def test_weight_einsum_scales_are_unit() -> None:
    # (d=64) -> (heads 4, head_dim 16): fan-in 64 = fan-out, so gmean is exact.
    kernel = RNG.normal(size=(64, 4, 16)).astype("float32")
    out, (gx, gk), _ = _grads(lambda a, w: U.weight_einsum("abc,cde->abde", a, w), X, kernel)
    np.testing.assert_allclose([np.std(out), np.std(gx), np.std(gk)], 1.0, rtol=0.1)


def test_einsum_dense_equals_keras_with_folded_kernel() -> None:
    layer = uu.EinsumDense("abc,cde->abde", (None, 4, 8), bias_axes="de", constraint="forward")
    out = layer(X)
    layer.bias.assign(RNG.normal(size=layer.bias.shape))
    out = layer(X)
    plain = keras.layers.EinsumDense("abc,cde->abde", (None, 4, 8), bias_axes="de")
    plain(X)
    plain.set_weights([layer.kernel.numpy() * 64**-0.5, layer.bias.numpy()])
    np.testing.assert_allclose(out, plain(X), rtol=1e-5, atol=1e-6)


def test_einsum_dense_gradients_and_dynamic_batch() -> None:
    # Bias (4, 1) broadcast over the last dim: each entry reaches 8 x 32 x 16 outputs.
    layer = uu.EinsumDense("abc,cde->abde", (None, 4, 16), bias_axes="d")
    stats = uu_checks.scale_stats(layer, X)
    assert layer.bias.shape == (4, 1)
    for name in ("output", "grad_kernel", "grad_input_0"):
        assert stats[name] == pytest.approx(1.0, rel=0.1), (name, stats)
    with tf.GradientTape() as tape:
        out = layer(X)
        upstream = tf.random.stateless_normal(tf.shape(out), seed=[1, 2])
        loss = tf.reduce_sum(out * upstream)
    grad_bias = tape.gradient(loss, layer.bias)
    expected = tf.reduce_sum(upstream, axis=[0, 1, 3])[:, None] * (8 * 32 * 16) ** -0.5
    np.testing.assert_allclose(grad_bias, expected, rtol=1e-5)
    # Same gradients when the batch and sequence dims are None (tf.shape-based factors).
    inputs = keras.Input(shape=(None, 64))
    model = keras.Model(inputs, layer(inputs))
    with tf.GradientTape() as tape:
        dynamic = tf.reduce_sum(tf.function(model)(X) ** 2)
    with tf.GradientTape() as tape2:
        static = tf.reduce_sum(layer(X) ** 2)
    for got, want in zip(
        tape.gradient(dynamic, layer.trainable_weights),
        tape2.gradient(static, layer.trainable_weights),
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_readout_role_under_umup() -> None:
    layer = uu.EinsumDense("abc,cd->abd", (None, 32), scheme="umup", role="readout")
    out = layer(X)
    assert np.std(out) == pytest.approx(64**-0.5, rel=0.1)  # mu-P's 1/fan_in
    assert layer.parameter_info()["kernel"].role == "readout"


def test_fan_in_is_the_contraction() -> None:
    assert kernel_fan_in("abc,cde->abde", (64, 4, 16)) == 64  # MHA query
    assert kernel_fan_in("abcd,cde->abe", (4, 16, 64)) == 64  # MHA output: heads x head_dim
    layer = uu.EinsumDense("abcd,cde->abe", (None, 64), bias_axes="e")
    layer(RNG.normal(size=(2, 3, 4, 16)).astype("float32"))
    info = layer.parameter_info()
    assert info["kernel"].fan_in == 64 and info["kernel"].role == "weight"
    assert info["bias"].role == "bias"


def test_built_from_keras_config_same_variables() -> None:
    plain = keras.layers.EinsumDense("abc,cde->abde", (None, 4, 16), bias_axes="de", name="proj")
    plain(X)
    config = {k: v for k, v in plain.get_config().items() if k != "kernel_initializer"}
    twin = uu.EinsumDense.from_config({**config, "scheme": "umup", "precision": None})
    twin(X)
    assert [(w.path, w.shape) for w in twin.weights] == [(w.path, w.shape) for w in plain.weights]
    assert twin.constraint == "forward"


def test_einsum_dense_keras_contract(tmp_path: pathlib.Path) -> None:
    def make() -> (
        keras.layers.Layer
    ):  # a static sequence dim: check_fit_step sizes its target from the output
        return uu.EinsumDense("abc,cde->abde", (32, 4, 16), bias_axes="de")

    layer = make()
    layer(X)
    uu_checks.check_config_round_trip(layer)
    uu_checks.check_keras_file_round_trip(make, X[:2], tmp_path)
    for policy in ("float32", "mixed_bfloat16"):
        uu_checks.check_fit_step(make, X[:4], policy)


def test_einsum_dense_errors() -> None:
    with pytest.raises(ValueError, match="activation='relu'"):
        uu.EinsumDense("ab,bc->ac", 4, activation="relu")
    with pytest.raises(ValueError, match="LoRA"):
        uu.EinsumDense("ab,bc->ac", 4, lora_rank=2)
    with pytest.raises(ValueError, match="unknown constraint 'x'"):
        uu.EinsumDense("ab,bc->ac", 4, constraint="x")
    with pytest.raises(ValueError, match="role"):
        uu.EinsumDense("ab,bc->ac", 4, role="output")
    with pytest.raises(ValueError, match="explicit"):
        uu.EinsumDense("ab,bc", 4)
    layer = uu.EinsumDense("ab,bc->ac", 4)
    layer(np.ones((2, 3), "float32"))
    with pytest.raises(ValueError, match="simulate_fp8"):
        layer.quantize("float8")
