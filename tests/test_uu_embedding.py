"""scmm.U.embedding and scmm.uu.Embedding: the forward is Keras's lookup, the table gradient is
Keras's times sqrt(vocab / ids) and stays an IndexedSlices, its RMS is 1 for uniform and skewed
ids, ids counted at run time, mask_zero, the Keras layer contract and errors."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.parameters import ParameterInfo

RNG = np.random.default_rng(0)
VOCAB, DIM = 100, 256
IDS = RNG.integers(0, VOCAB, size=(64, 32)).astype("int32")
# Zipf-like ids: a few rows get most of the gradient, most get none.
SKEWED = np.minimum(RNG.zipf(1.5, size=(64, 32)) - 1, VOCAB - 1).astype("int32")


def table_gradient(layer: keras.layers.Layer, ids: np.ndarray, seed: int = 3) -> tuple:
    """(output, table gradient) for a fixed N(0, 1) output gradient."""
    with tf.GradientTape() as tape:
        out = layer(ids)
        upstream = tf.random.stateless_normal(out.shape, [seed, 0], dtype=out.dtype)
        objective = tf.reduce_sum(out * upstream)
    return out, tape.gradient(objective, layer.embeddings)


@pytest.mark.parametrize("ids", [IDS, SKEWED], ids=["uniform", "zipf"])
def test_output_and_table_gradient_are_unit_for_any_id_distribution(ids: np.ndarray) -> None:
    out, grad = table_gradient(uu.Embedding(VOCAB, DIM), ids)
    assert isinstance(grad, tf.IndexedSlices)
    dense = tf.convert_to_tensor(grad)
    assert float(tf.math.reduce_std(out)) == pytest.approx(1.0, rel=0.1)
    assert float(tf.sqrt(tf.reduce_mean(dense**2))) == pytest.approx(1.0, rel=0.1)


def test_forward_is_keras_and_the_gradient_is_keras_times_sqrt_vocab_over_ids() -> None:
    layer, reference = uu.Embedding(VOCAB, DIM), keras.layers.Embedding(VOCAB, DIM)
    layer.build()
    reference.build()
    reference.set_weights(layer.get_weights())
    out, grad = table_gradient(layer, IDS)
    ref_out, ref_grad = table_gradient(reference, IDS)
    np.testing.assert_array_equal(out.numpy(), ref_out.numpy())
    factor = np.sqrt(VOCAB / IDS.size)
    expected = tf.convert_to_tensor(ref_grad).numpy() * factor
    deviation = np.max(np.abs(tf.convert_to_tensor(grad).numpy() - expected))
    assert deviation <= 1e-5 * np.max(np.abs(expected))  # scaled before vs after the row sums


def test_ids_counted_at_run_time_give_the_static_gradient() -> None:
    table = tf.constant(RNG.normal(size=(VOCAB, 8)).astype("float32"))

    def gradient(ids: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(t)
            out = U.embedding(ids, t)
            objective = tf.reduce_sum(out * tf.cos(tf.cast(tf.range(8), tf.float32)))
        return tf.convert_to_tensor(tape.gradient(objective, t))

    dynamic = tf.function(
        gradient, input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([VOCAB, 8])]
    )
    np.testing.assert_allclose(dynamic(IDS, table), gradient(tf.constant(IDS), table), rtol=1e-6)


def test_a_functional_model_with_none_batch_keeps_the_unit_table_gradient() -> None:
    inputs = keras.Input(shape=(32,), dtype="int32")
    model = keras.Model(inputs, uu.Embedding(VOCAB, DIM)(inputs))
    with tf.GradientTape() as tape:
        out = model(IDS)
        objective = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, [4, 0]))
    grad = tf.convert_to_tensor(tape.gradient(objective, model.trainable_weights[0]))
    assert float(tf.sqrt(tf.reduce_mean(grad**2))) == pytest.approx(1.0, rel=0.1)


def test_mask_zero_is_honoured() -> None:
    layer = uu.Embedding(VOCAB, 4, mask_zero=True)
    ids = np.array([[3, 0, 5], [0, 0, 7]], dtype="int32")
    np.testing.assert_array_equal(layer.compute_mask(ids).numpy(), ids != 0)
    inputs = keras.Input(shape=(3,), dtype="int32")
    embedded = layer(inputs)
    assert embedded._keras_mask is not None  # the mask travels to the next layer
    assert not uu.Embedding(VOCAB, 4).supports_masking


def test_mixed_bfloat16_output_with_a_float32_table() -> None:
    layer = uu.Embedding(VOCAB, 8, dtype="mixed_bfloat16")
    out = layer(IDS)
    assert out.dtype == tf.bfloat16 and layer.embeddings.dtype == "float32"


def test_parameter_info_and_keras_contract(tmp_path: Path) -> None:
    def make() -> keras.layers.Layer:
        return uu.Embedding(VOCAB, 16, mask_zero=True, scheme="umup")

    layer = make()
    layer(IDS[:8])
    assert layer.parameter_info() == {"embeddings": ParameterInfo("embedding")}
    assert "constraint" not in layer.get_config()
    uu_checks.check_config_round_trip(layer)
    uu_checks.check_keras_file_round_trip(make, IDS[:8], tmp_path)
    uu_checks.check_fit_step(lambda: uu.Embedding(VOCAB, 16), IDS[:8], "float32")
    uu_checks.check_fit_step(lambda: uu.Embedding(VOCAB, 16), IDS[:8], "mixed_bfloat16")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="LoRA"):
        uu.Embedding(VOCAB, 4, lora_rank=2)
    with pytest.raises(ValueError, match="quantized dtype"):
        uu.Embedding(VOCAB, 4, dtype="int8_from_float32")
    with pytest.raises(ValueError, match="scheme"):
        uu.Embedding(VOCAB, 4, scheme="sp")
    with pytest.raises(ValueError, match="constraint"):
        uu.Embedding(VOCAB, 4, constraint="gmean")  # a lookup has nothing to constrain
    layer = uu.Embedding(VOCAB, 4)
    layer.build()
    with pytest.raises(ValueError, match="quantized with Keras"):
        layer.quantize("int8")
    with pytest.raises(ValueError, match="LoRA"):
        layer.enable_lora(2)
    with pytest.raises(ValueError, match="table"):
        U.embedding(IDS, tf.zeros((VOCAB,)))
    with pytest.raises(ValueError, match="integers"):
        U.embedding(tf.constant(["a"]), tf.zeros((VOCAB, 4)))
