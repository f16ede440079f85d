"""Dynamic loss scaling: overflowing steps are skipped (no update), the scale shrinks, grows
after a run of finite steps, and its state is checkpointed."""

import numpy as np
import pytest
from conftest import VOCAB, make_execution, model_settings

from scmm.models import CharLM
from scmm.training import AdamWSettings, Trainer, TrainingSettings


def make_trainer(settings: TrainingSettings, dtype: str = "float32") -> Trainer:
    model = CharLM(model_settings("conv", seed=4, dtype=dtype))
    return Trainer(model, settings, make_execution(xla=True))


def batch(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (steps, 2, 16))
    return {"tokens": tokens, "mask": np.ones(tokens.shape, bool)}


def test_overflowing_steps_are_skipped_and_the_scale_recovers() -> None:
    # In float16, a 2^32 loss scale overflows the gradients (max 65504): inf is injected until
    # the scale has come down to about 2^21.
    settings = TrainingSettings(
        loss_scale=2.0**32,
        loss_scaling="dynamic",
        loss_scale_growth_interval=3,
        optimiser=AdamWSettings(learning_rate=2**-6),
    )
    trainer = make_trainer(settings, dtype="float16")
    before = trainer.model.get_weight_arrays()
    first = trainer.train(batch(1))
    assert first["skipped"].tolist() == [1.0] and np.isfinite(first["loss"]).all()
    after = trainer.model.get_weight_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # no update at all
    assert trainer.step == 0 and float(trainer.loss_scaler.scale.numpy()) == 2.0**31
    results = trainer.train(batch(24, seed=1))
    skipped, scales = results["skipped"], results["loss_scale"]
    applied = np.flatnonzero(skipped == 0)
    assert skipped[:12].sum() >= 5
    assert applied.size >= 8
    assert trainer.step == applied.size
    # The rule, step by step: halve on a skip; double after 3 consecutive finite steps.
    expected, good = [2.0**31], 0
    for was_skipped in skipped[:-1]:
        if was_skipped:
            expected.append(max(expected[-1] / 2, 1.0))
            good = 0
        else:
            good += 1
            expected.append(expected[-1] * 2 if good == 3 else expected[-1])
            good = 0 if good == 3 else good
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
    assert np.isfinite(results["loss"]).all() and results["loss"][-1] < results["loss"][0]
    weights = trainer.model.get_weight_arrays()
    assert all(np.isfinite(v).all() for v in weights.values())


@pytest.mark.slow  # ~11 s; test_training's loss-scale test checks unchanged updates by default
def test_static_scale_never_skips_and_matches_an_unscaled_run() -> None:
    plain = make_trainer(TrainingSettings(optimiser=AdamWSettings(learning_rate=2**-6)))
    scaled = make_trainer(
        TrainingSettings(loss_scale=1024.0, optimiser=AdamWSettings(learning_rate=2**-6))
    )
    a, b = plain.train(batch(4)), scaled.train(batch(4))
    assert b["skipped"].tolist() == [0.0] * 4 and b["loss_scale"].tolist() == [1024.0] * 4
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    assert plain.state_arrays().keys() == scaled.state_arrays().keys()


def test_dynamic_state_is_checkpointed() -> None:
    settings = TrainingSettings(loss_scale=2.0**20, loss_scaling="dynamic")
    trainer = make_trainer(settings)
    trainer.train(batch(3))
    state = trainer.state_arrays()
    assert {"loss_scale/scale", "loss_scale/good_steps"} <= set(state)
    other = make_trainer(settings)
    other.set_state_arrays(state)
    assert float(other.loss_scaler.scale.numpy()) == float(state["loss_scale/scale"])
    assert int(other.loss_scaler.good_steps.numpy()) == int(state["loss_scale/good_steps"]) == 3


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss_scale_factor", 1.0, "loss_scale_factor must be > 1"),
        ("loss_scale_growth_interval", 0, "loss_scale_growth_interval must be >= 1"),
    ],
)
def test_settings_are_validated(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingSettings(**{field: value}).validate()  # type: ignore[arg-type]
