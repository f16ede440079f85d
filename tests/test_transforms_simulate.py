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
