"""Where trials run: a local pool of worker threads each driving one subprocess, or Ray.

Every trial is a separate ``python -m scmm.experiments`` process with its own output folder,
so a crash, an out-of-memory kill or a hung trial can never take the sweep down. Parallel
trials get ``threads`` CPU threads each (TensorFlow's intra/inter-op pools and OpenMP, set
through the environment before TensorFlow starts) so they do not oversubscribe the cores.

Ray (``--executor ray``) runs the same subprocess as a Ray task with ``num_cpus=threads``
(and ``num_gpus`` when GPUs exist), on the local machine or a cluster (``--ray-address``).
On a multi-node cluster the sweep folder must be on a filesystem every node sees at the same
path: trials write their outputs there and the driver reads ``summary.json`` back from it.
Only a local Ray instance is exercised by the tests here.
"""

import concurrent.futures
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from ..exit_codes import EXIT_DIVERGED, EXIT_FINISHED


@dataclasses.dataclass
class TrialSpec:
    """Everything needed to run one trial anywhere."""

    trial: str
    settings_path: str
    """Full settings tree (JSON) written by the driver."""
    out_dir: str
    log_path: str
    threads: int


@dataclasses.dataclass
class TrialOutcome:
    """What came back from one trial process."""

    exit_code: int
    summary: Optional[dict[str, Any]]
    wall_seconds: float
    error: str = ""


def trial_environment(threads: int) -> dict[str, str]:
    """The environment of a trial process: thread pools capped at ``threads``."""
    env = dict(os.environ)
    env.update(
        TF_NUM_INTRAOP_THREADS=str(threads),
        TF_NUM_INTEROP_THREADS=str(max(1, min(2, threads))),
        OMP_NUM_THREADS=str(threads),
        TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    )
    return env


_RUNNING: dict[str, subprocess.Popen[bytes]] = {}
_RUNNING_LOCK = threading.Lock()
# Set when the sweep stops: a worker thread that frees up afterwards must not start a trial.
_STOPPING = threading.Event()
EXIT_NOT_STARTED = -2


def run_trial(spec: TrialSpec) -> TrialOutcome:
    """Run one trial process to completion (blocking) and read its summary."""
    command = [
        sys.executable,
        "-m",
        "scmm.experiments",
        "--config",
        spec.settings_path,
        "--out",
        spec.out_dir,
    ]
    start = time.perf_counter()
    os.makedirs(os.path.dirname(spec.log_path), exist_ok=True)
    with open(spec.log_path, "ab") as log:
        with _RUNNING_LOCK:
            if _STOPPING.is_set():
                return TrialOutcome(EXIT_NOT_STARTED, None, 0.0, "sweep stopping: not started")
            # Own session: Ctrl-C on the sweep's terminal reaches the driver only, which then
            # stops trials itself and records them as interrupted.
            process = subprocess.Popen(  # pylint: disable=consider-using-with
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=trial_environment(spec.threads),
                start_new_session=True,
            )
            _RUNNING[spec.trial] = process
        try:
            exit_code = process.wait()
        finally:
            with _RUNNING_LOCK:
                _RUNNING.pop(spec.trial, None)
    wall = time.perf_counter() - start
    summary = read_summary(spec.out_dir)
    error = "" if exit_code in (EXIT_FINISHED, EXIT_DIVERGED) else _log_tail(spec.log_path)
    return TrialOutcome(exit_code=exit_code, summary=summary, wall_seconds=wall, error=error)


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


def read_summary(out_dir: str) -> Optional[dict[str, Any]]:
    """The trial's summary.json, or None if it never got that far."""
    path = os.path.join(out_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        summary: dict[str, Any] = json.load(file)
    return summary


def _log_tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            tail = file.read().strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(tail)[-1000:]


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
