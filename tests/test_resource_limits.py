"""Running out: a full disk (a real small tmpfs) and an impossible batch (real allocation
failure). Expected: one ``error:`` line saying what ran out and how much was asked for, the
summary written when there is room, never a torn log record, never a traceback or an abort."""

import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from experiment_helpers import describe, run, run_env, write_grammar_folder

from scmm.exit_codes import EXIT_FAILED, EXIT_USAGE
from scmm.experiments import cli, main
from scmm.experiments.hooks import Hook
from scmm.experiments.runner import Experiment
from scmm.io import scan_jsonl


@pytest.fixture(name="small_disk")
def fixture_small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs (needs permission to mount: root, as on CI; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes remain free (about: tmpfs counts pages)."""
    with open(disk / "filler", "wb") as file:
        block = b"\0" * 65536
        try:
            while True:
                file.write(block)
                file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - leave))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--preset", "smoke", "--data.path", str(data), "--output.wandb", "off",
        "--output.progress", "off", "--execution.xla", "false", "--seed", "2",
        "--training.steps", "16", "--training.valid_interval", "16",
        "--training.iterations_per_loop", "8", "--out", str(out), *extra,
    ]  # fmt: skip


def _untorn(path: Path) -> None:
    scan = scan_jsonl(path)
    assert scan.records and not scan.bad, scan.bad


def test_too_little_disk_for_the_checkpoints_is_refused_before_compute(
    small_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    write_grammar_folder(tmp_path / "data", train_chars=20_000, eval_chars=1_500)
    # hidden 256: a checkpoint of ~2.2 MB, three of which do not fit on 3 MB.
    args = _args(tmp_path / "data", small_disk / "run", "--model.hidden_size", "256")
    assert main([*args, "--model.sequence.head_size", "128"]) == EXIT_USAGE
    err = capsys.readouterr().err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert line.startswith("error: disk full: checkpointing (3 copies of about") and "free" in line
    assert "Traceback" not in err and not (small_disk / "run" / "log.jsonl").exists()


@pytest.mark.parametrize("leave", [40_000, 0])
def test_a_disk_that_fills_during_the_run_ends_in_one_error_line_and_no_torn_record(
    leave: int,
    small_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCMM_CACHE", str(tmp_path / "cache"))
    write_grammar_folder(tmp_path / "data", train_chars=20_000, eval_chars=1_500)
    out = small_disk / "run"
    invocation = cli.parse(_args(tmp_path / "data", out))
    assert invocation is not None
    experiment = Experiment(invocation.settings, str(out))
    # Something else fills the disk at step 8, before the checkpoint at 16.
    experiment.hooks.insert(0, Hook("fill", 8, lambda step: _fill(small_disk, leave)))
    assert experiment.run() == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [l for l in err.splitlines() if l.startswith("error: disk full")]
    assert errors, err
    _untorn(out / "log.jsonl")
    if leave:  # room for the small files: the summary says what happened
        summary = (out / "summary.json").read_text()
        assert '"status": "failed"' in summary and "disk full" in summary
        assert "checkpoints/best.npz needs" in errors[0]
    assert not (out / "checkpoints" / "last.npz").exists()


@pytest.mark.slow
def test_an_impossible_batch_is_one_out_of_memory_line(tmp_path: Path) -> None:
    # ~1 minute: XLA plans the whole step and asks for ~76 GiB at once.
    env = run_env(tmp_path / "cache")
    result = run(
        ["--preset", "smoke", "--out", str(tmp_path / "run"), "--output.wandb", "off",
         "--output.progress", "off", "--training.batch_sequences", "200000"],
        env,
    )  # fmt: skip
    assert result.returncode == EXIT_FAILED, describe(result)
    assert "Traceback" not in result.stderr and "double free" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert line.startswith("error: out of memory with batch 200000 x 64") and "GiB" in line
    _untorn(tmp_path / "run" / "log.jsonl")
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()
