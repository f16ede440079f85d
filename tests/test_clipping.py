"""Gradient clipping (scmm/training/clipping.py, ``training.clipping``): the pure function
against TensorFlow's clips and a numpy reference, and its place in the trainer (after
loss-scale unscaling, after the finiteness check, logged)."""

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_execution, model_settings, random_batch, unit_scaled

import scmm.training.trainer as trainer_module
from scmm.experiments import cli, main
from scmm.experiments.reporting import chunk_metrics
from scmm.models import CharLM
from scmm.ops.kernels import apply_gradient_factors
from scmm.training import (
    AdamWSettings,
    ClippingSettings,
    SGDMSettings,
    Trainer,
    TrainingSettings,
    clip_gradients,
)

SHAPES = [(5, 7), (16,), (3, 4, 2), (1,), (8, 8)]
# Scales spread the tensor norms around the thresholds used, so some are clipped, some not.
SCALES = [3.0, 0.05, 1.0, 10.0, 0.2]


def random_grads(seed: int = 0) -> list[tf.Tensor]:
    rng = np.random.default_rng(seed)
    return [
        tf.constant((s * rng.standard_normal(shape)).astype(np.float32))
        for shape, s in zip(SHAPES, SCALES)
    ]


def sparse_grad(seed: int, indices: list[int], rows: int = 9, width: int = 4) -> tf.IndexedSlices:
    values = np.random.default_rng(seed).standard_normal((len(indices), width)).astype(np.float32)
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(indices, tf.int64), tf.constant([rows, width], tf.int64)
    )


def dense(grad: Any) -> np.ndarray:
    return np.asarray(tf.convert_to_tensor(grad))


def clip(grads: list[Any], mode: str, threshold: float = 1.0) -> tuple[list[Any], dict]:
    out, metrics = clip_gradients(grads, ClippingSettings(mode=mode, threshold=threshold))  # type: ignore[arg-type]
    return out, {k: float(v) for k, v in metrics.items()}


def numpy_global_norm(grads: list[Any]) -> float:
    return math.sqrt(sum(float(np.sum(dense(g).astype(np.float64) ** 2)) for g in grads))


# The pure function --------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 4.0, 1e3])
def test_global_norm_equals_tf_clip_by_global_norm(threshold: float) -> None:
    """Bit for bit, with an IndexedSlices among the gradients (distinct indices)."""
    grads = [*random_grads(1), sparse_grad(2, [4, 0, 7])]
    expected, expected_norm = tf.clip_by_global_norm(grads, threshold)
    out, metrics = clip(grads, "global_norm", threshold)
    assert isinstance(out[-1], tf.IndexedSlices)
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(dense(got), dense(want))
    assert metrics["grad_norm"] == float(expected_norm)
    assert metrics["grad_norm"] == pytest.approx(numpy_global_norm(grads), rel=1e-6)
    assert set(metrics) == {"grad_norm"}


@pytest.mark.parametrize("threshold", [0.5, 4.0])
def test_norm_equals_tf_clip_by_norm_per_tensor(threshold: float) -> None:
    grads = [*random_grads(3), sparse_grad(4, [1, 8, 3])]
    out, metrics = clip(grads, "norm", threshold)
    for got, grad in zip(out, grads):
        np.testing.assert_array_equal(dense(got), dense(tf.clip_by_norm(grad, threshold)))
    norms = [np.linalg.norm(dense(g).astype(np.float64)) for g in grads]
    assert 0 < sum(n > threshold for n in norms) < len(grads)  # a mix, clipped and not
    assert metrics["clipped_fraction"] == pytest.approx(np.mean([n > threshold for n in norms]))
    assert metrics["grad_norm"] == pytest.approx(numpy_global_norm(grads), rel=1e-6)


def test_repeated_sparse_rows_are_clipped_by_the_dense_norm() -> None:
    """An embedding gradient gathers a row once per use: its norm is that of the summed rows
    (the dense tensor), not of the values, which TF's clips would use."""
    sparse = sparse_grad(5, [2, 6, 2, 2, 0])
    grads = [random_grads(6)[0], sparse]
    dense_grads = [grads[0], tf.convert_to_tensor(sparse)]
    assert numpy_global_norm([sparse.values]) != pytest.approx(numpy_global_norm([sparse]))
    out, metrics = clip(grads, "global_norm", 1.0)
    expected, norm = tf.clip_by_global_norm(dense_grads, 1.0)
    assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-6)
    assert isinstance(out[1], tf.IndexedSlices) and sorted(out[1].indices.numpy()) == [0, 2, 6]
    for got, want in zip(out, expected):
        np.testing.assert_allclose(dense(got), dense(want), rtol=1e-6, atol=1e-7)
    out, _ = clip(grads, "norm", 0.5)
    np.testing.assert_allclose(
        dense(out[1]), dense(tf.clip_by_norm(dense_grads[1], 0.5)), rtol=1e-6, atol=1e-7
    )


def numpy_rms_clip(grad: np.ndarray, threshold: float) -> tuple[np.ndarray, bool]:
    g = grad.astype(np.float64)
    rms = math.sqrt(float(np.mean(g**2)))
    return (g * threshold / rms, True) if rms > threshold else (g, False)


@pytest.mark.parametrize("threshold", [0.1, 1.0, 5.0])
def test_rms_matches_numpy(threshold: float) -> None:
    """RMS <= threshold per tensor; a sparse gradient's RMS counts its unseen rows as zeros;
    tensors under the threshold come back bit for bit."""
    grads = [*random_grads(7), sparse_grad(8, [3, 5, 3])]
    out, metrics = clip(grads, "rms", threshold)
    flags = []
    for got, grad in zip(out, grads):
        want, clipped = numpy_rms_clip(dense(grad), threshold)
        flags.append(clipped)
        if clipped:
            np.testing.assert_allclose(dense(got), want, rtol=1e-6, atol=0)
            assert math.sqrt(np.mean(dense(got).astype(np.float64) ** 2)) == pytest.approx(
                threshold, rel=1e-6
            )
        else:
            np.testing.assert_array_equal(dense(got), dense(grad))
    assert metrics["clipped_fraction"] == pytest.approx(np.mean(flags))
    assert metrics["grad_norm"] == pytest.approx(numpy_global_norm(grads), rel=1e-6)
    if threshold == 1.0:
        assert 0 < sum(flags) < len(flags)


def test_none_returns_the_same_gradients_and_the_norm() -> None:
    grads = [*random_grads(9), sparse_grad(10, [0, 0, 1]), None]
    out, metrics = clip(grads, "none", 1e-3)
    assert all(a is b for a, b in zip(out, grads))
    assert metrics == {"grad_norm": pytest.approx(numpy_global_norm(grads[:-1]), rel=1e-6)}


@pytest.mark.parametrize("mode", ["global_norm", "norm", "rms"])
def test_none_gradients_pass_through(mode: str) -> None:
    grads: list[Optional[tf.Tensor]] = [None, *random_grads(11)[:2]]
    out, metrics = clip(grads, mode, 0.5)
    assert out[0] is None
    reference, _ = clip(grads[1:], mode, 0.5)
    for got, want in zip(out[1:], reference):
        np.testing.assert_array_equal(dense(got), dense(want))
    if mode != "global_norm":
        assert metrics["clipped_fraction"] == clip(grads[1:], mode, 0.5)[1]["clipped_fraction"]


@pytest.mark.parametrize("mode", ["global_norm", "norm", "rms"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, "overflow"])
def test_non_finite_gradients_are_never_made_finite(mode: str, bad: Any) -> None:
    """inf, NaN or a sum of squares that overflows float32 gives NaN, never finite numbers
    (tf.clip_by_norm would turn the overflowing tensor into zeros)."""
    grads = random_grads(12)
    poisoned = dense(grads[0]).copy()
    if bad == "overflow":
        poisoned[:] = 1e30  # finite, but its squares overflow
    else:
        poisoned[1, 2] = bad
    grads[0] = tf.constant(poisoned)
    out, metrics = clip(grads, mode, 1.0)
    assert not np.isfinite(metrics["grad_norm"])
    assert np.isnan(dense(out[0])).all()
    if mode == "global_norm":
        assert all(np.isnan(dense(g)).all() for g in out)  # as tf.clip_by_global_norm
    else:
        assert all(np.isfinite(dense(g)).all() for g in out[1:])
        assert metrics["clipped_fraction"] >= 1 / len(grads)


def test_clips_trace_under_xla() -> None:
    """The trainer compiles with XLA: every mode, sparse gradients included, compiles and
    gives what eager gives."""
    grads = [*random_grads(13), sparse_grad(14, [2, 2, 5])]
    modes = ("none", "global_norm", "norm", "rms")
    settings = [ClippingSettings(mode=m, threshold=1.0) for m in modes]  # type: ignore[arg-type]

    @tf.function(jit_compile=True)
    def compiled(*g: Any) -> Any:
        results = []
        for s in settings:
            out, metrics = clip_gradients(list(g), s)
            results.append(([tf.convert_to_tensor(x) for x in out], metrics))
        return results

    for s, (got, got_metrics) in zip(settings, compiled(*grads)):
        want, want_metrics = clip_gradients(grads, s)
        for a, b in zip(got, want):
            np.testing.assert_allclose(dense(a), dense(b), rtol=1e-6, atol=1e-7, err_msg=s.mode)
        for key, value in want_metrics.items():
            assert float(got_metrics[key]) == pytest.approx(float(value), rel=1e-6), s.mode


# Settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,threshold,fragment",
    [
        ("norm", 0.0, "training.clipping.threshold must be > 0 and finite, got 0.0"),
        ("rms", -1.0, "training.clipping.threshold must be > 0 and finite, got -1.0"),
        ("global_norm", math.nan, "training.clipping.threshold"),
        ("global_norm", math.inf, "training.clipping.threshold"),
        ("none", math.nan, "training.clipping.threshold must be finite, got nan"),
        ("clip", 1.0, "training.clipping.mode must be one of 'none', 'global_norm', 'norm',"),
    ],
)
def test_bad_settings_are_refused_before_compute(
    mode: str, threshold: float, fragment: str
) -> None:
    settings = TrainingSettings(clipping=ClippingSettings(mode=mode, threshold=threshold))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="training.clipping") as info:
        settings.validate()
    assert fragment in str(info.value)
    if mode == "clip":
        assert "got 'clip'" in str(info.value)
    with pytest.raises(ValueError, match="training.clipping"):
        Trainer(make_model(), settings, make_execution(xla=False))


def test_threshold_is_ignored_without_a_mode() -> None:
    ClippingSettings(mode="none", threshold=0.0).validate()
    assert TrainingSettings().clipping == ClippingSettings(mode="none", threshold=1.0)


def test_settable_by_dotted_path() -> None:
    invocation = cli.parse(
        ["--training.clipping.mode", "rms", "--training.clipping.threshold", "2"]
    )
    assert invocation is not None
    assert invocation.settings.training.clipping == ClippingSettings(mode="rms", threshold=2.0)


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["--training.clipping.mode", "norm", "--training.clipping.threshold", "-1"],
         ["training.clipping.threshold", "-1"]),
        (["--training.clipping.mode", "clip"], ["training.clipping.mode", "clip"]),
    ],
)  # fmt: skip
def test_command_line_refuses_bad_clipping(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One error line naming the field and the value, exit 2, no run folder."""
    out = tmp_path / "run"
    assert main(["--preset", "smoke", *argv, "--out", str(out), "--output.wandb", "off"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not out.exists()


# In the trainer ----------------------------------------------------------------------------


def make_model(kind: str = "attention", unit: bool = False, seed: int = 2) -> CharLM:
    settings = model_settings(kind, seed=seed, depth=1)
    return CharLM(unit_scaled(settings) if unit else settings)


def make_trainer(
    kind: str = "attention",
    unit: bool = False,
    xla: bool = False,
    clipping: Optional[ClippingSettings] = None,
    **training: Any,
) -> Trainer:
    settings = TrainingSettings(
        optimiser=training.pop("optimiser", SGDMSettings(learning_rate=0.1, momentum=0.9)),
        clipping=clipping or ClippingSettings(),
        **training,
    )
    return Trainer(make_model(kind, unit), settings, make_execution(xla), seed=0)


def initial_gradients(trainer: Trainer, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The first step's unscaled gradients, gradient factors applied, as float64."""
    tokens, mask = tf.constant(batch["tokens"][0]), tf.constant(batch["mask"][0])
    with tf.GradientTape() as tape:
        loss = trainer.model(tokens, mask)["loss"]
    grads = apply_gradient_factors(
        trainer.variables,
        tape.gradient(loss, trainer.variables),
        trainer.parameters.gradient_factors(),
    )
    return [dense(g).astype(np.float64) for g in grads]


# One case per model kind; each threshold is well under the initial gradients' (measured with
# grad_norm below) so that clipping is active at every step.
TRAINER_CASES = [
    ("attention", False, "global_norm", 0.05),
    ("conv", True, "rms", 0.02),
    ("rnn", False, "norm", 0.02),
]


@pytest.mark.parametrize("kind,unit,mode,threshold", TRAINER_CASES)
def test_loss_scale_2048_with_clipping_gives_the_loss_scale_1_update(
    kind: str, unit: bool, mode: str, threshold: float
) -> None:
    """Clipping sees the unscaled gradients: with SGD (whose update is proportional to the
    gradient, unlike Adam's) clipping before unscaling would make the 2048 run's updates 2048
    times smaller. The pre-clip norm logged is the numpy norm of the true gradients."""
    batch = random_batch(2, 4, 16, np.random.default_rng(1))
    clipping = ClippingSettings(mode=mode, threshold=threshold)  # type: ignore[arg-type]
    trainer = make_trainer(kind, unit, clipping=clipping)
    reference = initial_gradients(trainer, batch)
    start_weights, start_state = trainer.model.get_weight_arrays(), trainer.optimiser.state_arrays()
    weights, metrics = [], []
    for scale in (1.0, 2048.0):  # one compiled step: the static scale is a variable it reads
        trainer.model.set_weight_arrays(start_weights)
        trainer.optimiser.set_state_arrays(start_state)
        trainer.loss_scaler.scale.assign(scale)
        metrics.append(trainer.train(batch))
        weights.append(trainer.model.get_weight_arrays())
        assert (metrics[-1]["loss_scale"] == scale).all()
    for name, value in weights[0].items():
        np.testing.assert_allclose(weights[1][name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    for results in metrics:
        assert results["grad_norm"][0] == pytest.approx(numpy_global_norm(reference), rel=1e-5)
        if mode == "global_norm":
            assert (results["grad_norm"] > threshold).all()
        else:
            assert (results["clipped_fraction"] > 0.5).all(), results["clipped_fraction"]


@pytest.mark.parametrize("xla", [False, pytest.param(True, marks=pytest.mark.slow)])  # ~9 s XLA
def test_mode_none_is_bit_identical_to_no_clipping(
    xla: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default trains exactly as a trainer without the clipping call (real runs compile
    with XLA, where the norm's extra reductions must not change the update's fusion either)."""
    batch = random_batch(2, 4, 16, np.random.default_rng(2))
    adam = AdamWSettings(learning_rate=0.01)
    default = make_trainer("conv", xla=xla, optimiser=adam)
    with_metrics = default.train(batch)
    assert set(with_metrics) >= {"grad_norm", "learning_rate"}
    assert "clipped_fraction" not in with_metrics
    monkeypatch.setattr(trainer_module, "clip_gradients", lambda grads, settings: (grads, {}))
    monkeypatch.setattr(trainer_module, "metric_names", lambda settings: ())
    bare = make_trainer("conv", xla=xla, optimiser=adam)
    without = bare.train(batch)
    assert "grad_norm" not in without
    np.testing.assert_array_equal(with_metrics["loss"], without["loss"])
    expected = bare.model.get_weight_arrays()
    for name, value in default.model.get_weight_arrays().items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    expected_state = bare.optimiser.state_arrays()
    for name, value in default.optimiser.state_arrays().items():
        np.testing.assert_array_equal(value, expected_state[name], err_msg=name)


def test_dynamic_loss_scaling_still_skips_overflowing_steps() -> None:
    """A float16 step whose scaled gradients overflow is skipped with clipping on: no update,
    the scale halves, and the logged pre-clip norm is not finite."""
    settings = TrainingSettings(
        loss_scale=2.0**32,
        loss_scaling="dynamic",
        optimiser=AdamWSettings(learning_rate=2**-6),
        clipping=ClippingSettings(mode="norm", threshold=1e-3),
    )
    trainer = Trainer(
        CharLM(model_settings("conv", seed=4, dtype="float16")),
        settings,
        make_execution(xla=False),
    )
    before = trainer.model.get_weight_arrays()
    results = trainer.train(random_batch(1, 2, 16, np.random.default_rng(0)))
    assert results["skipped"].tolist() == [1.0]
    assert not np.isfinite(results["grad_norm"]).any()
    after = trainer.model.get_weight_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert trainer.step == 0 and float(trainer.loss_scaler.scale.numpy()) == 2.0**31


def test_chunk_record_carries_the_clipping_metrics() -> None:
    """The train_step record (log.jsonl and WandB) has the last pre-clip norm, the chunk's
    largest and the mean fraction of tensors clipped."""
    results = {
        "loss": np.array([2.0, 1.0]),
        "n_tokens": np.array([10.0, 10.0]),
        "learning_rate": np.array([0.1, 0.1]),
        "loss_scale": np.array([1.0, 1.0]),
        "skipped": np.array([0.0, 0.0]),
        "grad_norm": np.array([3.0, 2.0]),
        "clipped_fraction": np.array([0.5, 0.25]),
    }
    record = chunk_metrics(results, elapsed=1.0)
    assert record["grad_norm"] == 2.0 and record["grad_norm_max"] == 3.0
    assert record["clipped_fraction"] == 0.375
    del results["clipped_fraction"]
    assert "clipped_fraction" not in chunk_metrics(results, elapsed=1.0)
