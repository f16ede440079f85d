"""The u-mup scheme on whole models: settings, learning-rate tables, scales at init, runs.

Scale checks use the paper's char-LM shapes (batch 8 x 256, hidden 128, depth 8; RNN depth 2)
on random tokens: every std is over >= 2^15 values, so the bands test the rules, not noise.
"""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import KINDS, model_settings

from scmm.analysis import LOSS_GRADIENT_NAME, ScaleRecord, collect_scales
from scmm.exit_codes import EXIT_FINISHED
from scmm.experiments import cli, main
from scmm.experiments.hooks import Hook
from scmm.experiments.runner import Experiment
from scmm.io import read_jsonl
from scmm.models import AttentionSettings, CharLM, ConvSettings, ModelSettings, RNNSettings
from scmm.models.settings import FFNSettings, NoTokenMixerSettings, ResidualSettings
from scmm.schemes import UmupScalingSettings

L = 2  # layers of the small models (conftest: depth 2)


def umup(settings: ModelSettings, **options: object) -> ModelSettings:
    return dataclasses.replace(settings, scaling=UmupScalingSettings(**options))  # type: ignore


def declared_fan_ins(kind: str) -> dict[str, int]:
    """Fan-in of every hidden weight of conftest's small models, from the settings' sizes
    (hidden 32, FFN inner 4 x 32, attention 2 heads x 16 with 8 frequencies, conv K 5 / 4
    groups), by path suffix: written out, not read from the layers."""
    hidden = 32
    fan_ins = {"ffn/up/kernel": hidden, "ffn/down/kernel": 4 * hidden}
    if kind == "attention":
        fan_ins.update(
            {"attention/qkv": hidden, "attention/positional": 16, "attention/output_kernel": 32}
        )
    elif kind == "conv":
        fan_ins["conv/kernel"] = 5 * hidden // 4
    else:
        fan_ins.update({"rnn/input_kernel": 2 * hidden, "rnn/recurrent_kernel": 2 * hidden})
    return fan_ins


def closed_form(path: str, shape: tuple[int, ...], kind: str, sgd_output_scale: bool) -> float:
    """u-mup's multiplier of one parameter (the paper's table / the library's SGD rule)."""
    in_branch = path.startswith("layer_")
    depth = L**-0.5 if in_branch else 1.0
    if path in ("embedding/embeddings", "shift/padding"):
        return 32**0.5 if sgd_output_scale else 32**-0.5
    if path == "head/kernel":
        return 1.0
    for suffix, fan_in in declared_fan_ins(kind).items():
        if path.endswith(suffix):
            return (fan_in**0.5 if sgd_output_scale else fan_in**-0.5) * depth
    # biases, gains and offsets (the library's shape[0] of a vector; the last axis here)
    return (shape[-1] if sgd_output_scale else 1.0) * depth


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "optimiser, readout", [("adamw", "none"), ("sgdm", "none"), ("sgdm", "forward")]
)
def test_learning_rate_table_equals_the_closed_form(
    kind: str, optimiser: str, readout: str
) -> None:
    settings = umup(model_settings(kind), biases=True, norm_gains=True, readout_constraint=readout)
    model = CharLM(settings)
    model.scheme.assign_multipliers(model.parameters, optimiser)
    rows = list(model.parameters)
    roles = {row.role for row in rows}
    assert roles == {"embedding", "weight", "bias", "gain", "offset", "readout"}
    sgd_output_scale = optimiser == "sgdm" and readout == "forward"
    for row in rows:
        want = closed_form(row.path, row.shape, kind, sgd_output_scale)
        assert row.learning_rate_multiplier == pytest.approx(want, rel=1e-6), row.path
        assert row.weight_decay_multiplier == 1.0


def test_umup_defaults_have_no_biases_or_norm_gains() -> None:
    for kind in KINDS:
        paths = CharLM(umup(model_settings(kind))).named_weights()
        assert not [p for p in paths if p.endswith(("bias", "gamma", "beta"))], kind
    with_gains = CharLM(umup(model_settings("attention"), norm_gains=True)).named_weights()
    assert "final_norm/gamma" in with_gains and "final_norm/beta" not in with_gains


@pytest.mark.parametrize(
    "change, message",
    [
        ({"residual": ResidualSettings(weighting="fixed")}, "weighting='fixed' does not fit"),
        ({"residual": ResidualSettings(norm="post")}, "norm pre or none, got 'post'"),
        ({"scaling": UmupScalingSettings(ffn_act=2.0)}, "ffn_act=2.0 needs .* activation gelu"),
        ({"scaling": UmupScalingSettings(attn_softmax=0.0)}, "attn_softmax must be .* > 0, got 0"),
        ({"scaling": UmupScalingSettings(residual_mult=-1)}, "residual_mult must be"),
    ],
)
def test_impossible_umup_settings_are_named_before_any_compute(
    change: dict[str, object], message: str
) -> None:
    settings = dataclasses.replace(umup(model_settings()), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_residual_taus_follow_the_rule_over_the_model_branches() -> None:
    # scmm's tau at mult = ratio = 1: 1 / (branches/2 + i + 1).
    model = CharLM(umup(model_settings(depth=3)))
    assert [b.tau for b in model.blocks] == pytest.approx([1 / (3 + i + 1) for i in range(6)])
    # Without an FFN, every branch is a sequence mixer.
    no_ffn = dataclasses.replace(model_settings(depth=3), token=NoTokenMixerSettings())
    taus = [b.tau for b in CharLM(umup(no_ffn)).blocks]
    assert taus == pytest.approx([1 / (1.5 + i + 1) for i in range(3)])


def test_every_multiplier_changes_the_forward_function() -> None:
    base = dataclasses.replace(model_settings(), token=FFNSettings(activation="gelu"))
    tokens = np.random.default_rng(3).integers(0, 16, (2, 32))
    reference = float(CharLM(umup(base))(tokens)["loss"])
    for name in ("attn_softmax", "ffn_act", "residual_mult", "residual_attn_ratio", "loss_softmax"):
        for mult in (0.25, 4.0):
            loss = float(CharLM(umup(base, **{name: mult}))(tokens)["loss"])
            assert abs(loss - reference) > 1e-4, (name, mult, loss, reference)


# Scales at initialisation --------------------------------------------------------------------

PAPER = {
    "attention": (AttentionSettings(), 8),
    "conv": (ConvSettings(), 8),
    "rnn": (RNNSettings(), 2),
}


@pytest.fixture(scope="module")
def init_scales() -> dict[str, list[ScaleRecord]]:
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 107, (8, 256)), "mask": np.ones((8, 256), bool)}
    scales = {}
    for kind, (sequence, depth) in PAPER.items():
        settings = ModelSettings(
            vocab_size=107, hidden_size=128, depth=depth, sequence=sequence, seed=1
        )
        scales[kind] = collect_scales(CharLM(umup(settings)), batch)
    return scales


def band(kind: str, record: ScaleRecord) -> tuple[float, float]:
    """Factor 2 of 1, except attention's running mean and its input gradient: with u-mup's
    nearly uniform attention their scale depends on how correlated the values are across
    positions, and the op's alpha^1/2 sits in the middle of the iid (alpha^-1/2 = 0.4 here)
    and fully correlated (alpha^1/2 = 2.5) extremes (``scmm.ops.umup``)."""
    attention = kind == "attention" and (
        (record.pass_ == "forward" and record.name.endswith("/attention"))
        or (record.pass_ == "backward" and record.name.endswith("sequence/norm"))
    )
    return (0.25, 4.0) if attention else (0.5, 2.0)


@pytest.mark.parametrize("kind", list(PAPER))
def test_every_umup_model_kind_is_unit_scaled_at_init(
    kind: str, init_scales: dict[str, list[ScaleRecord]]
) -> None:
    records = [r for r in init_scales[kind] if r.pass_ in ("forward", "backward")]
    assert len(records) > 20
    for record in records:
        if record.name == "head" and record.pass_ == "forward":
            # mu-P's readout: unit weights, forward 1/fan_in -> logits at fan_in^-1/2.
            assert record.std == pytest.approx(128**-0.5, rel=0.1)
            continue
        low, high = band(kind, record)
        assert low <= record.std <= high, (record.pass_, record.name, record.std)
    loss_grad = [r for r in records if r.name == LOSS_GRADIENT_NAME]
    assert loss_grad and loss_grad[0].std == pytest.approx(1.0, rel=0.05)
    exceptions = [r for r in records if band(kind, r) != (0.5, 2.0)]
    assert len(exceptions) <= 16  # the attention records only


# Runs ----------------------------------------------------------------------------------------

COMMON = ["--preset", "smoke", "--output.wandb", "off", "--output.progress", "off"]


def test_a_umup_run_trains_states_every_rule_and_keeps_them_on_resume(tmp_path: Path) -> None:
    out, mid = tmp_path / "run", tmp_path / "mid"
    args = [*COMMON, "--model.scaling.type", "umup", "--training.optimiser.learning_rate", "0.25"]
    args += ["--training.steps", "32", "--training.valid_interval", "16", "--out", str(out)]
    invocation = cli.parse(args)
    assert invocation is not None
    experiment = Experiment(invocation.settings, str(out))

    def snapshot(step: int) -> None:  # the folder as a kill right after the step-16 checkpoint
        if step == 16:
            shutil.copytree(out, mid, ignore=shutil.ignore_patterns(".lock"))

    experiment.hooks.append(Hook("snapshot", 16, snapshot))
    assert experiment.run() == EXIT_FINISHED
    first = json.loads((out / "parameters.json").read_text())
    assert first["scheme"] == "umup" and first["layers"] == 2 and first["depth"] == 4
    rows = {row["path"]: row for row in first["parameters"]}
    qkv = rows["layer_1_sequence/attention/qkv"]
    assert (qkv["role"], qkv["fan_in"], qkv["depth"]) == ("weight", 32, 3)
    assert qkv["learning_rate"] == pytest.approx(0.25 * 32**-0.5 * 2**-0.5, rel=1e-6)
    assert rows["embedding/embeddings"]["learning_rate"] == pytest.approx(0.25 * 32**-0.5)
    assert rows["head/kernel"]["learning_rate"] == 0.25
    # No calibration under u-mup: every gradient factor stays 1 (its SGD rules assume the ops'
    # own gradient scales).
    assert {row["gradient_factor"] for row in rows.values()} == {1.0}
    log = read_jsonl(out / "log.jsonl", warn=False)
    assert not [r for r in log if r["kind"] == "calibration"]
    losses = [r["loss"] for r in log if r["kind"] == "train_step"]
    # It learns. The log holds two train_step records here (first and last); their gap was
    # measured at 0.29 and 0.36 in two runs, so the margin is 0.2.
    assert losses[-1] < losses[0] - 0.2
    saved = json.loads((out / "checkpoints" / "settings.json").read_text())
    assert saved["model"]["scaling"]["type"] == "umup"
    # Resumed from the step-16 checkpoint, the run restates the same table and ends where the
    # uninterrupted one did.
    (mid / "parameters.json").unlink()
    assert main(["--resume", str(mid), "--output.progress", "off"]) == EXIT_FINISHED
    assert json.loads((mid / "parameters.json").read_text()) == first
    final = json.loads((out / "summary.json").read_text())
    resumed = json.loads((mid / "summary.json").read_text())
    assert resumed["valid_bpc"] == final["valid_bpc"]


@pytest.mark.slow  # 13 s: the default suite's budget; conv/rnn tables are checked above
@pytest.mark.parametrize("kind", ["conv", "rnn"])
def test_umup_conv_and_rnn_runs_train(tmp_path: Path, kind: str) -> None:
    out = tmp_path / kind
    args = [*COMMON, "--model.scaling.type", "umup", "--model.sequence.type", kind]
    args += ["--training.optimiser.learning_rate", "0.25", "--training.steps", "16"]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads((out / "parameters.json").read_text())
    assert all(math.isfinite(row["learning_rate"]) for row in record["parameters"])
    assert {row["role"] for row in record["parameters"]} == {"embedding", "weight", "readout"}
