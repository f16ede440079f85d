"""Dropout in the character LMs (``model.dropout_keep_probability``).

The op sets' dropout against its rule on a million elements: inverted dropout keeps the mean
(std 1/sqrt(p) for a unit input), the unit-scaled one keeps the variance (std 1, gradient std
1); the mask is a pure function of the stateless seed, the same eagerly and under XLA. In the
model: keep 1 is the model without dropout bit for bit, dropout acts only in training steps,
a unit-scaled model at p = 0.9 stays at unit scale, and training is exactly reproducible and
resumable (the masks come from the step, not from a stateful generator).
"""

import dataclasses
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_execution, model_settings, random_batch, unit_scaled

from scmm.models import CharLM
from scmm.ops import get_ops
from scmm.training import AdamWSettings, Trainer, TrainingSettings

SEED = tf.constant([7, 11], tf.int32)
N = 1_000_000  # std within ~0.2% (3 sigma ~ 3 / sqrt(2N) relative) at this size


def _unit_normal() -> tf.Tensor:
    return tf.random.stateless_normal((1000, 1000), [1, 2])


@pytest.mark.parametrize("keep", [0.9, 0.5])
@pytest.mark.parametrize("ops", ["plain", "unit", "umup"])
def test_dropout_follows_its_scaling_rule(ops: str, keep: float) -> None:
    x = _unit_normal()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = get_ops(ops).dropout(x, keep, SEED)
    grad = tape.gradient(y, x, output_gradients=_unit_normal())
    y_np, grad_np = y.numpy(), grad.numpy()
    kept = y_np != 0
    assert abs(kept.mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / N)
    factor = 1 / keep if ops == "plain" else keep**-0.5
    np.testing.assert_allclose(y_np[kept], x.numpy()[kept] * np.float32(factor), rtol=1e-6)
    assert ((grad_np != 0) == kept).all()  # the gradient goes through the same mask
    want_std = keep**-0.5 if ops == "plain" else 1.0  # plain keeps the mean, unit the variance
    assert y_np.std() == pytest.approx(want_std, rel=0.01)
    assert grad_np.std() == pytest.approx(want_std, rel=0.01)
    assert abs(y_np.mean()) < 0.01  # a zero-mean input stays zero-mean


def test_dropout_masks_are_a_function_of_the_seed() -> None:
    """Same seed, same mask, eagerly and in compiled code. (TensorFlow's stateless generator
    under XLA is not its eager kernel: the two draw different masks from one seed, so a run's
    masks are reproducible within one execution mode, which is all a training run needs.)"""
    ops = get_ops("unit")
    x = tf.ones((64, 256))
    first, again = ops.dropout(x, 0.8, SEED), ops.dropout(x, 0.8, SEED)
    other = ops.dropout(x, 0.8, SEED + tf.constant([0, 1]))
    compiled = tf.function(lambda v, s: ops.dropout(v, 0.8, s), jit_compile=True)
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    np.testing.assert_array_equal(compiled(x, SEED).numpy(), compiled(x, SEED).numpy())
    assert (first.numpy() != other.numpy()).mean() > 0.2  # independent masks differ a lot
    kept = compiled(tf.ones((1000, 1000)), SEED).numpy() != 0  # XLA's draws: the same rate
    assert abs(kept.mean() - 0.8) < 4 * np.sqrt(0.8 * 0.2 / N)
    assert ops.dropout(x, 1.0, SEED) is x  # keep 1: no op at all


def _model(kind: str, unit: bool, keep: float, **kwargs: Any) -> CharLM:
    settings = model_settings(kind, seed=3, **kwargs)
    if unit:
        settings = unit_scaled(settings)
    return CharLM(dataclasses.replace(settings, dropout_keep_probability=keep))


@pytest.mark.parametrize("unit", [False, True])
def test_dropout_acts_only_while_training(unit: bool) -> None:
    batch = random_batch(1, 4, 32, np.random.default_rng(0))
    tokens, mask = batch["tokens"][0], batch["mask"][0]
    plain, dropped = _model("attention", unit, 1.0), _model("attention", unit, 0.7)
    dropped.set_weight_arrays(plain.get_weight_arrays())
    reference = plain(tokens, mask)["loss"].numpy()
    # Keep 1 trains as the model without dropout; p < 1 evaluates like it, trains differently.
    assert plain(tokens, mask, training=True, seed=SEED)["loss"].numpy() == reference
    assert dropped(tokens, mask)["loss"].numpy() == reference
    noisy = dropped(tokens, mask, training=True, seed=SEED)["loss"].numpy()
    assert noisy != reference
    assert dropped(tokens, mask, training=True, seed=SEED)["loss"].numpy() == noisy
    with pytest.raises(ValueError, match="needs a seed"):
        dropped(tokens, mask, training=True)


def test_a_unit_scaled_model_with_dropout_stays_at_unit_scale() -> None:
    """The trunk output's RMS at init with p = 0.9 is within 10% of the one without dropout
    (the variance-preserving rule; inverted dropout would add ~5% per site, compounding)."""
    batch = random_batch(1, 8, 64, np.random.default_rng(1))
    tokens = tf.constant(batch["tokens"][0])
    without = _model("attention", True, 1.0, hidden_size=64, depth=4)
    with_dropout = _model("attention", True, 0.9, hidden_size=64, depth=4)
    with_dropout.set_weight_arrays(without.get_weight_arrays())
    rms = [
        float(tf.sqrt(tf.reduce_mean(tf.square(m.hidden_states(tokens, True, SEED)))))
        for m in (without, with_dropout)
    ]
    assert 0.8 < rms[0] < 1.25
    assert rms[1] == pytest.approx(rms[0], rel=0.1)


def _trainer(model: CharLM, parts: int = 1, xla: bool = False) -> Trainer:
    # Without XLA by default: the same compiled loop, a fraction of the compile time.
    settings = TrainingSettings(
        optimiser=AdamWSettings(learning_rate=1e-3), accumulation_steps=parts
    )
    return Trainer(model, settings, make_execution(xla), model.parameters, seed=5)


@pytest.mark.parametrize(
    "unit,xla", [(False, False), (True, False), pytest.param(True, True, marks=pytest.mark.slow)]
)
def test_dropout_training_is_reproducible_and_resumes_exactly(unit: bool, xla: bool) -> None:
    """Four steps in one compiled call equal two calls of two; and a trainer rebuilt from the
    first two steps' weights and state continues exactly (the masks depend on the step)."""
    batch = random_batch(4, 4, 32, np.random.default_rng(2))
    half = [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]

    whole_model = _model("attention", unit, 0.8)
    whole = _trainer(whole_model, xla=xla).train(batch)["loss"]
    start = _model("attention", unit, 0.8)  # the same seed: the same initial weights
    first = _trainer(start, xla=xla)
    losses = list(first.train(half[0])["loss"])
    resumed_model = _model("attention", unit, 0.8)
    resumed_model.set_weight_arrays(start.get_weight_arrays())
    resumed = _trainer(resumed_model, xla=xla)
    resumed.set_state_arrays(first.state_arrays())
    losses += list(resumed.train(half[1])["loss"])
    np.testing.assert_array_equal(losses, whole)
    for name, value in whole_model.get_weight_arrays().items():
        np.testing.assert_array_equal(resumed_model.get_weight_arrays()[name], value, name)
    # ...and dropout is on: without it the same steps give other losses.
    no_dropout = _trainer(_model("attention", unit, 1.0), xla=xla).train(batch)["loss"]
    assert not np.array_equal(no_dropout, whole)


def test_accumulated_parts_draw_different_masks() -> None:
    """Each micro-batch of a step has its own stream: two parts of identical sequences get
    different masks, so their losses differ (the same seed would make them equal)."""
    row = random_batch(1, 1, 32, np.random.default_rng(3))
    batch = {k: np.repeat(v, 2, axis=1) for k, v in row.items()}  # (1, 2, 32): equal rows
    trainer = _trainer(_model("attention", True, 0.8), parts=2)
    parts = [
        trainer._part_gradients(
            tf.constant(batch["tokens"][0][i : i + 1]), tf.constant(batch["mask"][0][i : i + 1]), i
        )[0]["loss"].numpy()
        for i in range(2)
    ]
    assert parts[0] != parts[1]


def test_bad_keep_probabilities_are_refused() -> None:
    for keep in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="dropout_keep_probability must be in"):
            dataclasses.replace(
                model_settings("attention"), dropout_keep_probability=keep
            ).validate()
