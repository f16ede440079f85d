"""Gradient accumulation: M micro-batches give the full-batch update, for every scheme.

The unit-scaled and u-mup losses are sum-reduced in their backward pass, and their parameter
gradients are scaled by the rows of the batch; without ``batch_split`` a part's rows are the
local ones and the parts' mean is 1/sqrt(M) of the full-batch gradient (shown below), with it
the parts add up to the full-batch gradient exactly.
"""

import dataclasses
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_execution, model_settings, random_batch, unit_scaled

from scmm.models import CharLM, ModelSettings
from scmm.schemes import UmupScalingSettings
from scmm.training import AdamWSettings, SGDMSettings, Trainer, TrainingSettings
from scmm.training.accumulation import accumulated_gradients, combine_outputs
from scmm.uscale import batch_parts, batch_split, global_rows

SEQUENCES, LENGTH = 8, 16


def _settings(scheme: str, kind: str = "attention") -> ModelSettings:
    base = model_settings(kind)
    if scheme == "unit":
        return unit_scaled(base)
    if scheme == "umup":
        return dataclasses.replace(unit_scaled(base), scaling=UmupScalingSettings())
    return base


def _trainer(scheme: str, parts: int, optimiser: Any, **training: Any) -> Trainer:
    settings = TrainingSettings(
        batch_sequences=SEQUENCES,
        accumulation_steps=parts,
        optimiser=optimiser,
        **training,
    )
    return Trainer(CharLM(_settings(scheme)), settings, make_execution())


def _gradients(trainer: Trainer, tokens: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """The combined gradient of one step's batch, through the trainer's own path."""
    parts = trainer.settings.accumulation_steps
    tokens_t, mask_t = tf.constant(tokens), tf.constant(mask)
    if parts == 1:
        _, grads = trainer._part_gradients(tokens_t, mask_t)
    else:
        _, grads = accumulated_gradients(
            trainer._part_gradients, tokens_t, mask_t, parts, trainer.model.loss_reduction
        )
    return [tf.convert_to_tensor(g).numpy() for g in grads]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("scheme", ["regular", "unit", "umup"])
@pytest.mark.parametrize("parts", [2, 4])
def test_the_accumulated_gradient_is_the_full_batch_gradient(scheme: str, parts: int) -> None:
    batch = random_batch(1, SEQUENCES, LENGTH, np.random.default_rng(0))
    tokens, mask = batch["tokens"][0], batch["mask"][0]
    full = _gradients(_trainer(scheme, 1, SGDMSettings()), tokens, mask)
    split = _gradients(_trainer(scheme, parts, SGDMSettings()), tokens, mask)
    for f, s in zip(full, split):
        np.testing.assert_allclose(s, f, rtol=2e-5, atol=2e-6 * _rms(f))
        assert _rms(s) / _rms(f) == pytest.approx(1.0, abs=1e-4)


def test_without_the_global_row_count_unit_parts_average_to_one_over_sqrt_m() -> None:
    """The defect the batch split removes (wave-2 facts: 0.7071 for M = 2)."""
    batch = random_batch(1, SEQUENCES, LENGTH, np.random.default_rng(1))
    tokens, mask = batch["tokens"][0], batch["mask"][0]
    trainer = _trainer("unit", 1, SGDMSettings())
    full = _gradients(trainer, tokens, mask)
    halves = [_gradients(trainer, tokens[i::2], mask[i::2]) for i in range(2)]  # no split
    ratios = [_rms((a + b) / 2) / _rms(f) for a, b, f in zip(*halves, full)]
    assert np.median(ratios) == pytest.approx(2**-0.5, rel=0.05)


def test_regular_parts_with_unequal_token_counts_are_weighted_by_their_tokens() -> None:
    rng = np.random.default_rng(2)
    mask = np.ones((SEQUENCES, LENGTH), bool)
    mask[:4, : LENGTH // 2] = False  # the first micro-batch scores half as many tokens
    batch = random_batch(1, SEQUENCES, LENGTH, rng, mask=mask[None])
    tokens = batch["tokens"][0]
    full = _gradients(_trainer("regular", 1, SGDMSettings()), tokens, mask)
    split = _gradients(_trainer("regular", 2, SGDMSettings()), tokens, mask)
    for f, s in zip(full, split):
        np.testing.assert_allclose(s, f, rtol=2e-5, atol=2e-6 * _rms(f))


# Two compiled trainers per case (10-20 s each on 2 cores): all under --slow (the default
# suite checks the gradients themselves above, for every scheme).
ADAM, SGDM = AdamWSettings(learning_rate=2**-8), SGDMSettings()
STEP_CASES = [
    pytest.param(scheme, optimiser, marks=pytest.mark.slow)
    for scheme in ("regular", "unit", "umup")
    for optimiser in (ADAM, SGDM)
]


@pytest.mark.parametrize(("scheme", "optimiser"), STEP_CASES)
def test_three_accumulated_steps_reach_the_full_batch_weights(scheme: str, optimiser: Any) -> None:
    batch = random_batch(3, SEQUENCES, LENGTH, np.random.default_rng(3))
    results = {}
    for parts in (1, 2):
        trainer = _trainer(scheme, parts, optimiser, iterations_per_loop=3)
        metrics = trainer.train(batch)
        results[parts] = (metrics, [v.numpy() for v in trainer.variables])
    (one, w_one), (two, w_two) = results[1], results[2]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6)
    np.testing.assert_allclose(two["n_tokens"], one["n_tokens"])
    for a, b in zip(w_one, w_two):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_sum_mode_is_m_times_the_mean() -> None:
    batch = random_batch(1, SEQUENCES, LENGTH, np.random.default_rng(4))
    tokens, mask = tf.constant(batch["tokens"][0]), tf.constant(batch["mask"][0])
    trainer = _trainer("regular", 2, SGDMSettings())
    _, mean = accumulated_gradients(trainer._part_gradients, tokens, mask, 2, "mean", "mean")
    _, total = accumulated_gradients(trainer._part_gradients, tokens, mask, 2, "mean", "sum")
    for m, s in zip(mean, total):
        np.testing.assert_allclose(tf.convert_to_tensor(s), 2 * tf.convert_to_tensor(m), rtol=1e-6)


def test_outputs_combine_token_weighted() -> None:
    parts = [
        {"loss": tf.constant(2.0), "n_tokens": tf.constant(10.0), "hidden_rms": tf.constant(1.0)},
        {"loss": tf.constant(4.0), "n_tokens": tf.constant(30.0), "hidden_rms": tf.constant(3.0)},
    ]
    combined = combine_outputs(parts)
    assert float(combined["loss"]) == pytest.approx((2 * 10 + 4 * 30) / 40)
    assert float(combined["n_tokens"]) == 40
    assert float(combined["hidden_rms"]) == pytest.approx(np.sqrt((1 + 9) / 2))


def test_the_batch_split_is_scoped_and_checked() -> None:
    assert batch_parts() == 1 and global_rows(6) == 6
    with batch_split(4):
        assert batch_parts() == 4 and global_rows(6) == 24
        assert float(global_rows(tf.constant(1.5))) == 6.0
    assert batch_parts() == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="batch_split needs a whole number"):
            with batch_split(bad):  # type: ignore[arg-type]
                pass


def test_bad_accumulation_settings_are_refused_before_compute() -> None:
    with pytest.raises(ValueError, match="accumulation_steps 3 does not divide.*batch_sequences 8"):
        TrainingSettings(batch_sequences=8, accumulation_steps=3).validate()
    with pytest.raises(ValueError, match="accumulation_steps must be >= 1, got 0"):
        TrainingSettings(accumulation_steps=0).validate()
    with pytest.raises(ValueError, match="accumulation_mode must be 'mean' or 'sum', got 'avg'"):
        TrainingSettings(accumulation_mode="avg").validate()  # type: ignore[arg-type]
