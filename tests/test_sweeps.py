"""Sweeps: definitions and expansion, the LR-search rule, the scheduler (resume, failures,
divergence, interruption) on a fake objective, results files, and end-to-end runs of the
``smoke`` sweep through the local and Ray executors."""

import concurrent.futures
import csv
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Optional

import pytest

from scmm.experiments.settings import SettingsError
from scmm.sweeps import cli as sweep_cli
from scmm.sweeps import results as sweep_results
from scmm.sweeps.definition import (
    Configuration,
    LrSearch,
    SweepDefinition,
    definition_from_dict,
    expand,
    load_definition,
)
from scmm.sweeps.executors import NOT_STARTED, TrialOutcome, TrialSpec
from scmm.sweeps.index import SweepIndex, TrialRecord
from scmm.sweeps.runner import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Sweep,
    SweepOptions,
)
from scmm.sweeps.search import best_point, learning_rate, next_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def definition(**fields: Any) -> SweepDefinition:
    return definition_from_dict({"name": "t", "base": "smoke", **fields}, "test")


def search_of(config: Configuration) -> LrSearch:
    """The configuration's LR search, which these tests expect to exist."""
    assert config.lr_search is not None
    return config.lr_search


def record_of(index: SweepIndex, trial: str) -> TrialRecord:
    """The index's record of ``trial``, which these tests expect to exist."""
    record = index.get(trial)
    assert record is not None
    return record


# -- definitions and expansion -------------------------------------------------------------- -----


def test_cartesian_product_filters_and_labels() -> None:
    sweep = definition(
        axes={
            "variant": {
                "regular": {"model.scaling.type": "regular"},
                "unit": {"model.scaling.type": "unit"},
            },
            "model.depth": [1, 2, 3],
        },
        overrides={"model.residual.weighting": "mean"},
        filters=[{"variant": "unit", "model.depth": 3}],
    )
    configs = expand(sweep)
    assert len(configs) == 2 * 3 - 1
    keys = [c.key for c in configs]
    assert keys[0] == "variant=regular,model.depth=1"
    assert "variant=unit,model.depth=3" not in keys
    unit_2 = configs[keys.index("variant=unit,model.depth=2")]
    assert unit_2.settings["model"]["scaling"]["type"] == "unit"
    assert unit_2.settings["model"]["depth"] == 2
    assert unit_2.settings["model"]["residual"]["weighting"] == "mean"
    assert unit_2.settings["preset"] == "smoke"


def test_axis_value_may_switch_preset_and_search_start() -> None:
    sweep = definition(
        axes={
            "model": {"attention": {"preset": "paper-attention"}, "rnn": {"preset": "paper-rnn"}},
            "variant": {
                "regular": {"lr_search.start": 2**-14},
                "unit": {"model.scaling.type": "unit", "lr_search.start": 2**-8},
            },
        },
        lr_search={"factor": 2, "threshold": 0.1},
    )
    configs = {c.key: c for c in expand(sweep)}
    rnn_unit = configs["model=rnn,variant=unit"]
    assert rnn_unit.settings["model"]["sequence"]["type"] == "rnn"
    assert rnn_unit.settings["model"]["depth"] == 2
    assert rnn_unit.settings["preset"] == "paper-rnn"
    assert rnn_unit.lr_search == LrSearch(start=2**-8, factor=2, threshold=0.1)
    assert search_of(configs["model=attention,variant=regular"]).start == 2**-14


def test_extra_overrides_apply_to_every_configuration() -> None:
    sweep = definition(axes={"seed": [1, 2]})
    configs = expand(sweep, {"training.steps": 7})
    assert [c.settings["training"]["steps"] for c in configs] == [7, 7]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"axes": {"v": {"a": {"model.hidden_sise": 3}}}}, "v=a"),
        ({"axes": {"model.hidden_size": ["big"]}}, "model.hidden_size=big"),
        (
            {"axes": {"v": {"a": {"model.scaling.type": "unit"}}}, "filters": [{"w": 1}]},
            "unknown axes",
        ),
        ({"axess": {}}, r"^test: unknown key 'axess' \(expected one of axes, base, "),
        ({"lr_search": {"start": -1.0}}, "lr_search.start"),
        ({"lr_search": {"begin": 1.0}}, r"`lr_search`: unknown key 'begin' .*max_points"),
        ({"lr_search": {"max_points": True}}, r"`lr_search.max_points`: .* boolean true"),
        ({"lr_search": {"start": float("inf")}}, "lr_search.start`: must be a finite number"),
        ({"repeats": 0}, "repeats"),
        ({"repeats": True}, r"`repeats`: expected an integer, got the boolean true"),
        ({"repeats": 1.5}, "`repeats`"),
        ({"description": None}, "`description`: must not be null"),
        ({"filters": {"v": 1}}, "`filters`"),
        ({"table_rows": [None]}, r"`table_rows.0`: must not be null"),
        ({"axes": {"v": {"a": {"lr_search.begin": 1}}}}, "v=a: lr_search: unknown key 'begin'"),
        ({"axes": {"v": {"a": {"model.depth": 2, "model.depth.x": 3}}}}, "goes through a value"),
        ({"axes": {"v": {"a": 3}}}, "must map dotted paths"),
        ({"axes": {"v": [1]}, "filters": [{"v": 1}]}, "drop every configuration"),
        ({"base": "no-such-preset"}, "no-such-preset"),
        ({"axes": {"v": {"a": {"lr_search.factor": 0.5}}}}, "lr_search.factor"),
    ],
)
def test_bad_definitions_name_the_offending_entry(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        expand(definition(**fields))


def test_unknown_sweep_name_lists_presets() -> None:
    with pytest.raises(SettingsError, match="paper-table"):
        load_definition("no-such-sweep")


def test_sweep_file_yaml(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "base: smoke\naxes:\n  training.optimiser.learning_rate: [0.001, 0.01]\nrepeats: 2\n"
    )
    sweep = load_definition(str(path))
    assert sweep.name == "mine" and sweep.repeats == 2
    assert [c.key for c in expand(sweep)] == [
        "training.optimiser.learning_rate=0.001",
        "training.optimiser.learning_rate=0.01",
    ]


def test_sweep_file_is_read_and_checked_like_a_settings_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "words.yaml"
    # YAML 1.2 booleans, as in settings files: off stays the text "off" (YAML 1.1: False).
    overrides = (
        "{output.wandb: off, model.scaling.type: unit, model.scaling.calibrate: false,"
        " model.residual.weighting: mean}"
    )
    path.write_text(f"base: smoke\noverrides: {overrides}\n")
    configs = expand(load_definition(str(path)))
    assert len(configs) == 1
    config = configs[0]
    assert config.settings["output"]["wandb"] == "off"
    assert config.settings["model"]["scaling"] == {"type": "unit", "calibrate": False}
    path.write_text("base: smoke\nrepeat: 2\n")
    with pytest.raises(SettingsError, match=f"^{path}: unknown key 'repeat' .*repeats"):
        load_definition(str(path))
    broken = tmp_path / "broken.json"
    broken.write_text('{"base": "smoke",')
    with pytest.raises(SettingsError, match="broken.json.* is not valid JSON"):
        load_definition(str(broken))


def test_a_settings_file_base_names_itself_in_errors(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("training:\n  steps: 12\n")
    configs = expand(definition(base=str(base)))
    assert len(configs) == 1
    config = configs[0]
    assert config.settings["training"]["steps"] == 12 and config.settings["preset"] == ""
    base.write_text("- not a tree\n")
    with pytest.raises(SettingsError, match=r"configuration base: base '.*base.yaml' must hold"):
        expand(definition(base=str(base)))


def test_configurations_resolve_exactly_as_run_experiment_would() -> None:
    from scmm.experiments import cli as experiment_cli

    sweep = definition(
        overrides={"model.residual.weighting": "mean", "training.steps": 8},
        axes={
            "variant": {
                "regular": {"model.scaling.type": "regular"},
                "unit": {"model.scaling.type": "unit"},
            }
        },
    )
    for config in expand(sweep, {"model.depth": 1}):
        argv = ["--preset", "smoke", "--model.residual.weighting", "mean", "--training.steps"]
        argv += ["8", "--model.scaling.type", config.settings["model"]["scaling"]["type"]]
        invocation = experiment_cli.parse([*argv, "--model.depth", "1"])
        assert invocation is not None
        assert config.settings == experiment_cli.settings_dict(invocation.settings), config.key


def test_layers_merge_in_order_and_a_later_type_change_drops_earlier_fields() -> None:
    conv = {"model.sequence.groups": 4, "model.sequence.type": "conv"}  # one layer: any order
    sweep = definition(
        overrides={
            "model.sequence.heads": 4,
            "model.sequence.head_size": 8,
            "model.residual.weighting": "mean",
        },
        axes={"mixer": {"attention": {}, "conv": conv}},
    )
    configs = {c.key: c.settings["model"]["sequence"] for c in expand(sweep)}
    assert configs["mixer=attention"]["heads"] == 4
    assert configs["mixer=conv"]["type"] == "conv" and configs["mixer=conv"]["groups"] == 4
    assert "heads" not in configs["mixer=conv"]  # the sweep-wide attention field went away


def test_top_level_fields_are_overrides_on_the_sweep_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert sweep_cli.main(["smoke", "--dry-run", "--training.steps", "5", "--seed", "9"]) == 0
    assert "5 steps" in capsys.readouterr().out
    assert sweep_cli.main(["smoke", "--dry-run", "--training.steps", "true"]) == 2
    assert "`training.steps`: expected an integer, got the boolean true" in capsys.readouterr().err


def test_paper_table_has_the_papers_twenty_configurations() -> None:
    configs = expand(load_definition("paper-table"))
    assert len(configs) == 20
    rows = {(c.labels["model"], c.labels["norm"]) for c in configs}
    assert rows == {("attention", "pre"), ("attention", "post"), ("conv", "pre"), ("rnn", "pre")}
    columns = {(c.labels["dtype"], c.labels["variant"], c.labels["loss_scale"]) for c in configs}
    assert columns == {
        ("float32", "regular", "1"),
        ("float32", "unit", "1"),
        ("float16", "regular", "1"),
        ("float16", "regular", "2048"),
        ("float16", "unit", "1"),
    }
    for config in configs:
        unit = config.labels["variant"] == "unit"
        assert (config.settings["model"]["scaling"]["type"] == "unit") is unit
        assert search_of(config).start == (2**-8 if unit else 2**-14)
        assert config.settings["training"]["steps"] == 2**19
        assert config.settings["data"]["path"] == "data/wikitext-103"
        assert config.settings["model"]["residual"]["norm"] == config.labels["norm"]
        scale = config.settings["training"]["loss_scale"]
        assert scale == float(config.labels["loss_scale"])


def test_dry_run_lists_every_configuration_fast(capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    assert sweep_cli.main(["paper-table", "--dry-run"]) == 0
    elapsed = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "20 configurations" in out
    assert out.count("LR search from 2^-14.00") == 12 and out.count("LR search from 2^-8.00") == 8
    assert elapsed < 30  # no TensorFlow, no data: it is a listing


def readme_example_sweep() -> str:
    """The YAML block of the README's "Sweeps" section."""
    text = pathlib.Path(ROOT, "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Sweeps\n", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_sweep_passes_a_dry_run(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(readme_example_sweep())
    assert sweep_cli.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep example" in out and "configurations;" in out


def test_a_dry_run_runs_the_cross_field_checks_and_names_every_bad_configuration(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's former example: the paper's 2 x 64 attention heads cannot fit hidden 64.
    path = tmp_path / "old.yaml"
    path.write_text(
        "base: default\naxes:\n  model: {attention: {preset: paper-attention},"
        " conv: {preset: paper-conv}}\n  model.hidden_size: [64, 100, 128]\n"
    )
    assert sweep_cli.main([str(path), "--dry-run"]) == sweep_cli.EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "error: configuration model=attention,model.hidden_size=64: model.sequence.heads x"
        " head_size = 2 x 64 = 128 does not fit hidden_size=64 (expected heads x head_size =="
        " hidden_size)",
        "error: configuration model=attention,model.hidden_size=100: model.sequence.heads x"
        " head_size = 2 x 64 = 128 does not fit hidden_size=100 (expected heads x head_size =="
        " hidden_size)",
        "error: configuration model=conv,model.hidden_size=100: model.sequence.groups=8 must"
        " divide hidden_size=100",
    ]


def test_cli_rejects_bad_override_before_running(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sweep_cli.main(["smoke", "--model.hidden_size", "abc", "--out", str(tmp_path / "s")])
    assert code == sweep_cli.EXIT_USAGE
    assert "hidden_size" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_rejects_missing_data_folder(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sweep_cli.main(["smoke", "--data.path", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert code == sweep_cli.EXIT_USAGE
    assert "is not a folder" in capsys.readouterr().err


# -- the LR-search rule ----------------------------------------------------------------------- ---


def run_search(
    search: LrSearch, objective: Callable[[int], float]
) -> tuple[list[int], dict[int, float]]:
    """Drive next_point with objective(k) -> score; returns the points in order."""
    scores: dict[int, float] = {}
    order: list[int] = []
    point = next_point(search, scores)
    while point is not None:
        order.append(point)
        scores[point] = objective(point)
        point = next_point(search, scores)
    return order, scores


def test_search_climbs_until_worse_than_best_by_threshold() -> None:
    search = LrSearch(start=2**-14, factor=2, threshold=0.1, max_points=20)
    order, scores = run_search(search, lambda k: 2.0 + 0.04 * (k - 4) ** 2)
    # Best at k=4; k=6 is 0.16 worse (> 0.1): stop there.
    assert order == [0, 1, 2, 3, 4, 5, 6]
    assert best_point(scores) == 4
    assert learning_rate(search, 4) == 2**-10


def test_search_stops_at_divergence() -> None:
    order, _ = run_search(LrSearch(threshold=0.5), lambda k: 1.0 - 0.01 * k if k < 3 else math.inf)
    assert order == [0, 1, 2, 3]


def test_search_walks_down_when_the_best_is_the_first_point() -> None:
    order, scores = run_search(LrSearch(threshold=0.1), lambda k: 2.0 + 0.05 * (k + 3) ** 2)
    assert order[:3] == [0, 1, -1]
    assert best_point(scores) == -3
    assert order[-1] == -4  # the first point below the optimum that is worse


def test_search_respects_max_points() -> None:
    order, _ = run_search(LrSearch(max_points=3), lambda k: -k)
    assert order == [0, 1, 2]


# -- scheduler on a fake objective ------------------------------------------------------------- --


class FakeExecutor:
    """Runs trials in-process from an objective of (learning rate, seed); no TensorFlow."""

    def __init__(
        self,
        objective: Callable[[float, int], float],
        fail: Iterable[str] = (),
        interrupt_after: Optional[int] = None,
        scripted: Optional[dict[str, list[TrialOutcome]]] = None,
    ) -> None:
        self.objective = objective
        self.fail = dict.fromkeys(fail, 1)
        self.scripted = scripted or {}
        """Trial -> outcomes returned (in order) before the objective takes over."""
        self.submitted: list[str] = []
        self.interrupt_after = interrupt_after
        self.stopped = False

    def submit(self, spec: TrialSpec) -> concurrent.futures.Future[TrialOutcome]:
        if self.interrupt_after is not None and len(self.submitted) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.submitted.append(spec.trial)
        with open(spec.settings_path, encoding="utf-8") as file:
            settings = json.load(file)
        future: concurrent.futures.Future[TrialOutcome] = concurrent.futures.Future()
        rate = settings["training"]["optimiser"]["learning_rate"]
        if self.scripted.get(spec.trial):
            future.set_result(self.scripted[spec.trial].pop(0))
            return future
        if self.fail.get(spec.trial):
            self.fail[spec.trial] -= 1
            future.set_result(TrialOutcome(exit_code=1, summary=None, wall_seconds=0.1, error="x"))
            return future
        valid = self.objective(math.log2(rate), settings["seed"])
        if math.isinf(valid):
            future.set_result(
                TrialOutcome(exit_code=3, summary={"status": "diverged"}, wall_seconds=0.1)
            )
            return future
        summary = {
            "status": "finished",
            "valid_bpc": valid,
            "test_bpc": valid + 0.01,
            "tokens_per_second": 1e4,
        }
        future.set_result(TrialOutcome(exit_code=0, summary=summary, wall_seconds=0.1))
        return future

    def shutdown(self) -> None:
        self.stopped = True


def fake_sweep(tmp_path: pathlib.Path, **fields: Any) -> Sweep:
    sweep = definition(
        axes={
            "variant": {
                "regular": {"lr_search.start": 2**-12},
                "unit": {
                    "model.scaling.type": "unit",
                    "model.residual.weighting": "mean",
                    "lr_search.start": 2**-9,
                },
            }
        },
        repeats=2,
        lr_search={"factor": 2, "threshold": 0.1, "max_points": 10},
        **fields,
    )
    return Sweep(sweep, expand(sweep), SweepOptions(out_dir=str(tmp_path / "sweep")))


def bowl(log2_rate: float, seed: int) -> float:
    """Validation BPC with its optimum at 2^-8, diverging above 2^-5; seeds add noise."""
    if log2_rate > -5:
        return math.inf
    return 2.0 + 0.05 * (log2_rate + 8) ** 2 + 0.001 * seed


def test_scheduler_runs_the_search_and_writes_results(tmp_path: pathlib.Path) -> None:
    sweep = fake_sweep(tmp_path)
    executor = FakeExecutor(bowl)
    assert sweep.run(executor, progress=False) == EXIT_OK
    out = tmp_path / "sweep"
    results = {
        r.config: r for r in sweep_results.summarise(list(SweepIndex(str(out / "sweep.jsonl"))))
    }
    assert results["variant=regular"].best_learning_rate == 2**-8
    assert results["variant=unit"].best_learning_rate == 2**-8
    # Both climb until -6, 0.2 worse than the best (-8); neither optimum is at the start.
    assert sorted(results["variant=regular"].scores) == [0, 1, 2, 3, 4, 5, 6]
    assert sorted(results["variant=unit"].scores) == [0, 1, 2, 3]
    table = (out / "table.md").read_text()
    assert "| regular |" in table and "95% CI" in table
    assert (out / "lr_sweep.png").stat().st_size > 1000
    with open(out / "results.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(executor.submitted) == 2 * (7 + 4)
    assert {row["state"] for row in rows} == {"finished"}
    # Trials share the sweep's WandB group and carry its tags.
    settings = json.loads(
        (out / "trials" / "variant=unit" / "lr-8.00-r1.settings.json").read_text()
    )
    assert settings["metadata"]["group"] == "t" and "variant=unit" in settings["metadata"]["tags"]
    assert settings["seed"] == 0 + 1  # no seed in the base: 0, plus the repeat


def test_rerun_skips_finished_trials(tmp_path: pathlib.Path) -> None:
    assert fake_sweep(tmp_path).run(FakeExecutor(bowl), progress=False) == EXIT_OK
    again = FakeExecutor(bowl)
    assert fake_sweep(tmp_path).run(again, progress=False) == EXIT_OK
    assert not again.submitted


def test_a_failing_trial_is_retried_and_does_not_stop_the_others(tmp_path: pathlib.Path) -> None:
    executor = FakeExecutor(bowl, fail=["variant=unit/lr-9.00-r0"])
    assert fake_sweep(tmp_path).run(executor, progress=False) == EXIT_OK
    assert executor.submitted.count("variant=unit/lr-9.00-r0") == 2
    record = record_of(
        SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl")), "variant=unit/lr-9.00-r0"
    )
    assert record.state == "finished" and record.attempts == 2


def test_a_trial_failing_past_its_retries_stops_only_its_configuration(
    tmp_path: pathlib.Path,
) -> None:
    trial = "variant=unit/lr-9.00-r0"
    executor = FakeExecutor(bowl, fail=[trial])
    executor.fail[trial] = 5
    assert fake_sweep(tmp_path).run(executor, progress=False) == EXIT_FAILED
    assert executor.submitted.count(trial) == 2  # 1 + --retries 1
    index = SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl"))
    assert record_of(index, trial).state == "failed"
    assert record_of(index, "variant=regular/lr-8.00-r0").state == "finished"
    assert (
        "Stopped after repeated crashes: variant=unit"
        in (tmp_path / "sweep" / "table.md").read_text()
    )


def test_diverged_trials_are_results_with_infinite_loss(tmp_path: pathlib.Path) -> None:
    executor = FakeExecutor(bowl)
    fake_sweep(tmp_path).run(executor, progress=False)
    index = SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl"))
    diverged = [r for r in index if r.state == "diverged"]
    assert diverged == []  # the bowl's search stops before -5 ...
    executor = FakeExecutor(lambda lr, seed: bowl(lr, seed) if lr < -10 else math.inf)
    other = tmp_path / "other"
    other.mkdir()
    assert fake_sweep(other).run(executor, progress=False) == EXIT_OK
    index = SweepIndex(str(other / "sweep" / "sweep.jsonl"))
    diverged = [r for r in index if r.state == "diverged"]
    assert diverged and all(r.valid_bpc == math.inf and r.attempts == 1 for r in diverged)


def test_interrupt_records_running_trials_and_resume_completes(tmp_path: pathlib.Path) -> None:
    # The first round (2 configurations x 2 repeats) completes; Ctrl-C lands on the 5th start.
    executor = FakeExecutor(bowl, interrupt_after=4)
    assert fake_sweep(tmp_path).run(executor, progress=False) == EXIT_INTERRUPTED
    assert executor.stopped
    index = SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl"))
    assert len([r for r in index if r.done]) == 4
    assert [r.state for r in index if not r.done] == ["interrupted"]
    resumed = FakeExecutor(bowl)
    assert fake_sweep(tmp_path).run(resumed, progress=False) == EXIT_OK
    assert len(resumed.submitted) == 2 * (7 + 4) - 4


def test_a_configuration_error_is_shown_never_retried_and_stops_its_configuration(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trial = "variant=unit/lr-9.00-r0"
    error = "error: model.sequence.heads x head_size = 2 x 64 = 128 does not fit hidden_size=64"
    bad = TrialOutcome(exit_code=2, summary=None, wall_seconds=0.1, error=error)
    executor = FakeExecutor(bowl, scripted={trial: [bad, bad]})
    assert fake_sweep(tmp_path).run(executor) == EXIT_USAGE
    assert executor.submitted.count(trial) == 1  # never retried, though --retries is 1
    # Its configuration stops: nothing beyond the first point's repeats (started together).
    unit = {t for t in executor.submitted if t.startswith("variant=unit/")}
    assert unit == {trial, "variant=unit/lr-9.00-r1"}
    console = capsys.readouterr().out
    assert f"configuration error in {trial}: {error}" in console
    index = SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl"))
    assert record_of(index, trial).state == "invalid" and record_of(index, trial).crashes == 0
    assert record_of(index, "variant=regular/lr-8.00-r0").state == "finished"
    assert (
        "Stopped by a configuration error: variant=unit"
        in (tmp_path / "sweep" / "table.md").read_text()
    )
    # A re-run does not retry it either.
    again = FakeExecutor(bowl)
    assert fake_sweep(tmp_path).run(again, progress=False) == EXIT_USAGE
    assert trial not in again.submitted


def test_interrupted_and_never_started_attempts_use_no_retry(tmp_path: pathlib.Path) -> None:
    trial = "variant=unit/lr-9.00-r0"
    interrupted = TrialOutcome(exit_code=EXIT_INTERRUPTED, summary=None, wall_seconds=0.1)
    killed_by_term = TrialOutcome(exit_code=-signal.SIGTERM, summary=None, wall_seconds=0.1)
    never = TrialOutcome(exit_code=None, summary=None, wall_seconds=0.0, how=NOT_STARTED)
    crash = TrialOutcome(exit_code=1, summary=None, wall_seconds=0.1, error="boom")
    # With --retries 1, one crash is allowed: everything else here must cost nothing.
    script = [never, interrupted, killed_by_term, never, crash, interrupted]
    executor = FakeExecutor(bowl, scripted={trial: list(script)})
    out = tmp_path / "sweep" / "trials" / "variant=unit" / "lr-9.00-r0"
    out.mkdir(parents=True)  # what the crashed attempt leaves; moved aside when it crashes
    assert fake_sweep(tmp_path).run(executor, progress=False) == EXIT_OK
    assert executor.submitted.count(trial) == len(script) + 1
    record = record_of(SweepIndex(str(tmp_path / "sweep" / "sweep.jsonl")), trial)
    assert record.state == "finished" and record.crashes == 1
    assert record.attempts == len(script) + 1 - 2  # the never-started ones launched nothing
    assert (out.parent / "lr-9.00-r0.crash1").is_dir()


def test_an_index_from_before_crash_counting_keeps_its_failures(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sweep.jsonl"
    old = {"trial": "a/x", "config": "a", "labels": {}, "learning_rate": 0.1, "point": 0}
    old.update(repeat=0, seed=1, out_dir="x", state="failed", attempts=2)
    path.write_text(
        json.dumps(old) + "\n" + json.dumps({**old, "trial": "a/y", "state": "interrupted"}) + "\n"
    )
    index = SweepIndex(str(path))
    assert record_of(index, "a/x").crashes == 2 and record_of(index, "a/y").crashes == 0


def test_a_different_sweep_in_the_same_folder_is_refused(tmp_path: pathlib.Path) -> None:
    fake_sweep(tmp_path).run(FakeExecutor(bowl), progress=False)
    with pytest.raises(SettingsError, match="different sweep"):
        fake_sweep(tmp_path, overrides={"training.steps": 5})


# -- index and results ------------------------------------------------------------------------- --


def test_index_round_trips_infinite_losses(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "sweep.jsonl")
    index = SweepIndex(path)
    record = TrialRecord(
        "a/lr-1-r0", "a", {"v": "a"}, 0.5, 0, 0, 1, "x", state="diverged", valid_bpc=math.inf
    )
    index.put(record)
    with open(path, encoding="utf-8") as file:
        json.loads(file.read())  # strict JSON (no Infinity literal)
    assert record_of(SweepIndex(path), "a/lr-1-r0").valid_bpc == math.inf


def test_table_marks_cells_within_the_ci_of_the_row_best() -> None:
    def records(config: str, labels: dict[str, str], tests: list[float]) -> list[TrialRecord]:
        return [
            TrialRecord(
                f"{config}/{k}",
                config,
                labels,
                0.01,
                0,
                k,
                k,
                "x",
                state="finished",
                valid_bpc=t,
                test_bpc=t,
            )
            for k, t in enumerate(tests)
        ]

    data = (
        records("a", {"m": "x", "v": "regular"}, [1.50, 1.51, 1.52])
        + records("b", {"m": "x", "v": "unit"}, [1.505, 1.515, 1.525])
        + records("c", {"m": "x", "v": "fp16"}, [1.70, 1.71, 1.72])
    )
    summary = sweep_results.summarise(data)
    ci = sweep_results.confidence_interval(summary)
    assert ci == pytest.approx(2 * 0.01 / math.sqrt(3))
    table = sweep_results.table_markdown(summary, ["m"], ["v"], "t")
    test_part, valid_part = table.split("Median validation BPC")
    assert "**1.510** ±0.010" in test_part and "**1.515**" in test_part
    assert "1.710 ±0.010" in test_part and "**1.710" not in table
    # The validation pivot: plain medians, the row's best in bold.
    assert "| x | **1.510** | 1.515 | 1.710 |" in valid_part


def single_record_trial(tmp_path: pathlib.Path) -> list[TrialRecord]:
    """One finished trial whose log holds a single training record and one validation."""
    out = tmp_path / "trial"
    out.mkdir()
    lines = [
        {"kind": "train_step", "step": 8, "bpc": 5.5},
        {"kind": "eval_valid", "step": 8, "bpc": 5.4},
    ]
    (out / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    record = TrialRecord("a/x", "a", {"v": "a"}, 0.01, 0, 0, 1, str(out))
    record.state, record.valid_bpc, record.test_bpc = "finished", 5.4, 5.45
    return [record]


def test_loss_curves_draw_a_trial_with_a_single_record(tmp_path: pathlib.Path) -> None:
    records = single_record_trial(tmp_path)
    figure = sweep_results.loss_curves_figure(records, sweep_results.summarise(records), "t")
    (axis,) = figure.axes
    (line,) = axis.get_lines()
    assert list(line.get_xdata()) == [8] and list(line.get_ydata()) == [5.5]
    assert line.get_marker() not in (None, "None", "", " ")  # one point needs a marker
    sweep_results.plot_loss_curves(
        str(tmp_path / "loss.png"), records, sweep_results.summarise(records), "t"
    )
    from matplotlib import colors, image  # pylint: disable=import-outside-toplevel

    pixels = image.imread(tmp_path / "loss.png")[..., :3]
    distances = abs(pixels - colors.to_rgb(line.get_color())).sum(axis=-1)
    assert (distances < 0.1).sum() > 10  # the marker's pixels are in the saved figure


def test_lr_sweep_puts_the_variants_of_a_row_on_one_panel() -> None:
    records = []
    for row in ("attention", "conv"):
        for variant in ("regular", "unit"):
            for point, valid in enumerate((2.0, 1.9)):
                config = f"model={row},variant={variant}"
                record = TrialRecord(
                    f"{config}/{point}", config, {"model": row, "variant": variant}, 2.0**point,
                    point, 0, 1, "x", state="finished", valid_bpc=valid, test_bpc=valid,
                )  # fmt: skip
                records.append(record)
    figure = sweep_results.lr_sweep_figure(records, ["model"])
    panels = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in panels] == ["model=attention", "model=conv"]
    for axis in panels:
        labelled = [line.get_label() for line in axis.get_lines()]
        assert labelled == ["regular", "unit"]
        assert [text.get_text() for text in axis.get_legend().get_texts()] == labelled


# -- end to end --------------------------------------------------------------------------------- -


def run_sweep(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_sweep.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def check_smoke_outputs(out: str) -> None:
    index = SweepIndex(os.path.join(out, "sweep.jsonl"))
    records = list(index)
    assert len(records) == 4 and all(r.state == "finished" for r in records)
    for record in records:
        assert os.path.exists(os.path.join(record.out_dir, "summary.json"))
        assert record.valid_bpc is not None and record.tokens_per_second is not None
        assert math.isfinite(record.valid_bpc) and record.tokens_per_second > 0
    for name in ("results.csv", "table.md", "lr_sweep.png", "loss_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0


@pytest.mark.slow  # ~55 s; by default test_sweep_recovery runs real drivers and trials
def test_smoke_sweep_local_executor(tmp_path: pathlib.Path) -> None:
    out = str(tmp_path / "smoke")
    result = run_sweep("smoke", "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    check_smoke_outputs(out)
    again = run_sweep("smoke", "--out", out, "--workers", "2")
    assert again.returncode == 0 and "finished " not in again.stdout


@pytest.mark.slow  # the local executor's smoke sweep covers the same path in the default suite
def test_smoke_sweep_ray_executor(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("ray")
    out = str(tmp_path / "smoke")
    result = run_sweep("smoke", "--out", out, "--executor", "ray", "--threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    check_smoke_outputs(out)


@pytest.mark.slow  # ~1.5 min; the scheduler's interrupt/resume logic is also tested above
def test_ctrl_c_midway_then_rerun_completes_without_repeating_finished_trials(
    tmp_path: pathlib.Path,
) -> None:
    out = str(tmp_path / "smoke")
    command = [
        sys.executable,
        os.path.join(ROOT, "run_sweep.py"),
        "smoke",
        "--out",
        out,
        "--workers",
        "1",
    ]
    process = subprocess.Popen(  # pylint: disable=consider-using-with
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    index_path = os.path.join(out, "sweep.jsonl")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if os.path.exists(index_path) and any(r.done for r in SweepIndex(index_path)):
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == EXIT_INTERRUPTED, output
    first = {r.trial: r for r in SweepIndex(index_path) if r.done}
    assert first and any(r.state == "interrupted" for r in SweepIndex(index_path))
    mtimes = {
        t: os.path.getmtime(os.path.join(r.out_dir, "summary.json")) for t, r in first.items()
    }
    result = run_sweep("smoke", "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    check_smoke_outputs(out)
    final = SweepIndex(index_path)
    for trial, mtime in mtimes.items():
        assert record_of(final, trial).attempts == 1
        assert (
            os.path.getmtime(os.path.join(record_of(final, trial).out_dir, "summary.json")) == mtime
        )


def test_fp8_small_and_paper_table_small_expand() -> None:
    fp8 = {c.key: c for c in expand(load_definition("fp8-small"))}
    assert len(fp8) == 7 and "format=fp8-scaled,variant=unit" not in fp8
    unit = fp8["format=fp8,variant=unit"].settings
    assert unit["model"]["scaling"]["type"] == "unit"
    assert unit["model"]["precision"]["activations"] == "e4m3"
    assert unit["model"]["precision"]["gradients"] == "e5m2"
    scaled = fp8["format=fp8-scaled,variant=regular"].settings
    assert scaled["model"]["precision"]["scaling"] == "dynamic"
    small = expand(load_definition("paper-table-small"))
    assert len(small) == 20
    simulated = [c for c in small if c.labels["dtype"] == "float16-sim"]
    assert len(simulated) == 12
    assert all(c.settings["model"]["precision"]["gradients"] == "float16" for c in simulated)


def test_fp16_underflow_small_expands_to_its_columns() -> None:
    configs = {c.key: c for c in expand(load_definition("fp16-underflow-small"))}
    assert len(configs) == 24  # 4 rows x 6 columns
    ftz = [c for c in configs.values() if c.labels["dtype"] == "float16-sim-ftz"]
    assert len(ftz) == 12
    assert all(c.settings["model"]["precision"]["subnormals"] is False for c in ftz)
    ieee = [c for c in configs.values() if c.labels["dtype"] == "float16-sim"]
    assert len(ieee) == 4 and all(c.labels["variant"] == "regular" for c in ieee)
    assert all(c.settings["model"]["precision"]["subnormals"] is True for c in ieee)
    scaled = [c for c in ftz if c.labels["loss_scale"] == "2048"]
    assert len(scaled) == 4 and all(c.settings["training"]["loss_scale"] == 2048 for c in scaled)
    searches = [c.lr_search for c in configs.values() if c.labels["variant"] == "unit"]
    assert len(searches) == 8 and None not in searches
    assert {(s.start, s.max_points) for s in searches if s is not None} == {(2**-4, 1)}
