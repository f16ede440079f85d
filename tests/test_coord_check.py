"""The coordinate check (``python -m scmm.coord_check``): slope maths against the closed form,
the verdict, the JSON record and figure, bad input before compute, and the real check on tiny
models: the standard parametrisation with Adam at a large learning rate must be flagged."""

import json
import math
import os
import pathlib
from typing import Sequence

import numpy as np
import pytest

from scmm.analysis.coordinates import (
    FORMAT,
    RunMeasurement,
    fit_slope,
    judge,
    load_check_json,
    plot_check,
    slope_table,
    summarise,
    verdict_line,
    write_check_json,
)
from scmm.coord_check import cli, make_plan, width_settings
from scmm.experiments.overrides import base_tree, merge, overrides_to_tree
from scmm.experiments.settings import ExperimentSettings, from_dict

# A tiny attention model: one layer, 32-character windows of 4 sequences, eager steps (no XLA:
# compiling each width's step would cost ~10 s; the numbers are the same).
TINY = [
    "--preset",
    "smoke",
    "--model.depth",
    "1",
    "--data.sequence_length",
    "32",
    "--execution.xla",
    "false",
]


def settings_of(*pairs: tuple[str, object]) -> ExperimentSettings:
    return from_dict(merge(base_tree("smoke"), overrides_to_tree(pairs)))


# Slope maths --------------------------------------------------------------------------------


@pytest.mark.parametrize("power", [-1.0, -0.5, 0.0, 0.25, 1.0, 2.0])
def test_the_slope_of_a_power_law_is_its_power(power: float) -> None:
    widths = [32, 64, 128, 512]
    values = [3.7 * w**power for w in widths]
    assert fit_slope(widths, values) == pytest.approx(power, abs=1e-12)


def test_the_slope_is_least_squares_in_log2() -> None:
    # log2 values 0, 3, 3 at log2 widths 0, 1, 2: slope = sum(dx dy) / sum(dx^2) = 3 / 2.
    assert fit_slope([1, 2, 4], [1.0, 8.0, 8.0]) == pytest.approx(1.5)


def test_a_layer_that_does_not_move_is_flat_and_a_broken_one_is_nan() -> None:
    assert fit_slope([8, 16], [0.0, 0.0]) == 0.0
    assert math.isnan(fit_slope([8, 16], [0.0, 1.0]))
    assert math.isnan(fit_slope([8, 16], [1.0, float("inf")]))
    assert math.isnan(fit_slope([8, 16], [1.0, float("nan")]))
    with pytest.raises(ValueError, match=">= 2 widths"):
        fit_slope([8], [1.0])
    with pytest.raises(ValueError, match="differ"):
        fit_slope([8, 8], [1.0, 2.0])


def synthetic_runs(
    powers: dict[str, list[float]], widths: Sequence[int] = (32, 64, 128), seeds: int = 2
) -> list[RunMeasurement]:
    """rms = (1 + seed / 10) x width^power at each step (per layer), change = rms / 2 (after
    step 0): the mean over seeds keeps the power law."""
    runs = []
    for width in widths:
        for seed in range(seeds):
            rms = np.array([[(1 + seed / 10) * width**p for p in row] for row in powers.values()])
            change = rms / 2
            change[:, 0] = 0.0
            runs.append(RunMeasurement(width, seed, tuple(powers), rms, change))
    return runs


def test_summarise_averages_seeds_and_judge_flags_only_steps_checked() -> None:
    check = summarise(synthetic_runs({"a": [0.0, 0.1, -0.1], "b": [-0.5, 0.05, 0.6]}))
    assert check.widths == [32, 64, 128] and check.seeds == 2 and check.steps == 2
    assert check.rms[0, 1, 2] == pytest.approx(1.05 * 128**0.1)  # mean of 1.0 and 1.1
    np.testing.assert_allclose(check.rms_slopes(), [[0.0, 0.1, -0.1], [-0.5, 0.05, 0.6]])
    np.testing.assert_allclose(check.change_slopes()[:, 1:], [[0.1, -0.1], [0.05, 0.6]])
    assert np.isnan(check.change_slopes()[:, 0]).all()
    verdict = judge(check, tolerance=0.15)  # b's -0.5 at init is not checked (from step 1)
    assert not verdict.passed and verdict.output_layer == "b"
    assert [(f.layer, f.step) for f in verdict.flagged] == [("b", 2)]
    assert judge(check, tolerance=0.15, from_step=0).flagged[0].slope == pytest.approx(0.6)
    assert judge(check, tolerance=0.6 + 1e-9).passed
    assert "b +0.60 (step 2)" in verdict_line(verdict)
    assert verdict_line(judge(check, 1.0)).startswith("pass")
    table = slope_table(check, verdict)
    assert "+0.60*" in table and "-0.50 " in table  # flagged cells are starred


def test_the_output_layer_is_named_even_when_others_are_worse() -> None:
    powers = {f"l{i}": [0.0, 1.0 + i] for i in range(4)}
    powers["head"] = [0.0, 0.5]
    verdict = judge(summarise(synthetic_runs(powers)), tolerance=0.15)
    assert [f.layer for f in verdict.worst()] == ["l3", "l2", "l1"]
    assert "head +0.50 (step 1)" in verdict_line(verdict)


def test_measurements_must_match_and_widths_need_equal_seeds() -> None:
    runs = synthetic_runs({"a": [0.0, 0.0]})
    other = RunMeasurement(64, 9, ("b",), runs[0].rms, runs[0].change_rms)
    with pytest.raises(ValueError, match="like with like"):
        summarise([*runs, other])
    with pytest.raises(ValueError, match="seed counts"):
        summarise(runs[:-1])
    with pytest.raises(ValueError, match="steps \\+ 1"):
        RunMeasurement(32, 0, ("a", "b"), np.ones((1, 3)), np.ones((1, 3)))


def test_the_record_round_trips_through_strict_json(tmp_path: pathlib.Path) -> None:
    runs = synthetic_runs({"a": [0.0, 0.3], "b": [0.0, 0.0]})
    runs[0].rms[1, 1] = float("nan")  # a non-finite mean is written as null, read as NaN
    check = summarise(runs)
    verdict = judge(check, 0.15)
    path = tmp_path / "coord_check.json"
    write_check_json(path, check, verdict, {"settings": {"model": {"depth": 1}}})
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["format"] == FORMAT
    loaded, loaded_verdict, data = load_check_json(path)
    assert data["settings"] == {"model": {"depth": 1}} and data["steps"] == 1
    assert loaded.layers == check.layers and loaded.widths == check.widths
    np.testing.assert_array_equal(loaded.rms, check.rms)  # NaN in the same places
    np.testing.assert_array_equal(loaded.change_rms, check.change_rms)
    assert data["slopes"]["rms"]["b"][1] is None  # strict JSON: the NaN slope is null
    assert loaded_verdict.passed == verdict.passed
    assert [(f.layer, f.step) for f in loaded_verdict.flagged] == [("b", 1), ("a", 1)]
    assert math.isnan(loaded_verdict.flagged[0].slope)


def test_the_figure_is_a_png(tmp_path: pathlib.Path) -> None:
    check = summarise(synthetic_runs({"a": [0.0, 0.2, 0.1], "head": [-0.5, 1.0, 1.0]}))
    path = tmp_path / "coord_check.png"
    plot_check(check, judge(check, 0.15), path, title="synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# Plans: widths and bad input -----------------------------------------------------------------


def test_each_width_sets_the_hidden_size_and_attention_head_size() -> None:
    plan = make_plan(settings_of(("model.sequence.heads", 4)), [128, 32, 64], seeds=2, steps=2)
    assert plan.widths == (32, 64, 128) and plan.model_seeds == (0, 1)
    assert plan.scaled_fields() == {
        "model.hidden_size": [32, 64, 128],
        "model.sequence.head_size": [8, 16, 32],
    }
    conv = width_settings(
        settings_of(("model.sequence.type", "conv"), ("model.sequence.groups", 4)), 64
    )
    assert conv.model.hidden_size == 64 and getattr(conv.model.sequence, "groups") == 4
    assert make_plan(settings_of(("model.seed", 7)), [32, 64], seeds=3).model_seeds == (7, 8, 9)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--widths", "32", "48", "--model.sequence.heads", "5"], "width 32 is not divisible"),
        (["--widths"], "--widths is empty"),
        (["--widths", "64"], "at least two widths"),
        (["--widths", "64", "64"], "distinct"),
        (["--widths", "32", "x"], "invalid int value"),
        (
            [
                "--widths",
                "64",
                "12",
                "--model.sequence.type",
                "conv",
                "--model.sequence.groups",
                "8",
            ],
            "width 12: model.sequence.groups=8 must divide hidden_size=12",
        ),
        (["--widths", "32", "64", "--steps", "0"], "--steps must be >= 1"),
        (["--widths", "32", "64", "--steps", "2", "--from-step", "3"], "--from-step"),
        (["--widths", "32", "64", "--seeds", "0"], "--seeds must be >= 1"),
        (["--widths", "32", "64", "--model.nonsense", "1"], "nonsense"),
    ],
)
def test_bad_input_is_one_error_line_before_compute(
    argv: list[str],
    message: str,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_compute(*_args: object, **_kwargs: object) -> int:
        raise AssertionError("bad input reached the measurement")

    monkeypatch.setattr(cli, "run", no_compute)
    out = tmp_path / "out"
    assert cli.main([*TINY, "--out", str(out), *argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error
    assert not out.exists()


def test_help_lists_the_options_and_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--widths" in text and "--from-step" in text and "--model.scaling.type" in text


# The real check on tiny models ---------------------------------------------------------------


def test_standard_parametrisation_with_large_adam_steps_is_flagged(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The negative control. Standard parametrisation, Adam at learning rate 2^-1: every update
    # moves each readout weight by ~lr whatever the width, so the logits change like width^1,
    # and the residual stream faster. Measured on this model, head slopes at steps 1, 2, 3:
    # 1.26 0.92 0.95 (seed 0), 0.44 0.92 0.53 (seed 1); the mean of two seeds is steadier than
    # one (at 2^-2 one seed's step 2 was 0.40).
    out = tmp_path / "regular"
    argv = [
        *TINY,
        "--model.scaling.type",
        "regular",
        "--training.optimiser.learning_rate",
        "0.5",
        "--widths",
        "32",
        "64",
        "128",
        "--seeds",
        "2",
        "--steps",
        "3",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == cli.EXIT_FLAGGED
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "FLAGGED" in error[0] and "head +" in error[0], captured.err
    assert "head" in captured.out and "FLAGGED" in captured.out  # the slope table
    check, verdict, data = load_check_json(out / cli.JSON_NAME)
    slopes = dict(zip(check.layers, check.rms_slopes()))
    assert min(slopes["head"][2:]) >= 0.4, slopes["head"]
    assert {("head", 2), ("head", 3)} <= {(f.layer, f.step) for f in verdict.flagged}
    assert check.layers[0] == "embedding" and check.layers[-1] == "head"
    assert check.widths == [32, 64, 128] and check.steps == 3 and check.seeds == 2
    assert data["settings"]["model"]["scaling"]["type"] == "regular"
    assert data["scaled"]["model.sequence.head_size"] == [16, 32, 64]  # smoke: 2 heads
    assert (check.change_rms[:, 0] == 0).all() and (check.change_rms[:, 1:] > 0).all()
    assert (out / cli.PNG_NAME).read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(out)) == [cli.JSON_NAME, cli.PNG_NAME]  # no temporaries left


def test_captured_outputs_are_the_forward_records_tensors() -> None:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from scmm.analysis.scales import capture_outputs, collect_scales
    from scmm.models import CharLM

    settings = settings_of(("model.depth", 1), ("model.vocab_size", 20))
    model = CharLM(settings.model)
    tokens = np.arange(24, dtype=np.int32).reshape(2, 12) % 20  # (batch, sequence)
    mask = np.ones_like(tokens, dtype=bool)
    captured, outputs = capture_outputs(model, tf.constant(tokens), tf.constant(mask))
    records = collect_scales(model, {"tokens": tokens, "mask": mask})
    forward = [r for r in records if r.pass_ == "forward"]
    assert [name for name, _ in captured] == [r.name for r in forward]
    for (_, tensor), record in zip(captured, forward):
        assert float(tf.sqrt(tf.reduce_mean(tf.square(tensor)))) == pytest.approx(record.rms)
    assert float(outputs["loss"]) > 0 and "call" not in vars(model.head)  # unpatched after
