"""Learning-rate schedules (``training.optimiser.schedule``): exponential | warmup_power | cosine.

Each schedule is checked against a float64 numpy reference written from the formulas of issue
16 (and Graphcore's ``BertSchedule``, ``../shared/reference/sparse-lm-rigl.md`` §4) at t = 0,
W - 1, W, W + C/2, W + C and beyond; eagerly and inside an XLA-compiled loop; through both
optimisers' updates (u-mup's independent weight decay follows s(t) = lr(t) / peak); through a
whole ``run_experiment.py`` run, whose JSONL log records the rate of every step; and bad
values are refused with one line naming the field before anything is computed.
"""

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf
from experiment_helpers import write_grammar_folder

from scmm.experiments import ExperimentSettings, cli, from_dict, main, overrides, to_dict
from scmm.experiments.trackers import WandbTracker
from scmm.parameters import Parameter, ParameterTable
from scmm.training.schedules import WarmupDecay
from scmm.training.settings import (
    AdamWSettings,
    CosineScheduleSettings,
    ExponentialScheduleSettings,
    OptimiserSettings,
    ScheduleSettings,
    SGDMSettings,
    WarmupPowerScheduleSettings,
)

PEAK = 0.02
W, C = 8, 20  # warm-up and decay steps
FRACTION = 0.1  # min = 0.1 x peak


def reference(schedule: ScheduleSettings, t: int, peak: float, decay: float = 0.0) -> float:
    """The schedule's rate at update t, in float64, from the formulas (not from scmm)."""
    if isinstance(schedule, ExponentialScheduleSettings):
        return peak * 2.0 ** (-t * decay)
    assert isinstance(schedule, (WarmupPowerScheduleSettings, CosineScheduleSettings))
    warmup, steps = schedule.warmup_steps, schedule.decay_steps
    assert steps is not None
    low = schedule.min_learning_rate_fraction * peak
    if t < warmup:
        return peak * t / warmup
    progress = min(t - warmup, steps) / steps
    if isinstance(schedule, WarmupPowerScheduleSettings):
        return (peak - low) * (1 - progress) ** schedule.power + low
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES = {
    "exponential": ExponentialScheduleSettings(),
    "warmup_power": WarmupPowerScheduleSettings(
        warmup_steps=W, decay_steps=C, min_learning_rate_fraction=FRACTION
    ),
    "warmup_power-p0.9-min0": WarmupPowerScheduleSettings(warmup_steps=W, decay_steps=C, power=0.9),
    "cosine": CosineScheduleSettings(
        warmup_steps=W, decay_steps=C, min_learning_rate_fraction=FRACTION
    ),
    "cosine-no-warmup": CosineScheduleSettings(warmup_steps=0, decay_steps=C),
}
POINTS = (0, W - 1, W, W + C // 2, W + C, W + C + 1, 10 * (W + C))


def _decay(name: str) -> float:
    return 0.05 if name == "exponential" else 0.0


def _settings(name: str, kind: str = "adamw", **fields: Any) -> OptimiserSettings:
    cls = AdamWSettings if kind == "adamw" else SGDMSettings
    return cls(
        learning_rate=PEAK, learning_rate_decay=_decay(name), schedule=SCHEDULES[name], **fields
    )


def _build(name: str) -> Any:
    return SCHEDULES[name].build(PEAK, _decay(name), total_steps=None)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_the_numpy_reference(name: str) -> None:
    schedule = _build(name)
    got = [float(schedule(tf.constant(t, tf.int64))) for t in POINTS]
    want = [reference(SCHEDULES[name], t, PEAK, _decay(name)) for t in POINTS]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9 * PEAK)


def test_the_formulas_at_the_named_points() -> None:
    """The numbers the issue names, written out: 0 at t = 0, the peak at W, the minimum at
    W + C and after; halfway, sqrt(1/2) of the way (power 0.5) or half of it (cosine)."""
    low = FRACTION * PEAK
    power, cosine = _build("warmup_power"), _build("cosine")
    for schedule in (power, cosine):
        assert float(schedule(tf.constant(0, tf.int64))) == 0.0
        assert float(schedule(tf.constant(W // 2, tf.int64))) == pytest.approx(PEAK / 2, rel=1e-6)
        assert float(schedule(tf.constant(W, tf.int64))) == pytest.approx(PEAK, rel=1e-6)
        for t in (W + C, W + C + 1, 10**6):
            assert float(schedule(tf.constant(t, tf.int64))) == pytest.approx(low, rel=1e-6)
    half = tf.constant(W + C // 2, tf.int64)
    assert float(power(half)) == pytest.approx((PEAK - low) * 0.5**0.5 + low, rel=1e-6)
    assert float(cosine(half)) == pytest.approx((PEAK + low) / 2, rel=1e-6)
    assert float(_build("cosine-no-warmup")(tf.constant(0, tf.int64))) == pytest.approx(PEAK)


def test_exponential_is_the_old_formula_bit_for_bit() -> None:
    """The default schedule runs exactly the ops scmm ran before schedules existed."""
    decay = 2**-7
    schedule = ExponentialScheduleSettings().build(PEAK, decay, None)

    def old(step: tf.Tensor) -> tf.Tensor:
        return tf.constant(PEAK, tf.float32) * tf.pow(2.0, -tf.cast(step, tf.float32) * decay)

    steps = tf.range(0, 5000, 37, dtype=tf.int64)
    for fn in (lambda s: s, lambda f: tf.function(f, jit_compile=True)):
        np.testing.assert_array_equal(fn(schedule)(steps).numpy(), fn(old)(steps).numpy())
    constant = ExponentialScheduleSettings().build(PEAK, 0.0, None)
    assert float(constant(tf.constant(10**6, tf.int64))) == np.float32(PEAK)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_under_xla_matches_eager(name: str) -> None:
    """The optimiser evaluates its rate inside the compiled loop: a tf.while over steps."""
    schedule = _build(name)
    count = W + C + 5

    @tf.function(jit_compile=True)
    def rates() -> tf.Tensor:
        out = tf.TensorArray(tf.float32, size=count)
        for t in tf.range(count, dtype=tf.int64):
            out = out.write(tf.cast(t, tf.int32), schedule(t))
        return out.stack()

    want = [reference(SCHEDULES[name], t, PEAK, _decay(name)) for t in range(count)]
    np.testing.assert_allclose(rates().numpy(), want, rtol=2e-6, atol=1e-9 * PEAK)


# Through the optimisers -----------------------------------------------------------------------


def _decayed(settings: OptimiserSettings, mode: str, steps: int) -> np.ndarray:
    """The weight after ``steps`` XLA-compiled updates with zero gradients (decay alone)."""
    variable = keras.Variable(np.full((3,), 2.0, np.float32), name="kernel")
    table = ParameterTable([Parameter(variable.path, (3,), "weight", learning_rate_multiplier=0.5)])
    optimiser = settings.build([variable], table, weight_decay_mode=mode)

    @tf.function(jit_compile=True)
    def train() -> None:
        for _ in tf.range(steps):
            optimiser.apply([tf.zeros((3,), tf.float32)])

    train()
    assert int(optimiser.step.numpy()) == steps
    return np.asarray(variable.numpy(), np.float64)


@pytest.mark.parametrize("kind", ["adamw", "sgdm"])
@pytest.mark.parametrize("name", ["warmup_power", "cosine"])
def test_weight_decay_follows_the_schedule_in_both_modes(kind: str, name: str) -> None:
    """Independent (u-mup): w *= 1 - wd x lr(t) / peak, the same at any peak; coupled:
    w *= 1 - lr(t) x lr_mult x wd. With zero gradients both optimisers decay alone."""
    steps, wd = W + C + 3, 0.05
    independent = []
    for peak in (PEAK, 1.0):
        settings = _settings(name, kind, weight_decay=wd)
        settings.learning_rate = peak
        independent.append(_decayed(settings, "independent", steps))
        coupled = _decayed(settings, "coupled", steps)
        factor = np.prod(
            [1 - peak * reference(SCHEDULES[name], t, 1.0) * 0.5 * wd for t in range(steps)]
        )
        np.testing.assert_allclose(coupled, 2.0 * factor, rtol=1e-5)
    s = [reference(SCHEDULES[name], t, 1.0) for t in range(steps)]  # s(t) = lr(t) / peak
    want = 2.0 * np.prod([1 - wd * s_t for s_t in s])
    for got in independent:  # the peak cancels out of s(t)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want < 1.0  # not a no-op: about half the weight is gone


def test_null_decay_steps_runs_to_the_end_of_training() -> None:
    schedule = CosineScheduleSettings(warmup_steps=10)
    for total, decay_steps in ((100, 90), (4, 1)):  # 4: the run ends inside the warm-up
        built = schedule.build(PEAK, 0.0, total_steps=total)
        assert isinstance(built, WarmupDecay) and built.decay_steps == decay_steps
    with pytest.raises(ValueError, match="decay_steps is null.*training.steps"):
        schedule.build(PEAK, 0.0, total_steps=None)


# Settings: the dotted path, sweeps, and bad values ---------------------------------------------


def test_schedule_is_set_by_dotted_path_and_from_a_sweep_style_tree() -> None:
    invocation = cli.parse(
        [
            "--training.optimiser.schedule.type",
            "warmup_power",
            "--training.optimiser.schedule.warmup_steps",
            "100",
            "--training.optimiser.schedule.power=0.8",
            "--training.optimiser.schedule.min_learning_rate_fraction",
            "0.04",
        ]
    )
    assert invocation is not None
    schedule = invocation.settings.training.optimiser.schedule
    assert schedule == WarmupPowerScheduleSettings(
        warmup_steps=100, decay_steps=None, min_learning_rate_fraction=0.04, power=0.8
    )
    assert schedule.kind == "warmup_power"
    # A sweep's dotted keys, over the default tree (whose schedule is exponential).
    tree = overrides.merge(
        to_dict(ExperimentSettings()),
        overrides.overrides_to_tree(
            [
                ("training.optimiser.type", "sgdm"),
                ("training.optimiser.schedule.type", "cosine"),
                ("training.optimiser.schedule.decay_steps", 500),
            ]
        ),
    )
    optimiser = from_dict(tree).training.optimiser
    assert isinstance(optimiser, SGDMSettings)
    assert optimiser.schedule == CosineScheduleSettings(decay_steps=500)
    # Round trip through settings.json's form.
    assert from_dict(to_dict(from_dict(tree))) == from_dict(tree)
    assert to_dict(ExperimentSettings())["training"]["optimiser"]["schedule"] == {
        "type": "exponential"
    }


def _one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


COSINE = ["--training.optimiser.schedule.type", "cosine"]
POWER = ["--training.optimiser.schedule.type", "warmup_power"]


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (
            [*COSINE, "--training.optimiser.schedule.warmup_steps", "-1"],
            ["training.optimiser.schedule.warmup_steps must be >= 0", "got -1"],
        ),
        (
            [*POWER, "--training.optimiser.schedule.decay_steps", "0"],
            ["training.optimiser.schedule.decay_steps must be >= 1", "got 0"],
        ),
        (
            [*POWER, "--training.optimiser.schedule.power", "0"],
            ["training.optimiser.schedule.power must be > 0", "got 0"],
        ),
        (
            [*POWER, "--training.optimiser.schedule.power", "-0.5"],
            ["training.optimiser.schedule.power", "got -0.5"],
        ),
        (
            [*COSINE, "--training.optimiser.schedule.min_learning_rate_fraction", "1.5"],
            ["training.optimiser.schedule.min_learning_rate_fraction must be <= 1", "got 1.5"],
        ),
        (
            [*COSINE, "--training.optimiser.schedule.min_learning_rate_fraction", "-0.1"],
            ["training.optimiser.schedule.min_learning_rate_fraction must be >= 0", "got -0.1"],
        ),
        (
            [*COSINE, "--training.optimiser.learning_rate_decay", "0.01"],
            ["training.optimiser.learning_rate_decay", "type=cosine", "got 0.01"],
        ),
        (
            ["--preset", "paper-attention", "--data.path", "null", *POWER],
            ["training.optimiser.learning_rate_decay", "warmup_power", "1.52587890625e-05"],
        ),
        (
            ["--training.optimiser.schedule.type", "linear"],
            ["training.optimiser.schedule", "linear"],
        ),
        (
            ["--training.optimiser.schedule.power", "0.5"],  # exponential has no power
            ["training.optimiser.schedule", "power"],
        ),
        (
            [*COSINE, "--training.optimiser.schedule.warmup_steps", "inf"],
            ["training.optimiser.schedule.warmup_steps"],
        ),
    ],
)
def test_bad_schedule_values_are_refused_before_compute(
    argv: list[str],
    fragments: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    smoke = ["--preset", "smoke"] if "--preset" not in argv else []
    assert main([*smoke, *argv, "--out", str(out), "--output.wandb", "off"]) == 2
    _one_error_line(capsys, *fragments)
    assert not out.exists()


# A whole run ------------------------------------------------------------------------------------


def _train_records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train_step"]


def test_a_run_logs_the_scheduled_rate_of_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_experiment.py, u-mup with independent weight decay, warm-up then square-root decay
    (decay_steps null: to the end of the run). Four steps per compiled call: every
    ``train_step`` record (step s, after s updates, k steps in its chunk) carries the rates of
    updates s - k ... s - 1 in ``learning_rate_per_step`` and the last as ``learning_rate``.
    Without XLA, to keep it short: the schedule under XLA is checked above, inside the update
    too."""
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    data, out = tmp_path / "data", tmp_path / "run"
    write_grammar_folder(data, train_chars=4000, eval_chars=600)
    steps, warmup, peak = 10, 3, 0.5
    argv = [
        "--preset", "smoke", "--model.scaling.type", "umup", "--seed", "3",
        "--training.steps", str(steps), "--training.iterations_per_loop", "4",
        "--training.valid_interval", str(steps), "--training.optimiser.learning_rate", str(peak),
        "--training.optimiser.weight_decay", "0.1", "--training.weight_decay_mode", "independent",
        "--training.optimiser.schedule.type", "warmup_power",
        "--training.optimiser.schedule.warmup_steps", str(warmup),
        "--training.optimiser.schedule.min_learning_rate_fraction", "0.25",
        "--data.path", str(data), "--execution.xla", "false",
        "--output.train_eval_chars", "64", "--output.progress", "off", "--output.wandb", "off",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    records = _train_records(out)
    assert [r["step"] for r in records] == [4, 8, 10]
    resolved = WarmupPowerScheduleSettings(
        warmup_steps=warmup, decay_steps=steps - warmup, min_learning_rate_fraction=0.25
    )
    want = [reference(resolved, t, peak) for t in range(steps)]
    logged = [rate for r in records for rate in r["learning_rate_per_step"]]
    np.testing.assert_allclose(logged, want, rtol=2e-6)
    assert [len(r["learning_rate_per_step"]) for r in records] == [4, 4, 2]
    assert all(r["learning_rate"] == r["learning_rate_per_step"][-1] for r in records)
    assert logged[0] == 0.0  # update 0 of the warm-up

    # WandB gets one learning-rate point per step, at the step after its update, in order.
    calls: list[tuple[int, dict[str, Any]]] = []
    tracker = WandbTracker.__new__(WandbTracker)
    tracker.run = SimpleNamespace(  # type: ignore[assignment]
        log=lambda metrics, step: calls.append((step, metrics))
    )
    for record in records:
        tracker.log(record)
    wandb_steps = [step for step, _ in calls]
    assert wandb_steps == sorted(wandb_steps)
    rates = {step: m["train_step/learning_rate"] for step, m in calls if len(m) == 1}
    assert sorted(rates) == list(range(1, steps + 1))
    np.testing.assert_allclose([rates[t] for t in sorted(rates)], want, rtol=2e-6)
    stored: Optional[dict[str, Any]] = json.loads((out / "settings.json").read_text())
    assert stored is not None
    assert stored["training"]["optimiser"]["schedule"]["type"] == "warmup_power"
