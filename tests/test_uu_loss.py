"""scmm.U.sparse_categorical_crossentropy and scmm.uu.losses.SparseCategoricalCrossentropy:
Keras's masked-mean value, unit-scaled logits gradient (directly and through model.fit's
reduction), dynamic token counts, serialisation and errors."""

import math
import pathlib
from typing import Any, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

import scmm.functional as U
from scmm import uu

VOCAB = 64
IGNORE = -1


def batch(
    shape: tuple[int, ...] = (16, 128), ignored: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(targets with ~``ignored`` of them IGNORE, N(0, 1) logits (*shape, VOCAB))."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, VOCAB, size=shape).astype("int32")
    targets[rng.random(shape) < ignored] = IGNORE
    return targets, rng.normal(size=(*shape, VOCAB)).astype("float32")


def value_and_logits_grad(fn: Any, logits: np.ndarray) -> tuple[float, np.ndarray]:
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(x)
    return float(value), tape.gradient(value, x).numpy()


def keras_loss(ignore_class: Optional[int] = IGNORE) -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_class)


UNIT_FACTOR = VOCAB / math.sqrt(VOCAB - 1)


def test_value_is_keras_masked_mean_and_gradient_is_unit_scaled() -> None:
    targets, logits = batch()
    scored = targets != IGNORE
    count = scored.sum()
    value, grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets, x, ignore_class=IGNORE), logits
    )
    ref, ref_grad = value_and_logits_grad(lambda x: keras_loss()(targets, x), logits)
    assert value == pytest.approx(ref, rel=1e-6)
    # Keras's masked mean is over scored tokens: 25% ignored changes it from the all-token mean.
    assert ref != pytest.approx(ref * count / targets.size, rel=0.1)
    np.testing.assert_allclose(grad, ref_grad * count * UNIT_FACTOR, rtol=1e-5, atol=1e-7)
    assert np.std(grad[scored]) == pytest.approx(1.0, rel=0.1)
    assert np.all(grad[~scored] == 0)


def test_no_ignore_class_and_mult() -> None:
    targets, logits = batch(ignored=0.0)
    value, grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets, x, mult=0.5), logits
    )
    ref, ref_grad = value_and_logits_grad(lambda x: keras_loss(None)(targets, 0.5 * x), logits)
    assert value == pytest.approx(ref, rel=1e-6)
    # The backward scale is divided by mult, so the logits gradient is unit again.
    np.testing.assert_allclose(
        grad, ref_grad * targets.size * UNIT_FACTOR / 0.5, rtol=1e-5, atol=1e-7
    )
    assert np.std(grad) == pytest.approx(1.0, rel=0.1)


def test_class_axis_and_size_one_targets() -> None:
    targets, logits = batch((8, 32))
    moved = np.moveaxis(logits, -1, 1)  # (batch, classes, seq)
    value, grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets, x, axis=1, ignore_class=IGNORE),
        moved,
    )
    ref, ref_grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets[..., None], x, ignore_class=IGNORE),
        logits,
    )
    assert value == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(grad, np.moveaxis(ref_grad, -1, 1), rtol=1e-6, atol=1e-7)


def test_token_count_is_dynamic() -> None:
    targets, logits = batch((8, 32))
    static_value, static_grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets, x, ignore_class=IGNORE), logits
    )
    spec = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None, VOCAB])]

    @tf.function(input_signature=spec)
    def traced(t: tf.Tensor, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = U.sparse_categorical_crossentropy(t, x, ignore_class=IGNORE)
        return value, tape.gradient(value, x)

    value, grad = traced(tf.constant(targets), tf.constant(logits))
    assert float(value) == pytest.approx(static_value, rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), static_grad, rtol=1e-6, atol=1e-7)


def test_bfloat16_logits_give_a_float32_loss() -> None:
    targets, logits = batch((8, 32))
    low = tf.cast(tf.constant(logits), tf.bfloat16)
    value = U.sparse_categorical_crossentropy(targets, low, ignore_class=IGNORE)
    assert value.dtype == tf.float32
    ref = keras_loss()(targets, tf.cast(low, tf.float32))
    assert float(value) == pytest.approx(float(ref), rel=1e-6)


def test_all_tokens_ignored_gives_zero() -> None:
    targets, logits = batch((4, 8), ignored=1.0)
    value, grad = value_and_logits_grad(
        lambda x: U.sparse_categorical_crossentropy(targets, x, ignore_class=IGNORE), logits
    )
    assert value == 0.0 and np.all(grad == 0)


# The Keras loss class ------------------------------------------------------------------------


def readout_model(seed: int = 0) -> keras.Model:
    inputs = keras.Input(shape=(32, 16))
    init = keras.initializers.RandomNormal(stddev=16**-0.5, seed=seed)
    return keras.Model(inputs, keras.layers.Dense(VOCAB, kernel_initializer=init)(inputs))


@pytest.mark.parametrize("ignore_class", [None, IGNORE])
def test_loss_class_through_the_trainers_reduction(ignore_class: Optional[int]) -> None:
    targets, _ = batch((8, 32), ignored=0.25 if ignore_class is not None else 0.0)
    x = np.random.default_rng(1).normal(size=(8, 32, 16)).astype("float32")
    count = (targets != IGNORE).sum()
    grads, values = [], []
    for loss in (uu.losses.SparseCategoricalCrossentropy(ignore_class=ignore_class),
                 keras_loss(ignore_class)):  # fmt: skip
        model = readout_model()
        model.compile(optimizer="sgd", loss=loss)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            tape.watch(logits)
            value = model.compute_loss(x=x, y=targets, y_pred=logits, training=True)
        values.append(float(value))
        grads.append(tape.gradient(value, logits).numpy())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    np.testing.assert_allclose(grads[0], grads[1] * count * UNIT_FACTOR, rtol=1e-5, atol=1e-7)
    assert np.std(grads[0][targets != IGNORE]) == pytest.approx(1.0, rel=0.1)


def test_loss_class_sum_reduction() -> None:
    targets, logits = batch((8, 32))
    ours = uu.losses.SparseCategoricalCrossentropy(ignore_class=IGNORE, reduction="sum")
    theirs = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, reduction="sum"
    )
    value, grad = value_and_logits_grad(lambda x: ours(targets, x), logits)
    ref, ref_grad = value_and_logits_grad(lambda x: theirs(targets, x), logits)
    assert value == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(grad, ref_grad * UNIT_FACTOR, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_loss_class_fit_step(policy: str, tmp_path: pathlib.Path) -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        targets, _ = batch((8, 32))
        x = np.random.default_rng(1).normal(size=(8, 32, 16)).astype("float32")
        model = readout_model()
        loss = uu.losses.SparseCategoricalCrossentropy(ignore_class=IGNORE, mult=2.0)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss, jit_compile=True)
        before = model.evaluate(x, targets, batch_size=8, verbose=0)
        model.fit(x, targets, batch_size=8, epochs=3, verbose=0)
        after = model.evaluate(x, targets, batch_size=8, verbose=0)
        assert np.isfinite(before) and after < before
        reference = keras_loss()(targets, 2.0 * tf.cast(model(x), tf.float32))
        assert after == pytest.approx(float(reference), rel=1e-5 if policy == "float32" else 1e-2)
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert isinstance(loaded.loss, uu.losses.SparseCategoricalCrossentropy)
        assert loaded.loss.get_config() == loss.get_config()
    finally:
        keras.config.set_dtype_policy(previous)


def test_loss_class_config_round_trip() -> None:
    loss = uu.losses.SparseCategoricalCrossentropy(ignore_class=0, mult=0.5, name="ce")
    revived = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(revived) is type(loss)
    assert revived.get_config() == loss.get_config()
    assert loss.get_config()["mult"] == 0.5


def test_loss_errors() -> None:
    targets, logits = batch((2, 4))
    with pytest.raises(ValueError, match="needs logits \\(from_logits=True\\), got from_logits"):
        U.sparse_categorical_crossentropy(targets, logits, from_logits=False)
    with pytest.raises(ValueError, match="needs logits"):
        uu.losses.SparseCategoricalCrossentropy(from_logits=False)
    with pytest.raises(ValueError, match="mult must be a finite number > 0, got 0"):
        U.sparse_categorical_crossentropy(targets, logits, mult=0)
    with pytest.raises(ValueError, match="supports reduction in .* got None"):
        uu.losses.SparseCategoricalCrossentropy(reduction=None)
    with pytest.raises(ValueError, match=r"targets of shape \(2, 5\) do not match .* \(2, 4\)"):
        U.sparse_categorical_crossentropy(np.zeros([2, 5], "int32"), logits)
    with pytest.raises(ValueError, match="class axis of size >= 2, got 1"):
        U.sparse_categorical_crossentropy(targets, logits[..., :1])
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        U.sparse_categorical_crossentropy(targets, logits, axis=3)
    with pytest.raises(ValueError, match="ignore_class must be an int or None"):
        uu.losses.SparseCategoricalCrossentropy(ignore_class="pad")  # type: ignore[arg-type]
