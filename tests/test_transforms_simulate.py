"""simulate_fp8 / simulate_format on plain Keras models: every product's operands rounded to
the forward format and the gradient at its output to the backward format, bit for bit."""

from typing import Any

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from scmm import precision
from scmm.formats import quantise
from scmm.transforms import simulate_format, simulate_fp8
from scmm.transforms.simulated_layers import SimulatedDense, SimulatedMultiHeadAttention

RNG = np.random.default_rng(0)


def _dense_model() -> keras.Model:
    inputs = keras.Input((16, 64), batch_size=8)
    hidden = keras.layers.Dense(64, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(32, name="head")(hidden))


def _attention_model() -> keras.Model:
    inputs = keras.Input((16, 32), batch_size=4)
    h = keras.layers.MultiHeadAttention(4, 8, name="attn")(inputs, inputs, use_causal_mask=True)
    h = keras.layers.Conv1D(32, 3, padding="causal", name="conv")(inputs + h)
    h = keras.layers.EinsumDense("bsh,hk->bsk", (16, 32), name="einsum")(h)
    return keras.Model(inputs, keras.layers.Dense(8, name="head")(h))


def _on_grid(x: np.ndarray, fmt: Any) -> bool:
    return bool(np.array_equal(x.astype(fmt).astype(np.float32), x))


@pytest.mark.parametrize("jit", [False, True])
def test_a_dense_layer_multiplies_e4m3_operands_and_passes_back_an_e5m2_gradient(jit: bool) -> None:
    model = _dense_model()
    simulated = simulate_fp8(model)
    layer = simulated.get_layer("hidden")
    assert isinstance(layer, SimulatedDense)
    x = tf.constant(RNG.normal(size=(8, 16, 64)).astype("float32") * 3)
    g = tf.constant(RNG.normal(size=(8, 16, 64)).astype("float32") * 1e-3)
    kernel = tf.convert_to_tensor(layer.kernel)

    def simulated_pass(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return y, tape.gradient(y, x, output_gradients=g)

    def reference_pass(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        w = quantise(kernel, "e4m3")
        y = tf.matmul(quantise(x, "e4m3"), w) + layer.bias
        return y, tf.matmul(quantise(g, "e5m2"), w, transpose_b=True)

    if jit:
        simulated_pass = tf.function(simulated_pass, jit_compile=True)
        reference_pass = tf.function(reference_pass, jit_compile=True)
    y, grad = simulated_pass(x)
    y_ref, grad_ref = reference_pass(x)
    np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
    np.testing.assert_array_equal(grad.numpy(), grad_ref.numpy())
    assert not np.array_equal(y.numpy(), model.get_layer("hidden")(x).numpy())


def _raw_ops_model() -> keras.Model:
    """Products written as keras.ops calls, not layers (a user's hand-rolled attention)."""
    q, k = keras.Input((16, 32), name="q"), keras.Input((16, 32), name="k")
    scores = keras.ops.einsum("bsd,btd->bst", q, k)  # (batch, seq, seq)
    return keras.Model([q, k], keras.ops.matmul(scores, k))  # (batch, seq, 32)


@pytest.mark.parametrize("jit", [False, True])
def test_raw_keras_ops_matmul_and_einsum_are_rounded_both_ways(jit: bool) -> None:
    model = _raw_ops_model()
    simulated = simulate_fp8(model)
    report = simulated.scmm_report
    assert not report.unhandled
    # (Keras numbers op nodes per process: einsum, einsum_1, ...)
    assert sorted((e.kind, e.replacement) for e in report.replaced) == [
        ("ops.Einsum", "SimulatedOp"),
        ("ops.Matmul", "SimulatedOp"),
    ]
    q = tf.constant(RNG.normal(size=(4, 16, 32)).astype("float32") * 3)
    k = tf.constant(RNG.normal(size=(4, 16, 32)).astype("float32"))
    g = tf.constant(RNG.normal(size=(4, 16, 32)).astype("float32") * 1e-3)

    def simulated_pass(q: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            y = simulated([q, k])
        return (y, *tape.gradient(y, [q, k], output_gradients=g))

    def reference_pass(q: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, ...]:
        q8, k8 = quantise(q, "e4m3"), quantise(k, "e4m3")
        scores = tf.einsum("bsd,btd->bst", q8, k8)
        s8 = quantise(scores, "e4m3")
        y = tf.matmul(s8, k8)
        g8 = quantise(g, "e5m2")
        # The gradient into the scores is rounded too, where it arrives at the einsum's output.
        g_scores = quantise(tf.matmul(g8, k8, transpose_b=True), "e5m2")
        g_q = tf.einsum("bst,btd->bsd", g_scores, k8)
        g_k = tf.matmul(s8, g8, transpose_a=True) + tf.einsum("bst,bsd->btd", g_scores, q8)
        return y, g_q, g_k

    if jit:
        simulated_pass = tf.function(simulated_pass, jit_compile=True)
        reference_pass = tf.function(reference_pass, jit_compile=True)
    for got, expected in zip(simulated_pass(q, k), reference_pass(q, k)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-6, atol=1e-9)
    y = simulated_pass(q, k)[0].numpy()
    np.testing.assert_array_equal(y, reference_pass(q, k)[0].numpy())
    assert not np.array_equal(y, model([q, k]).numpy())


def test_raw_ops_commute_with_unit_scale() -> None:
    from scmm.transforms import unit_scale  # pylint: disable=import-outside-toplevel

    model = _raw_ops_model()
    one, other = unit_scale(simulate_fp8(model)), simulate_fp8(unit_scale(model))
    configs = [[layer.get_config() for layer in m.layers] for m in (one, other)]
    assert configs[0] == configs[1]
    assert [type(layer).__name__ for layer in one.layers][-2:] == ["FunctionalOp"] * 2
    x = [RNG.normal(size=(4, 16, 32)).astype("float32") for _ in range(2)]
    np.testing.assert_array_equal(one(x).numpy(), other(x).numpy())


def test_every_product_of_attention_conv_and_einsum_layers_is_rounded(monkeypatch: Any) -> None:
    simulated = simulate_fp8(_attention_model())
    seen: list[tuple[str, np.ndarray]] = []
    original = precision.operand

    def spy(x: tf.Tensor, role: str) -> tf.Tensor:
        out = original(x, role)
        seen.append((role, out.numpy()))
        return out

    monkeypatch.setattr(precision, "operand", spy)
    simulated(RNG.normal(size=(4, 16, 32)).astype("float32"))
    # q, k, v, output projections + scores + mixing (attention), conv, einsum, head: 9 products.
    assert len(seen) == 18
    assert all(_on_grid(values, ml_dtypes.float8_e4m3fn) for _, values in seen)
    assert sum(role == "weight" for role, _ in seen) == 7


def test_head_false_leaves_the_readout_unrounded_and_float32_formats_change_nothing() -> None:
    model = _attention_model()
    x = RNG.normal(size=(4, 16, 32)).astype("float32")
    plain = simulate_format(model, "float32", "float32")
    np.testing.assert_array_equal(plain(x).numpy(), model(x).numpy())
    simulated = simulate_fp8(model, head=False)
    assert not simulated.get_layer("head").precision.enabled
    assert simulated.get_layer("conv").precision.enabled
    assert isinstance(simulated.get_layer("attn"), SimulatedMultiHeadAttention)
    entries = {e.name: e.status for e in simulated.scmm_report.entries}
    assert entries["attn"] == "replaced" and not simulated.scmm_report.unhandled


def test_the_input_model_is_untouched_and_the_copy_round_trips_through_a_keras_file(
    tmp_path: Any,
) -> None:
    model = _attention_model()
    x = RNG.normal(size=(4, 16, 32)).astype("float32")
    before = model(x).numpy()
    simulated = simulate_fp8(model)
    assert [type(l).__name__ for l in model.layers].count("MultiHeadAttention") == 1
    np.testing.assert_array_equal(model(x).numpy(), before)
    simulated.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), simulated(x).numpy())


def test_a_sequential_model_stays_sequential_and_bad_formats_are_refused() -> None:
    seq = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    simulated = simulate_fp8(seq)
    assert isinstance(simulated, keras.Sequential)
    assert all(isinstance(layer, SimulatedDense) for layer in simulated.layers)
    with pytest.raises(ValueError, match="e3m4"):
        simulate_format(seq, "e3m4", "e5m2")
