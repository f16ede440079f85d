"""Calibrated weight-gradient scales (scmm.uscale.calibration) and their place in a run.

The paper-model checks use the char-LM shapes (batch 8 x 256, hidden 128, depth 8; RNN depth
2). Each weight-gradient std is over >= 128 values (the smallest vectors), so the sampling
error of one record is ~6%; the bands below are far wider than that.
"""

import dataclasses
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import VOCAB, model_settings, unit_scaled
from test_uscale_models import PAPER_KINDS, paper_model

from scmm.analysis import ScaleRecord, collect_scales
from scmm.datasets.corpus import embedded_corpus
from scmm.experiments import checkpoints, main
from scmm.models import CharLM, ResidualSettings
from scmm.uscale.calibration import calibrate_weight_gradients


def random_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, 107, (8, 256)), "mask": np.ones((8, 256), bool)}


@functools.lru_cache(maxsize=1)
def corpus_start() -> str:
    return embedded_corpus()["train"][: 8 * 256 * 2]


def text_batch(index: int) -> dict[str, np.ndarray]:
    """The index-th 8 x 256 characters of the embedded corpus (ids by sorted character)."""
    text = corpus_start()
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    assert len(vocab) <= 107
    chunk = text[index * 2048 : (index + 1) * 2048]
    tokens = np.array([vocab[c] for c in chunk]).reshape(8, 256)
    return {"tokens": tokens, "mask": np.ones((8, 256), bool)}


def scales(model: CharLM, batch: dict[str, np.ndarray]) -> list[ScaleRecord]:
    """Scale records with the model's gradient factors applied (what the optimiser sees)."""
    return collect_scales(model, batch, gradient_factors=model.parameters.gradient_factors())


def weight_gradient_records(model: CharLM, batch: dict[str, np.ndarray]) -> list[ScaleRecord]:
    return [r for r in scales(model, batch) if r.pass_ == "weight_gradient"]


@pytest.mark.parametrize(
    "kind,data",
    # Random tokens for attention (pre) and RNN in the default suite; the rest under --slow.
    [
        pytest.param(
            kind,
            data,
            marks=[pytest.mark.slow] * (kind in ("attention-post", "conv") or data == "text"),
        )
        for kind in PAPER_KINDS
        for data in ("random", "text")
    ],
)
def test_calibrated_weight_gradients_are_unit_on_a_fresh_batch(kind: str, data: str) -> None:
    """Calibrate on one batch, measure on another: every parameter's gradient near unit.

    Without calibration the same gradients measure 0.5-6.5 on random tokens and 1-20 on text
    (rows^-1/2 assumes independent rows; see scmm.uscale.calibration). Calibrated, measured
    on the second batch: RMS 0.77-1.47 and std 0.50-1.47 over all four models. The std
    can sit below the RMS only for a vector whose gradient is mostly one shared offset (the
    final norm's gain on random tokens, 0.50-0.69), so vectors get std >= 0.4.
    """
    batches = (
        (random_batch(0), random_batch(1)) if data == "random" else (text_batch(0), text_batch(1))
    )
    model = paper_model(kind, True)
    before = {r.name: r.rms for r in weight_gradient_records(model, batches[1])}
    factors = calibrate_weight_gradients(model, batches[0], model.parameters)
    assert max(before.values()) > 2.0  # the analytic scales really are off on whole models
    records = weight_gradient_records(model, batches[1])
    assert len(records) == len(factors) >= 20
    for record in records:
        assert 2 / 3 <= record.rms <= 1.5, (record.name, record.rms)
        low = 0.5 if len(record.shape) >= 2 else 0.4
        assert low <= record.std <= 1.5, (record.name, record.std)


def small_unit_model() -> CharLM:
    settings = model_settings("attention", depth=2, hidden_size=64)
    settings = dataclasses.replace(
        settings, residual=ResidualSettings(norm="pre", weighting="mean")
    )
    return CharLM(unit_scaled(settings))


def small_batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(0, VOCAB, (4, 64)), "mask": np.ones((4, 64), bool)}


def test_calibration_changes_only_the_weight_gradients() -> None:
    """Forward values and activation gradients are bit-identical; each weight gradient is
    multiplied by exactly its factor, which makes it RMS 1 on the calibration batch."""
    model, batch = small_unit_model(), small_batch(0)
    before = {(r.pass_, r.name): r for r in scales(model, batch)}
    factors = calibrate_weight_gradients(model, batch, model.parameters)
    after = {(r.pass_, r.name): r for r in scales(model, batch)}
    assert before.keys() == after.keys()
    assert any(abs(math.log2(f)) > 0.5 for f in factors.values())
    for key, record in after.items():
        if key[0] == "weight_gradient":
            expected = before[key].rms * factors[key[1]]
            assert record.rms == pytest.approx(expected, rel=1e-5), key
            assert record.rms == pytest.approx(1.0, rel=1e-4), key
        else:
            assert (record.std, record.abs_max) == (before[key].std, before[key].abs_max), key
    # Calibrating again on the same batch changes nothing (factors compose).
    again = calibrate_weight_gradients(model, batch, model.parameters)
    assert again == pytest.approx(factors, rel=1e-4)


def test_factors_are_validated_by_name_and_value() -> None:
    table = small_unit_model().parameters
    factors = table.gradient_factors()
    assert set(factors.values()) == {1.0}
    name = next(iter(factors))
    with pytest.raises(ValueError, match="missing"):
        table.set_gradient_factors({k: v for k, v in factors.items() if k != name})
    with pytest.raises(ValueError, match="unknown.*nope"):
        table.set_gradient_factors({**factors, "nope": 1.0})
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=name):
            table.set_gradient_factors({**factors, name: bad})
    assert set(table.gradient_factors().values()) == {1.0}  # nothing half-applied
    table.set_gradient_factors({**factors, name: 0.25})
    assert table[name].gradient_factor == 0.25


@pytest.fixture(name="cache_env")
def fixture_cache_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path_factory.mktemp("scmm-cache")))


def train_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train_step"}


@pytest.mark.slow  # ~40 s: three subprocess runs; resume exactness is also in test_run_integrity
@pytest.mark.usefixtures("cache_env")
def test_runs_calibrate_store_factors_and_resume_exactly(tmp_path: Path) -> None:
    """A unit-scaled run calibrates before step 0 and checkpoints the factors. Resuming
    restores them (the continued run matches an uninterrupted one bit for bit), and under
    Adam a run without calibration trains the same up to float rounding."""
    common = [
        "--preset", "smoke", "--model.scaling.type", "unit", "--model.residual.weighting", "mean",
        "--seed", "5",
        "--execution.xla", "false", "--output.progress", "off", "--output.wandb", "off",
        "--training.iterations_per_loop", "4", "--training.valid_interval", "4",
    ]  # fmt: skip
    short, resumed, straight, analytic = (tmp_path / n for n in ("a", "b", "c", "d"))
    assert main([*common, "--training.steps", "4", "--out", str(short)]) == 0
    _, _, state = checkpoints.load(str(short / "checkpoints" / "last.npz"))
    stored = state["scheme"]["gradient_factors"]
    assert len(stored) >= 10 and min(stored.values()) < 0.5
    records = [json.loads(line) for line in (short / "log.jsonl").read_text().splitlines()]
    (calibration,) = [r for r in records if r["kind"] == "calibration"]
    assert calibration["parameters"] == len(stored)
    assert calibration["log2_factor_min"] == pytest.approx(math.log2(min(stored.values())))

    # Continue the short run to 8 steps (--resume keeps the folder: copy it first).
    resumed.mkdir()
    for path in short.rglob("*"):
        target = resumed / path.relative_to(short)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    assert main(["--resume", str(resumed), "--training.steps", "8"]) == 0
    assert main([*common, "--training.steps", "8", "--out", str(straight)]) == 0
    got, expected = train_losses(resumed), train_losses(straight)
    assert sorted(got) == sorted(expected) == [4, 8]
    assert got == expected

    off = ["--model.scaling.calibrate", "false"]
    assert main([*common, *off, "--training.steps", "8", "--out", str(analytic)]) == 0
    _, _, state = checkpoints.load(str(analytic / "checkpoints" / "last.npz"))
    assert set(state["scheme"]["gradient_factors"].values()) == {1.0}
    uncalibrated = train_losses(analytic)
    for step, loss in expected.items():
        assert uncalibrated[step] == pytest.approx(loss, rel=1e-3)
    # The factors really reached the optimiser: the weights differ (in float rounding only,
    # as Adam cancels a constant factor up to epsilon).
    calibrated_weights, _, _ = checkpoints.load(str(straight / "checkpoints" / "last.npz"))
    analytic_weights, _, _ = checkpoints.load(str(analytic / "checkpoints" / "last.npz"))
    assert any(
        not np.array_equal(calibrated_weights[k], analytic_weights[k]) for k in calibrated_weights
    )
    for key, value in calibrated_weights.items():
        np.testing.assert_allclose(analytic_weights[key], value, rtol=1e-3, atol=1e-5)
