"""Where trials run: a local pool of worker threads each driving one subprocess, or Ray.

Every trial is a separate ``python -m scmm.experiments`` process with its own output folder,
so a crash, an out-of-memory kill or a hung trial can never take the sweep down. It never
outlives its launcher unseen: its stdin is a pipe from the launching process and
``SCMM_STOP_WITH_PARENT=1`` makes it stop itself (checkpoint, exit 130) when that pipe closes,
i.e. when the launcher dies (``scmm.experiments.lifeline``). Before launching, a worker waits
until nobody else is in the trial's folder and adopts or resumes what it holds
(``trial_folder``). Parallel trials get ``threads`` CPU threads each (TensorFlow's intra/inter-op
pools and OpenMP, set through the environment before TensorFlow starts) so they do not
oversubscribe the cores.

Ray (``--executor ray``) runs the same subprocess as a Ray task with ``num_cpus=threads``
(and ``num_gpus`` when GPUs exist), on the local machine or a cluster (``--ray-address``).
On a multi-node cluster the sweep folder must be on a filesystem every node sees at the same
path: trials write their outputs there and the driver reads ``summary.json`` back from it.
Only a local Ray instance is exercised by the tests here. The launcher of a Ray trial is its
Ray worker process, which Ray ends when the driver dies; the trial's pipe closes with it.
"""

import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from ..exit_codes import EXIT_BUSY, EXIT_DIVERGED, EXIT_FINISHED, EXIT_USAGE
from ..experiments.lifeline import STOP_WITH_PARENT
from . import trial_folder


@dataclasses.dataclass
class TrialSpec:
    """Everything needed to run one trial anywhere."""

    trial: str
    settings_path: str
    """Full settings tree (JSON) written by the driver."""
    out_dir: str
    log_path: str
    threads: int


# How a trial's outcome came about.
STARTED = "started"
"""A process ran the trial from the beginning."""
RESUMED = "resumed"
"""A process continued a run the folder held (``--resume``)."""
ADOPTED = "adopted"
"""No process: the folder already held the run's end (e.g. finished by a killed driver's trial)."""
NOT_STARTED = "not-started"
"""No process: the sweep was stopping before the trial could start."""


@dataclasses.dataclass
class TrialOutcome:
    """What came back from one trial."""

    exit_code: Optional[int]
    """The run's exit code (for an adopted run, the code its summary implies); None when
    nothing ran (``NOT_STARTED``)."""
    summary: Optional[dict[str, Any]]
    wall_seconds: float
    error: str = ""
    how: str = STARTED
    """STARTED, RESUMED, ADOPTED or NOT_STARTED."""

    @property
    def launched(self) -> bool:
        """Whether a process ran (what counts as an attempt)."""
        return self.how in (STARTED, RESUMED)


def trial_environment(threads: int) -> dict[str, str]:
    """The environment of a trial process: thread pools capped at ``threads``; stops with
    its launcher."""
    env = dict(os.environ)
    env.update(
        TF_NUM_INTRAOP_THREADS=str(threads),
        TF_NUM_INTEROP_THREADS=str(max(1, min(2, threads))),
        OMP_NUM_THREADS=str(threads),
        TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    )
    env[STOP_WITH_PARENT] = "1"
    return env


_RUNNING: dict[str, subprocess.Popen[bytes]] = {}
_RUNNING_LOCK = threading.Lock()
# Set when the sweep stops: a worker thread that frees up afterwards must not start a trial.
_STOPPING = threading.Event()


def trial_command(spec: TrialSpec, resume: bool) -> list[str]:
    """``python -m scmm.experiments`` starting the trial, or resuming the run its folder holds."""
    command = [sys.executable, "-m", "scmm.experiments"]
    if resume:
        return [*command, "--resume", spec.out_dir]
    return [*command, "--config", spec.settings_path, "--out", spec.out_dir]


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Bring one trial to an end (blocking): adopt what its folder already holds, or run it.

    Waits first while another process is in the trial (``trial_folder.claim``); a run that
    finds the folder taken after all (exit 4) is the same situation, so it waits again.
    """
    start = time.perf_counter()
    os.makedirs(os.path.dirname(spec.log_path), exist_ok=True)
    while True:
        log = trial_folder.claim(spec.log_path, spec.out_dir, _STOPPING)
        if log is None:
            return TrialOutcome(None, None, 0.0, "sweep stopping: not started", NOT_STARTED)
        with log:
            leftover = trial_folder.inspect(spec.out_dir)
            if leftover.ended_with is not None:
                return TrialOutcome(
                    leftover.ended_with, leftover.summary, 0.0, _ended_error(leftover), ADOPTED
                )
            how = RESUMED if leftover.has_run else STARTED
            offset = log.separator(f"{how} {spec.trial}")
            exit_code = _launch(spec, trial_command(spec, resume=leftover.has_run), log)
            if exit_code is None:
                return TrialOutcome(None, None, 0.0, "sweep stopping: not started", NOT_STARTED)
            output = log.output_since(offset)
        if exit_code != EXIT_BUSY:
            break
    summary = trial_folder.read_summary(spec.out_dir)
    error = "" if exit_code in (EXIT_FINISHED, EXIT_DIVERGED) else _error_text(exit_code, output)
    return TrialOutcome(exit_code, summary, time.perf_counter() - start, error, how)


def _launch(spec: TrialSpec, command: list[str], log: trial_folder.TrialLog) -> Optional[int]:
    """Run ``command`` with the held log as its output; its exit code (None: not started)."""
    with _RUNNING_LOCK:
        if _STOPPING.is_set():
            return None
        # Own session: Ctrl-C on the sweep's terminal reaches the driver only, which then
        # stops trials itself and records them as interrupted. The stdin pipe is the trial's
        # lifeline: it closes when this process dies, however it dies.
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            command,
            stdin=subprocess.PIPE,
            stdout=log.file,
            stderr=subprocess.STDOUT,
            env=trial_environment(spec.threads),
            start_new_session=True,
        )
        _RUNNING[spec.trial] = process
    try:
        return process.wait()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.pop(spec.trial, None)
        if process.stdin is not None:
            process.stdin.close()


def _ended_error(leftover: trial_folder.Leftover) -> str:
    status = (leftover.summary or {}).get("status")
    return "" if status in ("finished", "diverged") else f"found ended with status {status}"


def _error_text(exit_code: int, output: str) -> str:
    """A configuration error's own ``error:`` line; otherwise the output's last lines."""
    lines = output.strip().splitlines()
    if exit_code == EXIT_USAGE:
        errors = [line for line in lines if line.startswith("error:")]
        if errors:
            return errors[-1]
    return " | ".join(lines[-5:])[-1000:]


def stop_running_trials(grace_seconds: float = 10.0) -> None:
    """SIGINT every trial process started here, then SIGKILL those still alive; no new
    trial starts in this process afterwards."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        processes = list(_RUNNING.values())
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


class LocalExecutor:
    """``workers`` trials at a time on this machine."""

    def __init__(self, workers: int):
        _STOPPING.clear()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)

    def submit(self, spec: TrialSpec) -> "concurrent.futures.Future[TrialOutcome]":
        """Start ``spec`` when a worker is free."""
        return self.pool.submit(run_trial, spec)

    def shutdown(self) -> None:
        """Stop running trials and the pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        stop_running_trials()
        self.pool.shutdown(wait=True)


class RayExecutor:
    """Trials as Ray tasks (one CPU slot of ``threads`` CPUs each, GPU-aware)."""

    def __init__(self, address: Optional[str], threads: int, gpus_per_trial: float):
        import ray  # pylint: disable=import-outside-toplevel

        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), log_to_driver=False, include_dashboard=False)
        if gpus_per_trial < 0:  # auto: one GPU per trial when the cluster has GPUs
            gpus_per_trial = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.remote = ray.remote(num_cpus=threads, num_gpus=gpus_per_trial, max_retries=0)(
            _ray_trial
        )
        self.pending: list[Any] = []

    def submit(self, spec: TrialSpec) -> "concurrent.futures.Future[TrialOutcome]":
        """Schedule ``spec`` on the cluster."""
        ref = self.remote.remote(spec)
        self.pending.append(ref)
        future: concurrent.futures.Future[TrialOutcome] = ref.future()
        return future

    def shutdown(self) -> None:
        """Cancel unfinished tasks (their processes get SIGINT) and disconnect."""
        for ref in self.pending:
            try:
                self.ray.cancel(ref)
            except Exception:  # pylint: disable=broad-except
                pass
        self.ray.shutdown()


def _ray_trial(spec: TrialSpec) -> TrialOutcome:
    """Runs inside a Ray worker process (possibly on another node)."""
    try:
        return run_trial(spec)
    except KeyboardInterrupt:  # ray.cancel raises this in the worker
        stop_running_trials()
        raise
