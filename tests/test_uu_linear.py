"""scmm.U linear / readout / matmul and scmm.uu Dense / DenseReadout: unit scales at init (std
within 10% of the rule), forward = keras.layers.Dense / keras.ops.matmul with the folded scale,
gradients = the reference gradients times the rule's factors, dynamic batch dims, simulated
FP8 operands, the Keras layer contract (config, .keras, XLA fit in float32 and
mixed_bfloat16), parameter info and errors."""

from pathlib import Path
from typing import Any, Callable, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.formats import quantise
from scmm.parameters import ParameterInfo
from scmm.precision import scope
from scmm.precision_settings import PrecisionSettings

RNG = np.random.default_rng(0)
X2 = RNG.normal(size=(256, 512)).astype("float32")  # (batch, features)
CONSTRAINTS = ("gmean", "forward", "backward", "separate")


def assert_close(actual: Any, expected: Any, rel: float = 1e-5) -> None:
    """Max deviation relative to the largest reference value (a float32 sum's round-off)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(actual - expected))) <= rel * scale


def tied(forward: float, backward: float, constraint: Optional[str]) -> tuple[float, float]:
    """(output scale, x-gradient scale) under ``constraint`` (None: untied)."""
    if constraint == "gmean":
        return (np.sqrt(forward * backward),) * 2
    if constraint == "forward":
        return forward, forward
    if constraint == "backward":
        return backward, backward
    return forward, backward


def normal(shape: tuple, seed: int) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype("float32"))


def deterministic_upstream(out: tf.Tensor, seed: int) -> tf.Tensor:
    """A unit-variance gradient for ``out`` that XLA and eager compute alike (sqrt(2) sin of a
    ramp; the stateless RNGs may differ under XLA)."""
    ramp = tf.cast(tf.range(tf.size(out)), tf.float32) * 0.7548 + seed
    return tf.cast(tf.reshape(tf.sin(ramp) * 2**0.5, tf.shape(out)), out.dtype)


def grads_of(fn: Callable[..., tf.Tensor], inputs: list[tf.Tensor], seed: int = 7) -> tuple:
    """(output, gradients of <output, g> for a fixed N(0, 1) g) with respect to ``inputs``."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
        upstream = deterministic_upstream(out, seed)
        objective = tf.reduce_sum(out * upstream)
    return out, [tf.convert_to_tensor(g) for g in tape.gradient(objective, inputs)]


# --- scales at init --------------------------------------------------------------------------


@pytest.mark.parametrize("batch,m,n", [(256, 512, 1024), (64, 1024, 256)])
@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_dense_scales_follow_the_rule(batch: int, m: int, n: int, constraint: str) -> None:
    x = np.random.default_rng(batch).normal(size=(batch, m)).astype("float32")
    stats = uu_checks.scale_stats(uu.Dense(n, constraint=constraint), x)
    out_scale, grad_scale = tied(m**-0.5, n**-0.5, constraint)
    assert stats["output"] == pytest.approx(out_scale * m**0.5, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(grad_scale * n**0.5, rel=0.1)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_bias"] == pytest.approx(1.0, rel=0.1)


def test_the_umup_readout_is_one_over_fan_in_with_a_unit_input_gradient() -> None:
    stats = uu_checks.scale_stats(uu.DenseReadout(1024, scheme="umup"), X2)
    assert stats["output"] == pytest.approx(512**-0.5, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_bias"] == pytest.approx(1.0, rel=0.1)
    tied_stats = uu_checks.scale_stats(
        uu.DenseReadout(1024, scheme="umup", constraint="forward"), X2
    )
    assert tied_stats["grad_input_0"] == pytest.approx(1024**0.5 / 512, rel=0.1)


def test_the_unit_readout_is_an_unconstrained_projection() -> None:
    stats = uu_checks.scale_stats(uu.DenseReadout(1024), X2)
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_matmul_scales_follow_the_rule_with_broadcast_batch(constraint: Any) -> None:
    batch, m, k, n = 8, 64, 256, 128
    a, b = normal((batch, m, k), 1), normal((k, n), 2)  # b broadcast over the batch
    _, (grad_a, grad_b) = grads_of(lambda p, q: U.matmul(p, q, constraint), [a, b])
    out = U.matmul(a, b, constraint)
    ideal = np.array([k**-0.5, n**-0.5, (m * batch) ** -0.5])
    scales = {
        "gmean": [np.prod(ideal) ** (1 / 3)] * 3,
        "forward": [ideal[0]] * 3,
        "backward": [np.sqrt(ideal[1] * ideal[2])] * 3,
        "separate": list(ideal),
    }[constraint]
    assert float(np.std(out)) == pytest.approx(scales[0] / ideal[0], rel=0.1)
    assert float(np.std(grad_a)) == pytest.approx(scales[1] / ideal[1], rel=0.1)
    assert float(np.std(grad_b)) == pytest.approx(scales[2] / ideal[2], rel=0.1)


# --- forward = Keras with the folded scale -----------------------------------------------------


@pytest.mark.parametrize("role", ["weight", "readout"])
@pytest.mark.parametrize("scheme", ["unit", "umup"])
@pytest.mark.parametrize("constraint", [None, *CONSTRAINTS])
def test_dense_forward_is_keras_dense_with_the_folded_kernel(
    scheme: str, role: str, constraint: Optional[str]
) -> None:
    layer = uu.Dense(256, scheme=scheme, role=role, constraint=constraint)
    layer.build(X2.shape)
    layer.bias.assign(RNG.normal(size=(256,)).astype("float32"))
    m, n = 512, 256
    if role == "readout" and scheme == "umup":
        scale = tied(1.0 / m, n**-0.5, constraint)[0]
    elif role == "readout":
        scale = tied(m**-0.5, n**-0.5, constraint or "separate")[0]
    else:
        scale = tied(m**-0.5, n**-0.5, constraint or uu.DEFAULT_CONSTRAINT[scheme])[0]
    reference = keras.layers.Dense(256)
    reference.build(X2.shape)
    kernel, bias = layer.get_weights()
    reference.set_weights([kernel * scale, bias])
    assert_close(layer(X2), reference(X2))


def test_matmul_forward_is_keras_matmul_times_the_output_scale_for_every_rank() -> None:
    k = 16
    for left, right in [
        ((5, k), (k, 7)),
        ((3, 5, k), (k, 7)),
        ((5, k), (3, k, 7)),
        ((2, 1, 5, k), (3, k, 7)),
        ((k,), (k, 7)),
        ((3, 5, k), (k,)),
        ((k,), (k,)),
    ]:
        a, b = normal(left, 3), normal(right, 4)
        expected = keras.ops.matmul(a, b) * k**-0.5
        assert_close(U.matmul(a, b, "forward"), expected)


# --- gradients = reference gradients x the rule's factors ---------------------------------------


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_linear_gradients_are_the_reference_gradients_times_the_factors(constraint: Any) -> None:
    rows, m, n = 6 * 10, 48, 32
    x, kernel, bias = normal((6, 10, m), 5), normal((m, n), 6), normal((n,), 7)
    out, (dx, dk, db) = grads_of(lambda p, w, c: U.linear(p, w, c, constraint), [x, kernel, bias])
    ref_out, (ref_dx, ref_dk, ref_db) = grads_of(
        lambda p, w, c: tf.tensordot(p, w, axes=1) + c, [x, kernel, bias]
    )
    out_scale, grad_scale = tied(m**-0.5, n**-0.5, constraint)
    assert_close(out, (ref_out - bias) * out_scale + bias)
    assert_close(dx, ref_dx * grad_scale)
    assert_close(dk, ref_dk * rows**-0.5)
    assert_close(db, ref_db * rows**-0.5)


@pytest.mark.parametrize("constraint", [None, "forward"])
def test_readout_gradients_are_the_reference_gradients_times_the_factors(constraint: Any) -> None:
    m, n = 64, 40
    x, kernel, bias = normal((20, m), 8), normal((m, n), 9), normal((n,), 10)
    out, (dx, dk, db) = grads_of(lambda p, w, c: U.readout(p, w, c, constraint), [x, kernel, bias])
    ref_out, (ref_dx, ref_dk, ref_db) = grads_of(lambda p, w, c: p @ w + c, [x, kernel, bias])
    out_scale, grad_scale = tied(1.0 / m, n**-0.5, constraint)
    assert_close(out, (ref_out - bias) * out_scale + bias)
    assert_close(dx, ref_dx * grad_scale)
    assert_close(dk, ref_dk * 20**-0.5)
    assert_close(db, ref_db * 20**-0.5)


@pytest.mark.parametrize("constraint", ["gmean", "separate"])
def test_matmul_gradients_are_the_reference_gradients_times_the_factors(constraint: Any) -> None:
    batch, m, k, n = 3, 5, 16, 7
    a, b = normal((batch, m, k), 11), normal((k, n), 12)
    _, (da, db) = grads_of(lambda p, q: U.matmul(p, q, constraint), [a, b])
    _, (ref_da, ref_db) = grads_of(tf.matmul, [a, b])
    ideal = (k**-0.5, n**-0.5, (batch * m) ** -0.5)
    scales = ideal if constraint == "separate" else (np.prod(ideal) ** (1 / 3),) * 3
    assert_close(da, ref_da * scales[1])
    assert_close(db, ref_db * scales[2])


# --- dynamic batch, XLA -----------------------------------------------------------------------


def test_linear_and_matmul_with_dims_known_only_at_run_time_equal_the_static_ones() -> None:
    x, kernel, bias = normal((12, 9, 32), 13), normal((32, 16), 14), normal((16,), 15)
    linear = tf.function(
        lambda *t: grads_of(U.linear, list(t)),
        input_signature=[
            tf.TensorSpec([None, None, 32]),
            tf.TensorSpec([32, 16]),
            tf.TensorSpec([16]),
        ],
    )
    for got, want in zip(linear(x, kernel, bias), grads_of(U.linear, [x, kernel, bias])):
        for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
            assert_close(g, w)
    b = normal((32, 5), 16)
    matmul = tf.function(
        lambda p, q: grads_of(U.matmul, [p, q]),
        input_signature=[tf.TensorSpec([None, None, 32]), tf.TensorSpec([32, 5])],
    )
    for g, w in zip(tf.nest.flatten(matmul(x, b)), tf.nest.flatten(grads_of(U.matmul, [x, b]))):
        assert_close(g, w)


def test_dense_in_a_functional_model_with_a_none_batch_keeps_unit_kernel_gradients() -> None:
    inputs = keras.Input(shape=(512,))  # batch None: rows counted at run time
    layer = uu.Dense(256)
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, 256)
    stats = uu_checks.scale_stats(model, X2)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    compiled = tf.function(lambda t: grads_of(model, [t]), jit_compile=True)
    for g, w in zip(
        tf.nest.flatten(compiled(tf.constant(X2))),
        tf.nest.flatten(grads_of(model, [tf.constant(X2)])),
    ):
        assert_close(g, w)


# --- activation, precision, parameter info ----------------------------------------------------


def test_a_dense_activation_is_the_unit_scaled_op_with_the_layer_constraint() -> None:
    for name, op in [
        ("relu", U.relu),
        ("gelu", lambda t, c: U.gelu(t, False, 1.0, c)),
    ]:
        layer = uu.Dense(64, activation=name, scheme="umup")
        out = layer(X2[:32])
        expected = op(U.linear(X2[:32], layer.kernel, layer.bias, "forward"), "forward")
        assert_close(out, expected)


@pytest.mark.parametrize("constraint", ["gmean", "separate"])
def test_simulated_fp8_rounds_the_dense_operands_to_e4m3(constraint: str) -> None:
    layer = uu.Dense(64, use_bias=False, constraint=constraint)
    x = tf.constant(X2[:, :128] * 3)  # not on the E4M3 grid
    layer.build(x.shape)
    kernel = tf.convert_to_tensor(layer.kernel)
    with scope(PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")):
        y = layer(x)
    scale = tied(128**-0.5, 64**-0.5, constraint)[0]
    expected = tf.matmul(quantise(x, "e4m3"), quantise(kernel, "e4m3")) * scale
    assert_close(y, expected, rel=1e-6)
    assert float(np.max(np.abs(y - tf.matmul(x, kernel) * scale))) > 1e-2
    assert_close(layer(x), tf.matmul(x, kernel) * scale)  # outside the scope: untouched


def test_the_layer_precision_argument_rounds_like_the_scope() -> None:
    settings = PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")
    layer = uu.Dense(64, use_bias=False, precision=settings)
    x = tf.constant(X2[:, :128] * 3)
    y = layer(x)
    expected = tf.matmul(quantise(x, "e4m3"), quantise(tf.convert_to_tensor(layer.kernel), "e4m3"))
    assert_close(y, expected * (128 * 64) ** -0.25, rel=1e-6)


def test_parameter_info_declares_role_and_fan_in() -> None:
    dense, readout = uu.Dense(8), uu.DenseReadout(8, use_bias=False)
    dense.build((None, 24))
    readout.build((None, 24))
    assert dense.parameter_info() == {
        "kernel": ParameterInfo("weight", 24),
        "bias": ParameterInfo("bias"),
    }
    assert readout.parameter_info() == {"kernel": ParameterInfo("readout", 24)}


# --- Keras contract ---------------------------------------------------------------------------

LAYERS: dict[str, Callable[[], Any]] = {
    "dense_relu": lambda: uu.Dense(32, activation="relu"),
    "readout_unit": lambda: uu.DenseReadout(32),
    "readout_umup": lambda: uu.DenseReadout(32, scheme="umup"),
    "dense_fp8": lambda: uu.Dense(
        32, precision=PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_keras_contract(name: str, tmp_path: Path) -> None:
    make, inputs = LAYERS[name], X2[:16, :64]
    layer = make()
    layer(inputs)
    clone = uu_checks.check_config_round_trip(layer)
    assert (clone.scheme, clone.role, clone.product_constraint) == (
        layer.scheme,
        layer.role,
        layer.product_constraint,
    )
    uu_checks.check_keras_file_round_trip(make, inputs, tmp_path)
    uu_checks.check_fit_step(make, inputs, "float32")
    uu_checks.check_fit_step(make, inputs, "mixed_bfloat16")


def test_mixed_bfloat16_computes_in_bfloat16_with_float32_variables() -> None:
    layer = uu.Dense(32, dtype="mixed_bfloat16")
    out = layer(X2[:8, :64])
    assert out.dtype == tf.bfloat16 and layer.kernel.dtype == "float32"
    reference = U.linear(X2[:8, :64], layer.kernel, layer.bias)
    assert_close(tf.cast(out, tf.float32), reference, rel=2e-2)


# --- errors -----------------------------------------------------------------------------------


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        uu.Dense(4, role="head")
    with pytest.raises(ValueError, match="LoRA"):
        uu.Dense(4, lora_rank=2)
    with pytest.raises(ValueError, match="constraint"):
        uu.Dense(4, constraint="to_output_scale")
    with pytest.raises(ValueError, match="scheme"):
        uu.Dense(4, scheme="mup")
    with pytest.raises(ValueError, match="softplus"):
        uu.Dense(4, activation="softplus")
    with pytest.raises(ValueError, match="quantized dtype"):
        uu.Dense(4, dtype="int8_from_float32")
    layer = uu.Dense(4)
    layer.build((2, 3))
    with pytest.raises(ValueError, match="simulate_fp8"):
        layer.quantize("float8")
    with pytest.raises(ValueError, match="LoRA"):
        layer.enable_lora(2)


def test_bad_op_inputs_are_refused() -> None:
    x, kernel = tf.zeros((4, 8)), tf.zeros((8, 3))
    with pytest.raises(ValueError, match="constraint"):
        U.linear(x, kernel, constraint="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="constraint"):
        U.readout(x, kernel, constraint="to_output_scale")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2-D kernel"):
        U.linear(x, tf.zeros((8, 3, 2)))
    with pytest.raises(ValueError, match="input features"):
        U.linear(x, tf.zeros((7, 3)))
    with pytest.raises(ValueError, match="bias must have shape"):
        U.linear(x, kernel, tf.zeros((4,)))
    with pytest.raises(ValueError, match="inner dims"):
        U.matmul(tf.zeros((4, 8)), tf.zeros((7, 3)))
    with pytest.raises(ValueError, match="rank >= 1"):
        U.matmul(tf.zeros(()), tf.zeros((7, 3)))
    with pytest.raises(ValueError, match="constraint"):
        U.matmul(x, tf.zeros((8, 2)), constraint="fwd")  # type: ignore[arg-type]
