"""Sweep recovery with real processes: trials stop when their driver is killed (SIGKILL), a
re-run waits for a trial still in its folder and adopts its result, a second driver on one
sweep folder is refused, and (slow) a sweep whose driver is SIGKILLed mid-way and re-run ends
with the same index as an uninterrupted one."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from scmm.exit_codes import EXIT_BUSY
from scmm.folder_lock import FolderLock
from scmm.io import write_json
from scmm.sweeps import cli as sweep_cli
from scmm.sweeps.definition import definition_from_dict, expand
from scmm.sweeps.executors import ADOPTED, LocalExecutor, TrialSpec
from scmm.sweeps.index import SweepIndex
from scmm.sweeps.trial_folder import log_in_use

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two configurations, one trial each, a few steps of the smoke model: the cheapest real sweep.
TINY_SWEEP: dict[str, Any] = {
    "name": "tiny",
    "base": "smoke",
    "overrides": {
        "training.steps": 32,
        "training.valid_interval": 16,
        "training.iterations_per_loop": 8,
        "output.wandb": "off",
        "output.train_eval_chars": 2**10,
        "model.residual.weighting": "mean",
        "seed": 3,
    },
    "axes": {"variant": {"regular": {}, "unit": {"model.scaling.type": "unit"}}},
}


def environment() -> dict[str, str]:
    """The test's environment for child processes: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}


def processes_in(path: str) -> list[int]:
    """Pids of live processes whose command line names ``path`` (the trials of one test)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                arguments = file.read().split(b"\0")
            with open(f"/proc/{entry}/stat", encoding="utf-8") as file:
                zombie = file.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and any(path.encode() in argument for argument in arguments):
            pids.append(int(entry))
    return pids


def wait_until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.2)


def kill_leftovers(path: str) -> None:
    """SIGKILL what this test started under ``path`` (only reached when a test failed)."""
    for pid in processes_in(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trial_spec(tmp_path: pathlib.Path, steps: int) -> TrialSpec:
    """A spec for one smoke trial of ``steps`` steps in ``tmp_path/trial``."""
    config = expand(definition_from_dict(TINY_SWEEP, "tiny"), {"training.steps": steps})[0]
    out_dir = str(tmp_path / "trial")
    write_json(f"{out_dir}.settings.json", config.settings)
    return TrialSpec("tiny/trial", f"{out_dir}.settings.json", out_dir, f"{out_dir}.log", 1)


def test_a_trial_stops_when_its_driver_is_killed(tmp_path: pathlib.Path) -> None:
    spec = trial_spec(tmp_path, steps=10**6)  # would train for hours if left alone
    driver_code = textwrap.dedent(f"""
        from scmm.sweeps.executors import TrialSpec, run_trial
        run_trial(TrialSpec(*{[spec.trial, spec.settings_path, spec.out_dir, spec.log_path]}, 1))
        """)
    driver = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", driver_code], env=environment(), cwd=ROOT
    )
    try:
        wait_until(
            lambda: [p for p in processes_in(spec.out_dir) if p != driver.pid],
            120,
            "the trial process",
        )
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        # The trial (own session, so no terminal or process-group signal reaches it) notices
        # that its stdin pipe closed and stops itself.
        wait_until(lambda: not processes_in(spec.out_dir), 120, "the orphaned trial to stop")
        # An exiting process drops its memory (so its /proc cmdline reads empty) before it
        # closes its files: the log's lock can outlive the last sight of the process by moments.
        wait_until(lambda: not log_in_use(spec.log_path), 30, "the trial log to be released")
        summary_path = os.path.join(spec.out_dir, "summary.json")
        if os.path.exists(summary_path):  # it got far enough to say how it ended
            with open(summary_path, encoding="utf-8") as file:
                assert json.load(file)["status"] != "finished"
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_leftovers(spec.out_dir)


HOLDER = """
import fcntl, json, os, sys, time
from scmm.folder_lock import FolderLock
what, out_dir, log_path = sys.argv[1:]
if what == "log":  # a trial of a killed driver: it still writes the log it inherited
    log = open(log_path, "ab")
    fcntl.flock(log.fileno(), fcntl.LOCK_EX)
else:  # a run holding the folder itself (e.g. started by hand with --resume)
    lock = FolderLock(out_dir).acquire()  # held until this process ends
print("ready", flush=True)
time.sleep(1.5)
with open(os.path.join(out_dir, "summary.json"), "w") as file:
    json.dump({"status": "finished", "step": 32, "valid_bpc": 4.5, "test_bpc": 4.6}, file)
"""


@pytest.mark.parametrize("what", ["log", "folder"])
def test_a_rerun_waits_for_a_live_trial_and_adopts_its_result(
    tmp_path: pathlib.Path, what: str
) -> None:
    spec = trial_spec(tmp_path, steps=32)
    os.makedirs(spec.out_dir)
    # The folder holds a started run: without waiting, the worker would resume it alongside.
    write_json(os.path.join(spec.out_dir, "settings.json"), {"seed": 3})
    holder = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", HOLDER, what, spec.out_dir, spec.log_path],
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        start = time.monotonic()
        outcome = LocalExecutor(1).submit(spec).result(timeout=60)
        assert time.monotonic() - start > 1.0  # it waited for the holder to end
        assert outcome.how == ADOPTED and outcome.exit_code == 0
        assert outcome.summary is not None and outcome.summary["valid_bpc"] == 4.5
        with open(spec.log_path, encoding="utf-8") as file:
            assert "=====" not in file.read()  # no process was launched into the folder
    finally:
        holder.kill()
        holder.wait()
        kill_leftovers(spec.out_dir)


def test_a_second_driver_on_a_sweep_folder_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "tiny.json"
    sweep_file.write_text(json.dumps(TINY_SWEEP))
    out = tmp_path / "sweep"
    with FolderLock(str(out)):  # the first driver
        code = sweep_cli.main([str(sweep_file), "--out", str(out), "--workers", "1"])
    assert code == EXIT_BUSY
    assert f"error: '{out}' is in use by process {os.getpid()}" in capsys.readouterr().err
    assert not (out / "trials").exists() and not (out / "sweep.jsonl").exists()


# Everything a sweep's result depends on (not times, pids, attempts or folders' history).
DETERMINISTIC = ("trial", "state", "learning_rate", "point", "repeat", "seed", "step")
RESULTS = ("valid_bpc", "test_bpc", "train_bpc")


def index_results(out: pathlib.Path) -> dict[str, dict[str, Any]]:
    records = SweepIndex(str(out / "sweep.jsonl"))
    return {
        r.trial: {
            **{k: getattr(r, k) for k in DETERMINISTIC},
            **{k: getattr(r, k) for k in RESULTS},
        }
        for r in records
    }


@pytest.mark.slow  # two real sweeps and a re-run: several minutes on a loaded 2-core machine
def test_a_sweep_killed_mid_way_and_rerun_ends_with_the_uninterrupted_index(
    tmp_path: pathlib.Path,
) -> None:
    sweep_file = tmp_path / "tiny.json"
    sweep_file.write_text(json.dumps(TINY_SWEEP))
    command = [sys.executable, "run_sweep.py", str(sweep_file), "--workers", "2"]
    uninterrupted, killed = tmp_path / "a", tmp_path / "b"
    reference = subprocess.run(
        [*command, "--out", str(uninterrupted)],
        env=environment(),
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert reference.returncode == 0
    driver = subprocess.Popen(  # pylint: disable=consider-using-with
        [*command, "--out", str(killed)], env=environment(), cwd=ROOT
    )
    try:
        # Kill once the trials are training (they have logged their first steps).
        def training() -> bool:
            logs = killed.glob("trials/*/*/log.jsonl")
            return any('"train_step"' in log.read_text() for log in logs)

        wait_until(training, 300, "the trials to train")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        rerun = subprocess.run(
            [*command, "--out", str(killed)],
            env=environment(),
            cwd=ROOT,
            timeout=600,
            capture_output=True,
            text=True,
            check=False,
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "Traceback" not in rerun.stdout + rerun.stderr
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_leftovers(str(killed))
    expected, got = index_results(uninterrupted), index_results(killed)
    assert set(got) == set(expected)
    for trial, record in expected.items():
        assert record["state"] == "finished" and math.isfinite(record["valid_bpc"])
        assert got[trial] == record, trial  # losses equal too: resume is exact
