"""scmm.U's elementwise ops (relu, gelu, silu, tanh, sigmoid, add) and the layers
scmm.uu.Activation / ReLU / Add: scales, references, gradient factors, serialisation, fit."""

import math
import pathlib
from typing import Any, Callable, Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf
import uu_checks

import scmm.functional as U
from scmm import uscale, uu
from scmm.functional import elementwise

N = 2**16  # elements per scale check: std error ~0.4%, far inside the 10% tolerance

# (name, scmm.U op with its keyword arguments, plain reference f, ideal scales)
OPS = {
    "relu": (lambda x, c: U.relu(x, constraint=c), keras.ops.relu, uscale.RELU_SCALES),
    "gelu_tanh": (
        lambda x, c: U.gelu(x, constraint=c),
        lambda x: keras.ops.gelu(x, approximate=True),
        elementwise.gelu_scales(1.0, True),
    ),
    "gelu_erf": (
        lambda x, c: U.gelu(x, approximate=False, constraint=c),
        lambda x: keras.ops.gelu(x, approximate=False),
        elementwise.gelu_scales(1.0, False),
    ),
    "gelu_mult": (
        lambda x, c: U.gelu(x, mult=0.5, constraint=c),
        lambda x: keras.ops.gelu(0.5 * x) / 0.5,
        elementwise.gelu_scales(0.5, True),
    ),
    "silu": (lambda x, c: U.silu(x, constraint=c), keras.ops.silu, elementwise.silu_scales(1.0)),
    "silu_mult": (
        lambda x, c: U.silu(x, mult=2.0, constraint=c),
        lambda x: x * keras.ops.sigmoid(2.0 * x),
        elementwise.silu_scales(2.0),
    ),
    "tanh": (lambda x, c: U.tanh(x, constraint=c), keras.ops.tanh, uscale.TANH_SCALES),
    "sigmoid": (lambda x, c: U.sigmoid(x, constraint=c), keras.ops.sigmoid, uscale.SIGMOID_SCALES),
}


def normal(shape: Sequence[int], seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def forward_and_grad(
    fn: Callable[..., Any], inputs: Sequence[np.ndarray], seed: int = 5
) -> tuple[np.ndarray, list[np.ndarray]]:
    """fn(*inputs), and each input's gradient for an N(0, 1) upstream gradient."""
    tensors = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn(*tensors)
        upstream = tf.constant(normal(out.shape, seed, out.dtype.name))
        objective = tf.reduce_sum(out * upstream)
    return out.numpy(), [g.numpy() for g in tape.gradient(objective, tensors)]


def expected_stds(scales: tuple[float, float], constraint: Any) -> tuple[float, float]:
    """(output std, input-gradient std) the rule predicts for unit input and gradient."""
    a, b = scales
    forward, backward = uscale.constrain(a, b, constraint)
    return forward / a, backward / b


# scmm.U elementwise ops ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("constraint", ["separate", "gmean", "forward", "backward"])
def test_activation_scales_follow_the_rule(name: str, constraint: str) -> None:
    op, _, scales = OPS[name]
    out, (grad,) = forward_and_grad(lambda x: op(x, constraint), [normal([N])])
    want_out, want_grad = expected_stds(scales, constraint)
    assert np.std(out) == pytest.approx(want_out, rel=0.1)
    assert np.std(grad) == pytest.approx(want_grad, rel=0.1)


@pytest.mark.parametrize("name", sorted(OPS))
def test_activation_equals_keras_times_scales(name: str) -> None:
    op, reference, scales = OPS[name]
    x = normal([64, 32], seed=3)
    out, (grad,) = forward_and_grad(lambda t: op(t, "separate"), [x])
    ref_out, (ref_grad,) = forward_and_grad(reference, [x])
    np.testing.assert_allclose(out, ref_out * scales[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad * scales[1], rtol=1e-5, atol=1e-6)
    gmean_out, _ = forward_and_grad(lambda t: op(t, "gmean"), [x])
    np.testing.assert_allclose(gmean_out, ref_out * math.sqrt(scales[0] * scales[1]), rtol=1e-5)


def test_quadrature_scales_match_monte_carlo_and_the_paper() -> None:
    # erf gelu at mult 1 is the paper's table (1.701, 1.481); the tanh form is within 0.1%.
    assert elementwise.gelu_scales(1.0, False) == pytest.approx(uscale.GELU_SCALES, abs=1e-3)
    assert elementwise.gelu_scales(1.0, True) == pytest.approx(uscale.GELU_SCALES, rel=2e-3)
    x = np.random.default_rng(0).normal(size=2_000_000)
    sig = 1.0 / (1.0 + np.exp(-3.0 * x))
    silu_out, silu_slope = x * sig, sig + 3.0 * x * sig * (1.0 - sig)
    got = elementwise.silu_scales(3.0)
    assert got[0] == pytest.approx(1.0 / np.std(silu_out), rel=3e-3)
    assert got[1] == pytest.approx(1.0 / np.sqrt(np.mean(silu_slope**2)), rel=3e-3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_activations_keep_a_half_precision_dtype(dtype: str) -> None:
    x = tf.constant(normal([4096]), dtype=dtype)
    for name in ("relu", "gelu_tanh", "silu_mult"):
        out = OPS[name][0](x, "gmean")
        assert out.dtype == x.dtype
        assert np.std(out.numpy().astype("float32")) == pytest.approx(
            expected_stds(OPS[name][2], "gmean")[0], rel=0.1
        )


def test_elementwise_errors() -> None:
    x = tf.constant(normal([8]))
    with pytest.raises(ValueError, match="unknown constraint 'mean'"):
        U.relu(x, constraint="mean")
    with pytest.raises(ValueError, match="unknown constraint 'mean'"):
        U.gelu(x, constraint="mean")
    with pytest.raises(ValueError, match="gelu mult must be a finite number > 0, got -1"):
        U.gelu(x, mult=-1.0)
    with pytest.raises(ValueError, match="silu mult must be a finite number > 0, got nan"):
        U.silu(x, mult=float("nan"))
    with pytest.raises(ValueError, match="approximate must be True or False, got 'tanh'"):
        U.gelu(x, approximate="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tanh needs a floating-point tensor, got dtype int32"):
        U.tanh(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="unknown constraint 'x'"):
        U.add(x, x, constraint="x")
    with pytest.raises(ValueError, match="do not broadcast"):
        U.add(x, tf.constant(normal([3])))


# scmm.U.add -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "constraint, want", [("separate", (1.0, 1.0, 1.0)), ("forward", (1.0, 2**-0.5, 2**-0.5))]
)
def test_add_scales(constraint: str, want: tuple[float, float, float]) -> None:
    out, grads = forward_and_grad(
        lambda a, b: U.add(a, b, constraint=constraint), [normal([N], 1), normal([N], 2)]
    )
    assert np.std(out) == pytest.approx(want[0], rel=0.1)
    assert np.std(grads[0]) == pytest.approx(want[1], rel=0.1)
    assert np.std(grads[1]) == pytest.approx(want[2], rel=0.1)


def test_add_gmean_ties_one_scale_for_output_and_gradients() -> None:
    a, b = normal([64, 32], 1), normal([64, 32], 2)
    out, grads = forward_and_grad(U.add, [a, b])
    ref_out, ref_grads = forward_and_grad(keras.ops.add, [a, b])
    shared = (2**-0.5) ** (1 / 3)  # geometric mean of (2^-1/2, 1, 1)
    np.testing.assert_allclose(out, ref_out * shared, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref * shared, rtol=1e-5)


def test_add_broadcast_gradient_is_scaled_by_expansion() -> None:
    full, row = normal([256, 64], 1), normal([64], 2)  # row is copied 256 times
    out, (g_full, g_row) = forward_and_grad(
        lambda a, b: U.add(a, b, constraint="separate"), [full, row]
    )
    ref_out, (ref_full, ref_row) = forward_and_grad(keras.ops.add, [full, row])
    np.testing.assert_allclose(out, ref_out * 2**-0.5, rtol=1e-5)
    np.testing.assert_allclose(g_full, ref_full, rtol=1e-5)
    np.testing.assert_allclose(g_row, ref_row / 16.0, rtol=1e-5)
    assert np.std(g_row) == pytest.approx(1.0, rel=0.1)
    # "forward" ties both gradients to the output scale.
    _, (g_full_f, g_row_f) = forward_and_grad(
        lambda a, b: U.add(a, b, constraint="forward"), [full, row]
    )
    np.testing.assert_allclose(g_row_f, ref_row * 2**-0.5, rtol=1e-5)
    np.testing.assert_allclose(g_full_f, ref_full * 2**-0.5, rtol=1e-5)


def test_add_python_scalar_is_a_plain_shift() -> None:
    x = normal([128], 1)
    out, (grad,) = forward_and_grad(lambda t: U.add(t, 3.0), [x])
    ref_out, (ref_grad,) = forward_and_grad(lambda t: t + 3.0, [x])
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(grad, ref_grad)
    out2, _ = forward_and_grad(lambda t: U.add(2, t, constraint="forward"), [x])
    np.testing.assert_array_equal(out2, x + 2)


def test_add_with_dynamic_batch_matches_static() -> None:
    a, b = normal([32, 16], 1), normal([32, 1], 2)
    static_out, static_grads = forward_and_grad(U.add, [a, b])
    spec = [tf.TensorSpec([None, 16]), tf.TensorSpec([None, 1])]

    @tf.function(input_signature=spec)
    def dynamic(x1: tf.Tensor, x2: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            tape.watch([x1, x2])
            out = U.add(x1, x2)
            objective = tf.reduce_sum(out * tf.constant(normal([32, 16], 5)))
        return out, tape.gradient(objective, [x1, x2])

    out, grads = dynamic(tf.constant(a), tf.constant(b))
    np.testing.assert_allclose(out.numpy(), static_out, rtol=1e-6)
    for grad, ref in zip(grads, static_grads):
        np.testing.assert_allclose(grad.numpy(), ref, rtol=1e-6)


# Layers ---------------------------------------------------------------------------------------


LAYER_ACTIVATIONS = {  # Keras name -> (scales of the form Keras's activation uses)
    "relu": uscale.RELU_SCALES,
    "gelu": elementwise.gelu_scales(1.0, False),  # keras.activations.gelu is the erf form
    "silu": elementwise.silu_scales(1.0),
    "tanh": uscale.TANH_SCALES,
    "sigmoid": uscale.SIGMOID_SCALES,
    "linear": (1.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(LAYER_ACTIVATIONS))
def test_activation_layer_scales_and_reference(name: str) -> None:
    scales = LAYER_ACTIVATIONS[name]
    x = normal([256, 256], 7)
    stats = uu_checks.scale_stats(uu.Activation(name, constraint="separate"), x)
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    gmean = np.asarray(uu.Activation(name)(x))
    reference = np.asarray(keras.layers.Activation(name)(x))
    np.testing.assert_allclose(gmean, reference * math.sqrt(scales[0] * scales[1]), rtol=1e-5)


def test_activation_layer_umup_scheme_gives_unit_outputs() -> None:
    x = normal([256, 256], 7)
    layer = uu.Activation("gelu", mult=0.5, scheme="umup")
    assert layer.constraint == "forward"
    stats = uu_checks.scale_stats(layer, x)
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    want_grad = elementwise.gelu_scales(0.5, False)[0] / elementwise.gelu_scales(0.5, False)[1]
    assert stats["grad_input_0"] == pytest.approx(want_grad, rel=0.1)


def test_activation_layer_accepts_keras_functions_and_aliases() -> None:
    assert uu.Activation(keras.activations.relu).activation_name == "relu"
    assert uu.Activation("swish").activation_name == "silu"
    assert uu.Activation(None).activation_name == "linear"


def test_relu_layer_matches_keras() -> None:
    x = normal([64, 32], 2)
    np.testing.assert_allclose(
        np.asarray(uu.ReLU(constraint="forward")(x)),
        np.asarray(keras.layers.ReLU()(x)) * uscale.RELU_SCALES[0],
        rtol=1e-6,
    )
    stats = uu_checks.scale_stats(uu.ReLU(constraint="backward"), normal([256, 256], 3))
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)


def test_add_layer_n_inputs() -> None:
    inputs = [normal([128, 256], i) for i in range(3)]
    stats = uu_checks.scale_stats(uu.Add(constraint="forward"), inputs)
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    for i in range(3):
        assert stats[f"grad_input_{i}"] == pytest.approx(3**-0.5, rel=0.1)
    out = np.asarray(uu.Add()(inputs))
    shared = (3**-0.5) ** 0.25  # geometric mean of (3^-1/2, 1, 1, 1)
    np.testing.assert_allclose(out, np.asarray(keras.layers.Add()(inputs)) * shared, rtol=1e-5)


def test_add_layer_in_a_model_with_unknown_batch() -> None:
    a_in, b_in = keras.Input(shape=(16,)), keras.Input(shape=(16,))
    model = keras.Model([a_in, b_in], uu.Add(constraint="separate")([a_in, b_in]))
    a, b = normal([32, 16], 1), normal([32, 16], 2)
    out, grads = forward_and_grad(lambda x1, x2: model([x1, x2]), [a, b])
    np.testing.assert_allclose(out, (a + b) * 2**-0.5, rtol=1e-6)
    upstream = normal([32, 16], 5)
    for grad in grads:
        np.testing.assert_allclose(grad, upstream, rtol=1e-6)


LAYERS: dict[str, tuple[Callable[[], keras.layers.Layer], Any]] = {
    "activation_gelu": (lambda: uu.Activation("gelu", mult=2.0), normal([8, 16])),
    "activation_silu": (lambda: uu.Activation("silu", scheme="umup"), normal([8, 16])),
    "activation_relu": (lambda: uu.Activation("relu", constraint="backward"), normal([8, 16])),
    "relu": (lambda: uu.ReLU(scheme="umup"), normal([8, 16])),
    "add": (uu.Add, [normal([8, 16], 1), normal([8, 16], 2)]),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_config_and_keras_file_round_trip(name: str, tmp_path: pathlib.Path) -> None:
    make, inputs = LAYERS[name]
    clone = uu_checks.check_config_round_trip(make())
    assert clone.get_config()["scheme"] == make().scheme
    uu_checks.check_keras_file_round_trip(make, inputs, tmp_path)


@pytest.mark.parametrize("name", ["activation_gelu", "activation_silu", "relu", "add"])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_layer_fit_step(name: str, policy: str) -> None:
    make, inputs = LAYERS[name]
    uu_checks.check_fit_step(make, inputs, policy)


def test_layer_errors() -> None:
    with pytest.raises(ValueError, match="no unit-scaled version of activation 'softmax'"):
        uu.Activation("softmax")
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        uu.Activation("nope")
    with pytest.raises(ValueError, match="no unit-scaled version of activation"):
        uu.Activation(lambda x: x * 2)
    with pytest.raises(ValueError, match="mult applies to .* got mult=2.0 for 'relu'"):
        uu.Activation("relu", mult=2.0)
    with pytest.raises(ValueError, match="supports only the plain ReLU; got {'max_value': 6.0}"):
        uu.ReLU(max_value=6.0)
    with pytest.raises(ValueError, match="'negative_slope': 0.1"):
        uu.ReLU(negative_slope=0.1)
    with pytest.raises(ValueError, match="unknown constraint 'mean'"):
        uu.Add(constraint="mean")
    with pytest.raises(ValueError, match="unknown unit-scaling scheme 'mup'"):
        uu.ReLU(scheme="mup")


def test_twins_from_keras_configs() -> None:
    x = normal([8, 16], 4)
    for original, twin_class in [
        (keras.layers.Activation("gelu"), uu.Activation),
        (keras.layers.Activation("swish"), uu.Activation),
        (keras.layers.ReLU(), uu.ReLU),
        (keras.layers.Add(), uu.Add),
        (keras.layers.Dropout(0.1, seed=2), uu.Dropout),
    ]:
        config = original.get_config()
        twin = twin_class(**config, scheme="umup")
        assert twin.constraint == "forward"
        assert {k: v for k, v in twin.get_config().items() if k in config} == config
        feed = [x, x] if twin_class is uu.Add else x
        assert np.asarray(twin(feed)).shape == (8, 16)
