"""A run folder's integrity: one holder at a time, interruption, kills between checkpoint
writes, resumes of finished runs, damaged checkpoints and logs, edited settings.

Runs are in-process (``scmm.experiments.main``, the command line without the interpreter
start-up) on a tiny model and data folder. A reference run snapshots its folder after every
validation; each test builds the state a kill or a damaged disk would leave from those
snapshots, resumes it, and compares with the reference bit for bit.
"""

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from experiment_helpers import describe, finish_run, run_env, start_run, write_grammar_folder

from scmm.exit_codes import EXIT_BUSY, EXIT_FAILED, EXIT_FINISHED, EXIT_INTERRUPTED, EXIT_USAGE
from scmm.experiments import checkpoints, cli, main
from scmm.experiments.hooks import Hook
from scmm.experiments.runner import Experiment
from scmm.folder_lock import FolderLock
from scmm.io import TEMP_PREFIX, read_jsonl

STEPS, INTERVAL = 32, 16


def _args(data: Path, out: Path) -> list[str]:
    return [
        "--preset", "smoke", "--data.path", str(data), "--output.wandb", "off",
        "--output.progress", "off", "--execution.xla", "false", "--seed", "4",
        "--training.steps", str(STEPS), "--training.valid_interval", str(INTERVAL),
        "--training.iterations_per_loop", "8", "--out", str(out),
    ]  # fmt: skip


def _records(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out / "log.jsonl", warn=False)


def _kinds(out: Path, kind: str) -> list[int]:
    return [r["step"] for r in _records(out) if r["kind"] == kind]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _records(out) if r["kind"] == "train_step"}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    model, optimiser, _ = checkpoints.load(str(path))
    return {
        **{f"m/{k}": v for k, v in model.items()},
        **{f"o/{k}": v for k, v in optimiser.items()},
    }


def _same_arrays(a: Path, b: Path) -> bool:
    left, right = _arrays(a), _arrays(b)
    return left.keys() == right.keys() and all(np.array_equal(left[k], right[k]) for k in left)


def _counts(path: Path) -> bool:
    """A file whose bytes are the run's (the lock file only names its latest holder)."""
    return path.is_file() and path.name != ".lock"


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


class Reference:
    """An uninterrupted run plus a copy of its folder after each validation."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        write_grammar_folder(self.data, train_chars=20_000, eval_chars=1_500)
        self.out = root / "reference"
        invocation = cli.parse(_args(self.data, self.out))
        assert invocation is not None
        experiment = Experiment(invocation.settings, str(self.out))
        experiment.hooks.append(Hook("snapshot", INTERVAL, self._snapshot, at_end=True))
        assert experiment.run() == EXIT_FINISHED
        state = checkpoints.load(str(self.out / "checkpoints" / "last.npz"))[2]
        assert state["best_step"] == STEPS, "the scenarios below need an improving validation"

    def _snapshot(self, step: int) -> None:
        shutil.copytree(self.out, self.root / f"at-{step}", ignore=shutil.ignore_patterns(".lock"))

    def folder_at(self, step: int, target: Path) -> Path:
        """A run folder as a SIGKILL right after the checkpoint at ``step`` leaves it."""
        shutil.copytree(self.root / f"at-{step}", target)
        return target


@pytest.fixture(name="reference", scope="module")
def fixture_reference(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Reference]:
    root = tmp_path_factory.mktemp("integrity")
    previous = os.environ.get("SCMM_CACHE")
    os.environ["SCMM_CACHE"] = str(root / "cache")
    yield Reference(root)
    if previous is None:
        os.environ.pop("SCMM_CACHE", None)
    else:
        os.environ["SCMM_CACHE"] = previous


def _resume(folder: Path, *extra: str) -> int:
    return main(["--resume", str(folder), "--output.progress", "off", *extra])


def _assert_matches_reference(folder: Path, reference: Reference) -> None:
    assert _losses(folder) == _losses(reference.out)
    for kind in ("eval_valid", "eval_train", "eval_test", "summary"):
        assert len(_kinds(folder, kind)) == len(_kinds(reference.out, kind)), kind
    got, want = _summary(folder), _summary(reference.out)
    for key in ("status", "step", "valid_bpc", "train_bpc", "test_bpc", "best_valid_loss"):
        assert got[key] == want[key], key
    for name in ("last.npz", "best.npz"):
        assert _same_arrays(folder / "checkpoints" / name, reference.out / "checkpoints" / name)


# 1. One process per run folder ----------------------------------------------------------------


def test_a_run_or_resume_on_a_held_folder_is_refused_naming_the_holder(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = reference.folder_at(INTERVAL, tmp_path / "held")

    def contents() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in held.rglob("*") if _counts(p)}

    before = contents()
    with FolderLock(str(held)):  # as a live run holds it
        assert _resume(held) == EXIT_BUSY
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
        assert main(_args(reference.data, held)) == EXIT_BUSY
        # The lock itself, not only the early check in main(): a racing process that passed
        # that check is refused when it takes the lock.
        invocation = cli.parse(["--resume", str(held)])
        assert invocation is not None
        with pytest.raises(RuntimeError, match="in use by process"):
            Experiment(invocation.settings, str(held), resume=True)
    assert contents() == before  # nothing touched
    fresh = tmp_path / "fresh"
    with FolderLock(str(fresh)):
        assert main(_args(reference.data, fresh)) == EXIT_BUSY
    assert not (fresh / "settings.json").exists()


# 3. Kills between checkpoint writes, resumes of ended runs ------------------------------------


def test_a_kill_between_best_and_last_leaves_best_current(
    reference: Reference, tmp_path: Path
) -> None:
    # best.npz is written first: a kill before last.npz leaves last one validation behind.
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    shutil.copy(reference.out / "checkpoints" / "best.npz", folder / "checkpoints" / "best.npz")
    assert _resume(folder) == EXIT_FINISHED
    _assert_matches_reference(folder, reference)


def test_a_stale_best_from_the_old_write_order_is_repaired_on_resume(
    reference: Reference, tmp_path: Path
) -> None:
    # The old order (last, then best): last.npz says it is the best, best.npz is older.
    folder = reference.folder_at(STEPS, tmp_path / "run")
    shutil.copy(
        reference.root / f"at-{INTERVAL}" / "checkpoints" / "best.npz",
        folder / "checkpoints" / "best.npz",
    )
    assert checkpoints.load(str(folder / "checkpoints" / "best.npz"))[2]["step"] == INTERVAL
    assert _resume(folder) == EXIT_FINISHED
    _assert_matches_reference(folder, reference)


def test_resume_removes_temporaries_of_interrupted_writes(
    reference: Reference, tmp_path: Path
) -> None:
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    strays = [
        folder / "checkpoints" / f"{TEMP_PREFIX}last.npz.x1",
        folder / f"{TEMP_PREFIX}summary.json.x2",
    ]
    for stray in strays:
        stray.write_bytes(b"half a file")
    assert _resume(folder) == EXIT_FINISHED
    assert not any(stray.exists() for stray in strays)
    _assert_matches_reference(folder, reference)


def test_resuming_a_finished_run_changes_nothing(reference: Reference, tmp_path: Path) -> None:
    folder = tmp_path / "done"
    shutil.copytree(reference.out, folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if _counts(p)}
    assert _resume(folder) == EXIT_FINISHED
    assert {p: p.read_bytes() for p in folder.rglob("*") if _counts(p)} == before


def test_a_kill_after_the_final_checkpoint_resumes_without_duplicate_records(
    reference: Reference, tmp_path: Path
) -> None:
    folder = reference.folder_at(STEPS, tmp_path / "run")
    # The kill came during the final train/test evaluations: some records, no summary.
    lines = (reference.out / "log.jsonl").read_text().splitlines(keepends=True)
    (folder / "log.jsonl").write_text("".join(l for l in lines if '"summary"' not in l))
    assert _resume(folder) == EXIT_FINISHED
    _assert_matches_reference(folder, reference)
    assert _kinds(folder, "resume") == [STEPS]


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(
    reference: Reference, tmp_path: Path
) -> None:
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    shutil.rmtree(folder / "checkpoints")
    lines = (folder / "log.jsonl").read_text().splitlines(keepends=True)
    (folder / "log.jsonl").write_text("".join(lines[:3]))  # settings, stats, step 8
    assert _resume(folder) == EXIT_FINISHED
    _assert_matches_reference(folder, reference)
    kinds = [r["kind"] for r in _records(folder)]
    assert kinds == [r["kind"] for r in _records(reference.out)]  # one settings record, no resume
    assert len((folder / "log.jsonl.dropped").read_text().splitlines()) == 4  # header + 3 lines


def test_steps_below_the_checkpoint_are_refused(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = reference.folder_at(STEPS, tmp_path / "run")
    assert _resume(folder, "--training.steps", str(INTERVAL)) == EXIT_USAGE
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"step {STEPS}, past training.steps={INTERVAL}" in error


# 4. Damaged state ------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes((b ^ 0x5A) for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _garble, _empty])
def test_a_damaged_last_checkpoint_is_one_error_that_offers_best(
    damage: Any, reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = reference.folder_at(STEPS, tmp_path / "run")
    last = folder / "checkpoints" / "last.npz"
    damage(last)
    assert _resume(folder) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert str(last) in line and "damaged" in line
    assert f"--resume {folder} --from best" in line  # best.npz is intact: offered
    assert _kinds(folder, "error") == [None] and _summary(folder)["status"] == "failed"
    # The offer works, and from the best checkpoint (here the last step) the result is exact.
    assert _resume(folder, "--from", "best") == EXIT_FINISHED
    _assert_matches_reference(folder, reference)


def test_a_checkpoint_for_other_settings_names_the_mismatch(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    for path in (folder / "settings.json", folder / "checkpoints" / "settings.json"):
        tree = json.loads(path.read_text())
        tree["model"]["token"]["multiple"] = 3.0  # both copies agree; the arrays do not
        path.write_text(json.dumps(tree))
    assert _resume(folder) == EXIT_FAILED
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert "does not fit the model" in line and "has shape" in line and "last.npz" in line


def test_a_malformed_log_line_is_set_aside_with_a_warning_and_nothing_valid_is_lost(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    log = folder / "log.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + "\n"  # a damaged record in the middle
    log.write_text("".join(lines) + '{"kind": "train_st')  # and a torn last line
    assert _resume(folder) == EXIT_FINISHED
    err = capsys.readouterr().err
    assert "warning: unreadable log line(s)" in err and "line 3" in err
    dropped = (folder / "log.jsonl.dropped").read_text()
    assert lines[2] in dropped and '{"kind": "train_st' in dropped
    # Every record but the damaged one is the reference's (times aside).
    got = [(r["kind"], r["step"]) for r in _records(folder) if r["kind"] != "resume"]
    want = [(r["kind"], r["step"]) for r in _records(reference.out)]
    assert got == want[:2] + want[3:]


# 5. Edited settings ----------------------------------------------------------------------------


def test_settings_edited_after_the_checkpoint_are_refused(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = reference.folder_at(INTERVAL, tmp_path / "run")
    path = folder / "settings.json"
    tree = json.loads(path.read_text())
    tree["training"]["optimiser"]["learning_rate"] = 0.5
    path.write_text(json.dumps(tree))
    assert _resume(folder) == EXIT_USAGE
    (line,) = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert "training.optimiser.learning_rate is 0.5" in line and "changed after" in line
    # What the command line may change when resuming stays allowed in the file too.
    tree["training"]["optimiser"]["learning_rate"] = json.loads(
        (folder / "checkpoints" / "settings.json").read_text()
    )["training"]["optimiser"]["learning_rate"]
    tree["output"]["progress_interval"] = 5.0
    path.write_text(json.dumps(tree))
    assert _resume(folder) == EXIT_FINISHED


# 8. Interruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_current_step_and_the_resume_is_exact(
    signum: int, reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    invocation = cli.parse(_args(reference.data, out))
    assert invocation is not None
    experiment = Experiment(invocation.settings, str(out))
    # A real signal, delivered to this process mid-run (between steps 8 and 16; not a
    # validation step, so the checkpoint is the interruption's own).
    experiment.hooks.append(Hook("signal", 8, lambda step: os.kill(os.getpid(), signum)))
    assert experiment.run() == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    stdout = capsys.readouterr().out
    assert f"resume with: python run_experiment.py --resume {out}" in stdout
    assert _summary(out)["status"] == "interrupted" and _summary(out)["step"] == 8
    assert checkpoints.load(str(out / "checkpoints" / "last.npz"))[2]["step"] == 8
    assert _kinds(out, "interrupted") == [8]
    assert _resume(out) == EXIT_FINISHED
    _assert_matches_reference(out, reference)


@pytest.mark.slow
def test_two_processes_started_together_on_one_folder(reference: Reference, tmp_path: Path) -> None:
    # The probe as a user meets it: two real runs with the same --out, different seeds.
    out = tmp_path / "shared"
    env = run_env(tmp_path / "cache")
    args = [a for a in _args(reference.data, out) if a != "4"]  # drop the seed value
    args.remove("--seed")
    first = start_run([*args, "--seed", "7"], env)
    second = start_run([*args, "--seed", "8"], env)
    results = [finish_run(first), finish_run(second)]
    codes = sorted(r.returncode for r in results)
    assert codes in ([EXIT_FINISHED, EXIT_BUSY], [EXIT_FINISHED, EXIT_USAGE]), [
        describe(r) for r in results
    ]  # refused as busy while the other runs, or as "already holds a run" once it is done
    winner = next(r for r in results if r.returncode == EXIT_FINISHED)
    seed = 7 if winner is results[0] else 8
    loser = next(r for r in results if r is not winner)
    assert "in use by process" in loser.stderr or "already holds a run" in loser.stderr
    # The folder is one run's, all of it.
    assert json.loads((out / "settings.json").read_text())["seed"] == seed
    assert json.loads((out / "checkpoints" / "settings.json").read_text())["seed"] == seed
    assert checkpoints.load(str(out / "checkpoints" / "last.npz"))[2]["seed"] == seed
    assert [r["kind"] for r in _records(out)].count("settings") == 1
    assert _kinds(out, "train_step") == [8, 16, 24, 32]
