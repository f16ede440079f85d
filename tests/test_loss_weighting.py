"""Loss weighting (``model.loss``): Graphcore's inverse-frequency cross-entropy with an
autoregression offset, and the unweighted metrics beside it (xentropy, perplexity, accuracy).

References are numpy in float64: the weighted loss is sum(w CE) / (number of scored targets),
w = 1 / (count of the target among its own sequence's scored targets), as in
``../shared/reference/sparse-lm-rigl.md`` section 3.2; the offset clears the first positions of
every sequence. Perplexity is exp of the token-weighted mean cross-entropy (at evaluation over
all batches, not a mean of per-batch perplexities); accuracy is top-1 over scored targets.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import VOCAB, make_execution, model_settings, unit_scaled
from experiment_helpers import grammar_text, write_grammar_folder

from scmm.experiments import cli
from scmm.experiments.runner import Experiment
from scmm.experiments.settings import SettingsError
from scmm.experiments.trackers import WandbTracker
from scmm.models import CharLM
from scmm.models.settings import LossSettings
from scmm.ops import get_ops
from scmm.ops.kernels import inverse_frequency_weights
from scmm.schemes import UmupScalingSettings
from scmm.training import Trainer, TrainingSettings

# numpy references ----------------------------------------------------------------------------


def np_scored(mask: np.ndarray, offset: int) -> np.ndarray:
    return mask & (np.arange(mask.shape[-1]) >= offset)


def np_weights(tokens: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """1 / (count of tokens[b, i] among sequence b's scored targets), 0 where not scored."""
    weights = np.zeros(tokens.shape)
    for b in range(tokens.shape[0]):
        window = tokens[b][scored[b]]
        for i in np.flatnonzero(scored[b]):
            weights[b, i] = 1.0 / np.sum(window == tokens[b, i])
    return weights


def np_metrics(
    logits: np.ndarray,
    tokens: np.ndarray,
    mask: np.ndarray,
    offset: int = 0,
    weighting: str = "none",
    mult: float = 1.0,
) -> dict[str, float]:
    scored = np_scored(mask, offset)
    z = mult * logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
    n = scored.sum()
    w = np_weights(tokens, scored) if weighting == "inverse_frequency" else scored.astype(float)
    xentropy = ce[scored].sum() / n
    return {
        "loss": float((w * ce)[scored].sum() / n),
        "n_tokens": float(n),
        "xentropy": float(xentropy),
        "perplexity": math.exp(xentropy),
        "accuracy": float((logits.argmax(-1) == tokens)[scored].sum() / n),
    }


def test_inverse_frequency_weights_count_within_each_sequence_and_window() -> None:
    tokens = np.array([[1, 2, 1, 3, 1, 2, 0, 1], [4, 4, 4, 4, 5, 5, 6, 4]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1, 1, 1]], bool)
    scored = np_scored(mask, 2)  # offset 2: positions 0 and 1 are never counted
    got = inverse_frequency_weights(tf.constant(tokens), tf.constant(scored), VOCAB).numpy()
    # Row 0 scores [1, 3, 1, 2, 0] at positions 2..6 (position 7 is masked): the two 1s weigh
    # 1/2 (the 1s at positions 0 and 7 do not count), the rest 1.
    # Row 1 scores [4, 5, 5, 6, 4] at positions 3..7: 4s and 5s weigh 1/2, the 6 1.
    expected = np.array(
        [[0, 0, 0.5, 1, 0.5, 1, 1, 0], [0, 0, 0, 0.5, 0.5, 0.5, 1, 0.5]], np.float32
    )
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, np_weights(tokens, scored).astype(np.float32))


def _model(scheme: str, loss: LossSettings, vocab_size: int = VOCAB) -> CharLM:
    settings = model_settings("attention", vocab_size=vocab_size, seed=2)
    if scheme == "unit":
        settings = unit_scaled(settings)
    elif scheme == "umup":
        settings = unit_scaled(settings)
        settings = dataclasses.replace(settings, scaling=UmupScalingSettings(loss_softmax=2.0))
    return CharLM(dataclasses.replace(settings, loss=loss))


def _batch(seed: int = 0, shape: tuple[int, int] = (3, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 5, shape).astype(np.int32)  # 5 of 16 classes: many repeats
    tokens[0, 10:20] = 3  # a run of one token
    mask = np.ones(shape, bool)
    mask[1, 15:] = False  # a padded tail
    mask[2, ::3] = False  # holes
    return tokens, mask


@pytest.mark.parametrize("scheme", ["regular", "unit", "umup"])
@pytest.mark.parametrize("weighting,offset", [("none", 0), ("none", 5), ("inverse_frequency", 5)])
def test_model_outputs_match_numpy(scheme: str, weighting: str, offset: int) -> None:
    model = _model(scheme, LossSettings(weighting, offset))  # type: ignore[arg-type]
    tokens, mask = _batch()
    logits = model.logits(tf.constant(tokens)).numpy()
    out = {k: float(v) for k, v in model(tf.constant(tokens), tf.constant(mask)).items()}
    mult = 2.0 if scheme == "umup" else 1.0  # u-mup's loss_softmax: the CE of 2 x logits
    expected = np_metrics(logits, tokens, mask, offset, weighting, mult)
    assert out["n_tokens"] == expected["n_tokens"]
    for name in ("loss", "xentropy", "perplexity", "accuracy"):
        assert out[name] == pytest.approx(expected[name], rel=1e-5), name
    if weighting == "inverse_frequency":
        assert out["loss"] < 0.8 * out["xentropy"]  # the repeats are down-weighted


@pytest.mark.parametrize("scheme", ["regular", "unit"])
def test_weighted_logits_gradient_is_the_weights_times_the_unweighted_one(scheme: str) -> None:
    tokens, mask = _batch(1)
    offset = 4
    scored = np_scored(mask, offset)
    grads = {}
    for weighting in ("none", "inverse_frequency"):
        model = _model(scheme, LossSettings(weighting, offset))
        logits = model.logits(tf.constant(tokens))
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = model.loss_outputs(logits, tf.constant(tokens), tf.constant(mask))["loss"]
        grads[weighting] = tape.gradient(loss, logits).numpy().astype(np.float64)
    w = np_weights(tokens, scored)
    np.testing.assert_allclose(
        grads["inverse_frequency"], w[..., None] * grads["none"], rtol=1e-5, atol=1e-9
    )
    assert not grads["inverse_frequency"][~scored].any()  # unscored positions: exactly zero


# none + offset 0 is today's loss, bit for bit -------------------------------------------------


@pytest.mark.parametrize("scheme", ["regular", "unit", "umup"])
def test_none_and_offset_0_is_the_unweighted_op_bit_for_bit(scheme: str) -> None:
    """The default loss is the op set's cross_entropy(logits, tokens, mask), as before the
    weighting existed: value, count and logits gradient identical, under XLA too."""
    model = _model(scheme, LossSettings())
    tokens, mask = (tf.constant(a) for a in _batch(2))
    ops = get_ops(model.scheme.ops)

    @tf.function(jit_compile=True)
    def both(logits: tf.Tensor) -> tuple[Any, ...]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            new = model.loss_outputs(logits, tokens, mask)
            old_loss, old_count = ops.cross_entropy(logits, tokens, mask)
        return (
            new["loss"],
            new["n_tokens"],
            tape.gradient(new["loss"], logits),
            old_loss,
            old_count,
            tape.gradient(old_loss, logits),
        )

    new_loss, new_count, new_grad, old_loss, old_count, old_grad = both(model.logits(tokens))
    assert new_loss.numpy().tobytes() == old_loss.numpy().tobytes()
    assert new_count.numpy() == old_count.numpy()
    assert new_grad.numpy().tobytes() == old_grad.numpy().tobytes()
    out = model(tokens, mask)
    assert float(out["xentropy"]) == float(out["loss"])  # the loss itself, unweighted


# Unit scale of the weighted loss's backward -----------------------------------------------------


def _logits_gradient_rms(scheme: str, weighting: str, tokens: np.ndarray, vocab: int) -> float:
    model = _model(scheme, LossSettings(weighting), vocab_size=vocab)  # type: ignore[arg-type]
    mask = np.ones(tokens.shape, bool)
    mask[:, :32] = False  # the runs' training windows: 32 positions of context only
    logits = model.logits(tf.constant(tokens))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = model.loss_outputs(logits, tf.constant(tokens), tf.constant(mask))["loss"]
    grad = tape.gradient(loss, logits).numpy()
    return float(np.sqrt(np.mean(grad[mask] ** 2)))


def test_unit_scaled_weighted_loss_shrinks_the_logits_gradient_by_rms_of_the_weights() -> None:
    """Not rescaled (see ``scmm.uscale.softmax_cross_entropy``): each scored token's logits
    gradient is w times the unit one, so its rms over scored positions is rms(w).

    Measured at init (unit scheme, hidden 32, 8 x 256 characters, last 224 scored, vocab 96):
    weighting none 1.004 (grammar text) / 1.004 (random tokens); inverse_frequency
    0.199 / 0.447, with rms(w) 0.199 / 0.445. Windows of real English text (224 scored
    characters of the embedded corpus, 64 windows) give rms(w) 0.245, so a unit-scaled
    weighted run's logits gradients sit near 1/4.
    """
    vocab = 96
    text = grammar_text(8 * 256, seed=5)
    chars = sorted(set(text))
    samples = {
        "grammar": np.array([chars.index(c) for c in text], np.int32).reshape(8, 256),
        "random": np.random.default_rng(0).integers(0, vocab, (8, 256)).astype(np.int32),
    }
    measured = {"grammar": (1.004, 0.199), "random": (1.004, 0.447)}
    for name, tokens in samples.items():
        mask = np.ones(tokens.shape, bool)
        mask[:, :32] = False
        w = np_weights(tokens, mask)[mask]
        unweighted = _logits_gradient_rms("unit", "none", tokens, vocab)
        weighted = _logits_gradient_rms("unit", "inverse_frequency", tokens, vocab)
        assert unweighted == pytest.approx(measured[name][0], abs=0.02), name
        assert weighted == pytest.approx(measured[name][1], abs=0.02), name
        assert weighted / unweighted == pytest.approx(np.sqrt(np.mean(w**2)), rel=0.05), name


# Evaluation: token-weighted, perplexity of the mean ----------------------------------------------


def test_evaluate_aggregates_the_metrics_token_weighted() -> None:
    model = _model("regular", LossSettings("inverse_frequency", 3))
    trainer = Trainer(model, TrainingSettings(), make_execution(xla=True))
    rng = np.random.default_rng(4)
    batches = []
    for count in (20, 6, 13):  # scored positions per sequence differ per batch
        tokens = rng.integers(0, 6, (4, 20)).astype(np.int32)
        batches.append({"tokens": tokens, "mask": np.broadcast_to(np.arange(20) < count, (4, 20))})
    result = trainer.evaluate(iter(batches))
    per_batch = []
    for batch in batches:
        logits = model.logits(tf.constant(batch["tokens"])).numpy()
        per_batch.append(np_metrics(logits, batch["tokens"], batch["mask"], 3, "inverse_frequency"))
    n = np.array([m["n_tokens"] for m in per_batch])
    assert result["n_tokens"] == n.sum() == 4 * (17 + 3 + 10)

    def mean(name: str) -> float:
        return float(np.sum([m[name] for m in per_batch] * n) / n.sum())

    for name in ("loss", "xentropy", "accuracy"):
        assert result[name] == pytest.approx(mean(name), rel=1e-5), name
    assert result["perplexity"] == pytest.approx(math.exp(mean("xentropy")), rel=1e-5)
    assert result["bpc"] == pytest.approx(result["xentropy"] / math.log(2), rel=1e-12)
    # exp of the mean, not the mean of per-batch perplexities (they differ for these batches)
    assert abs(result["perplexity"] - np.mean([m["perplexity"] for m in per_batch])) > 1e-3


# A short run writes the metrics ---------------------------------------------------------------

_TINY = {
    "data.sequence_length": "32",
    "data.overlap_length": "4",
    "model.hidden_size": "16",
    "model.depth": "1",
    "model.sequence.type": "conv",
    "model.sequence.kernel_size": "3",
    "model.sequence.groups": "2",
    "model.token.type": "none",
    "training.batch_sequences": "2",
    "training.steps": "2",
    "training.valid_interval": "2",
    "training.iterations_per_loop": "1",
    "output.wandb": "off",
    "output.progress": "off",
    "output.train_eval_chars": "256",
    "seed": "3",
}


def _argv(data: Path, **extra: str) -> list[str]:
    pairs = {**_TINY, "data.path": str(data), **extra}
    return [item for key, value in pairs.items() for item in (f"--{key}", value)]


def test_short_run_writes_perplexity_and_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    write_grammar_folder(data, train_chars=4000, eval_chars=600)
    out = tmp_path / "run"
    argv = _argv(
        data,
        **{"model.loss.weighting": "inverse_frequency", "model.loss.autoregression_offset": "6"},
    )
    invocation = cli.parse([*argv, "--out", str(out)])
    assert invocation is not None
    assert invocation.settings.model.loss == LossSettings("inverse_frequency", 6)
    assert Experiment(invocation.settings, str(out)).run() == 0

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train_step"]
    assert len(steps) == 2
    for record in steps:
        assert record["tokens"] == 2 * (32 - 6)  # offset 6 > overlap 4: 26 scored per sequence
        assert record["loss"] < record["xentropy"]
        assert record["perplexity"] == pytest.approx(math.exp(record["xentropy"]), rel=1e-12)
        assert record["bpc"] == pytest.approx(record["xentropy"] / math.log(2), rel=1e-12)
        assert 0.0 <= record["accuracy"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    for split in ("train", "valid", "test"):
        (evaluation,) = [r for r in records if r["kind"] == f"eval_{split}"]
        for name in ("loss", "bpc", "xentropy", "perplexity", "accuracy"):
            assert summary[f"{split}_{name}"] == evaluation[name], (split, name)
        assert evaluation["perplexity"] == pytest.approx(math.exp(evaluation["xentropy"]))
        assert evaluation["bpc"] == pytest.approx(evaluation["xentropy"] / math.log(2))
        assert evaluation["loss"] < evaluation["xentropy"]
    assert summary["best_valid_loss"] == summary["valid_xentropy"]
    assert summary["last_train"]["perplexity"] == steps[-1]["perplexity"]

    # WandB mirrors every numeric field of these records and of the summary.
    run = _FakeWandbRun()
    tracker = WandbTracker.__new__(WandbTracker)
    tracker.run = run  # type: ignore[assignment]
    for record in records:
        tracker.log(record)
    tracker.summary(summary)
    for kind in ("train_step", "eval_train", "eval_valid", "eval_test"):
        for name in ("xentropy", "perplexity", "accuracy"):
            assert f"{kind}/{name}" in run.logged, (kind, name)
    for split in ("train", "valid", "test"):
        assert run.summary[f"{split}_perplexity"] == summary[f"{split}_perplexity"]
        assert run.summary[f"{split}_accuracy"] == summary[f"{split}_accuracy"]


class _FakeWandbRun:
    """What WandbTracker calls on a run: log(metrics, step) and the summary mapping."""

    def __init__(self) -> None:
        self.logged: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def log(self, metrics: dict[str, Any], step: int) -> None:
        del step
        self.logged.update(metrics)


# Bad values are refused before compute ----------------------------------------------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            {"model.loss.autoregression_offset": "-1"},
            "model.loss.autoregression_offset must be an integer >= 0, got -1",
        ),
        (
            {"model.loss.autoregression_offset": "32"},
            "model.loss.autoregression_offset=32 must be < data.sequence_length=32",
        ),
        ({"model.loss.weighting": "inverse"}, "model.loss.weighting"),
    ],
)
def test_bad_loss_settings_are_refused_with_the_field_and_value(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    data = tmp_path / "data"
    write_grammar_folder(data, train_chars=2000, eval_chars=200)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        invocation = cli.parse([*_argv(data, **extra), "--out", str(out)])
        assert invocation is not None
        invocation.settings.validate()
    assert message in str(info.value)
    if "weighting" in extra:
        assert isinstance(info.value, SettingsError)
        assert "'inverse'" in str(info.value) and "inverse_frequency" in str(info.value)
    assert not out.exists()  # nothing ran


@pytest.mark.parametrize(
    "loss,message",
    [
        (LossSettings(autoregression_offset=-2), "autoregression_offset must be an integer >= 0"),
        (LossSettings(weighting="idf"), "model.loss.weighting must be one of none,"),  # type: ignore[arg-type]
    ],
)
def test_bad_loss_settings_built_in_python_are_refused(loss: LossSettings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CharLM(dataclasses.replace(model_settings(), loss=loss))


def test_an_offset_past_the_model_input_is_refused() -> None:
    model = _model("regular", LossSettings(autoregression_offset=8))
    tokens = tf.zeros((2, 8), tf.int32)
    with pytest.raises(ValueError, match="autoregression_offset=8 must be < the sequence length 8"):
        model(tokens, tf.ones((2, 8), tf.bool))
