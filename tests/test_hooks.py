"""Periodic hooks of a run: when they run, where compiled chunks end, and that a new hook is
added to a run without touching its loop."""

import json
from pathlib import Path

import pytest
from experiment_helpers import write_grammar_folder

from scmm.experiments import cli
from scmm.experiments.hooks import Hook, chunk_length, run_due
from scmm.experiments.runner import Experiment


def test_chunks_end_at_the_next_boundary_of_any_chunk_ending_hook() -> None:
    hooks = [
        Hook("validation", 8, lambda step: None, at_end=True),
        Hook("probe", 5, lambda step: None),
        Hook("progress", 1, lambda step: None, ends_chunk=False),
    ]
    ends, step = [], 0
    while step < 23:
        step += chunk_length(step, 23, 16, hooks)
        ends.append(step)
    assert ends == [5, 8, 10, 15, 16, 20, 23]
    assert chunk_length(0, 100, 3, hooks[2:]) == 3  # progress never shortens a chunk


def test_hooks_run_when_due_in_list_order() -> None:
    calls: list[tuple[str, int]] = []
    hooks = [
        Hook("a", 4, lambda step: calls.append(("a", step)), at_end=True),
        Hook("b", 2, lambda step: calls.append(("b", step))),
    ]
    for step in (2, 4, 5):
        run_due(hooks, step, last_step=5)
    assert calls == [("b", 2), ("a", 4), ("b", 4), ("a", 5)]
    with pytest.raises(ValueError, match="hook 'c': every must be >= 1, got 0"):
        Hook("c", 0, lambda step: None)


def test_a_new_hook_joins_a_run_without_touching_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    write_grammar_folder(tmp_path / "data", train_chars=20_000, eval_chars=2_000)
    out = tmp_path / "run"
    argv = [
        "--preset", "smoke", "--data.path", str(tmp_path / "data"),
        "--output.wandb", "off", "--output.progress", "off",
        "--execution.xla", "false", "--training.steps", "12", "--training.valid_interval", "8",
        "--training.iterations_per_loop", "16", "--out", str(out),
    ]  # fmt: skip
    invocation = cli.parse(argv)
    assert invocation is not None
    experiment = Experiment(invocation.settings, str(out))
    seen: list[tuple[int, int]] = []
    experiment.hooks.append(
        Hook("probe", 5, lambda step: seen.append((step, experiment.trainer.step)))
    )
    assert experiment.run() == 0
    assert seen == [(5, 5), (10, 10)]  # the weights are at exactly the hook's step
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train_step"] == [5, 8, 10, 12]
    assert [r["step"] for r in records if r["kind"] == "eval_valid"] == [8, 12]  # at_end too
