"""multi_worker: TF_CONFIG parsing, and two worker processes on 127.0.0.1 (one CPU each)
against mirrored over 2 logical CPUs in one process, with the same global batch.

Each worker is a process of its own (``multiworker_checks.py``, or ``run_experiment.py``);
ports are free ones the OS hands out. The GPU paths are not exercised here.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scmm.pedal.settings import ExecutionSettings, worker_task, writes_outputs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}


def free_ports(count: int) -> list[int]:
    """``count`` ports the OS says are free now (bound together, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG for worker ``index`` of a cluster on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def test_tf_config_is_parsed_and_checked() -> None:
    config = tf_config([1, 2], 1)
    task = worker_task({"TF_CONFIG": config})
    assert task is not None and (task.index, task.workers, task.is_chief) == (1, 2, False)
    assert worker_task({"TF_CONFIG": tf_config([1, 2], 0)}).is_chief  # type: ignore[union-attr]
    chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type":
                        "worker", "index": 0}})  # fmt: skip
    assert not worker_task({"TF_CONFIG": chief}).is_chief  # type: ignore[union-attr]
    assert worker_task({}, "mirrored") is None
    assert writes_outputs(ExecutionSettings(strategy="mirrored"), {})
    assert not writes_outputs(ExecutionSettings(strategy="multi_worker"), {"TF_CONFIG": config})
    for bad, fragment in [
        ({}, "needs the TF_CONFIG environment variable"),
        ({"TF_CONFIG": "{"}, "TF_CONFIG is not valid"),
        ({"TF_CONFIG": tf_config([1, 2], 2)}, "task worker:2 is not one of"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            worker_task(bad)


def _checks(tmp_path: Path) -> dict[str, Any]:
    ports = free_ports(2)
    workers = [
        subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, str(REPO / "tests" / "multiworker_checks.py"), "worker", str(i),
             *map(str, ports), str(tmp_path / f"worker{i}.npz")],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    mirrored = subprocess.run(
        [sys.executable, str(REPO / "tests" / "multiworker_checks.py"), "mirrored",
         str(tmp_path / "mirrored.npz")],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    results = [json.loads(out.splitlines()[-1][len("RESULT ") :]) for out, _ in outputs]
    arrays = {}
    for name in ("worker0", "worker1", "mirrored"):
        with np.load(tmp_path / f"{name}.npz") as loaded:
            arrays[name] = {key: loaded[key] for key in loaded.files}
    return {"results": results, **arrays}


def test_two_workers_match_each_other_and_mirrored(tmp_path: Path) -> None:
    """Two workers (TF_CONFIG, 127.0.0.1), unit-scaled AdamW and regular SGD-M, 3 compiled
    loops of 2 steps (25 s): the workers' weights are bitwise identical, and equal those of
    mirrored over 2 logical CPUs with the same global batch (measured: bitwise, 0.0)."""
    run = _checks(tmp_path)
    assert [r["chief"] for r in run["results"]] == [True, False]
    assert "multi_worker over 2 replicas in 2 workers" in run["results"][0]["description"]
    one, two, mirrored = run["worker0"], run["worker1"], run["mirrored"]
    assert sorted(one) == sorted(two) == sorted(mirrored)
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)  # bitwise
    for case in ("unit/adamw", "regular/sgdm"):
        assert int(one[f"{case}/step"]) == 6
        weights = [k for k in one if k.startswith(f"{case}/w")]
        diff = max(float(np.abs(one[k] - mirrored[k]).max()) for k in weights)
        assert diff < 1e-5, (case, diff)
        losses = float(np.abs(one[f"{case}/losses"] - mirrored[f"{case}/losses"]).max())
        assert losses < 1e-6, (case, losses)


SMOKE = [
    "--preset", "smoke", "--seed", "4", "--execution.xla", "false", "--output.progress", "off",
    "--output.wandb", "off", "--training.iterations_per_loop", "4", "--model.scaling.type",
    "unit", "--model.residual.weighting", "mean",
]  # fmt: skip


def _workers(outs: list[Path], *extra: str) -> list["subprocess.Popen[str]"]:
    """Two ``run_experiment.py --execution.strategy multi_worker`` processes (worker i writes
    to ``--out outs[i]``); with ``extra`` starting ``--resume``, ``run_experiment.py extra``."""
    ports = free_ports(2)
    resume = bool(extra) and extra[0] == "--resume"
    return [
        subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, str(REPO / "run_experiment.py"), *extra] if resume else
            [sys.executable, str(REPO / "run_experiment.py"), *SMOKE, "--out", str(out),
             "--execution.strategy", "multi_worker", *extra],
            cwd=REPO, env={**ENV, "TF_CONFIG": tf_config(ports, i)}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for i, out in enumerate(outs)
    ]


def _mirrored(out: Path, *steps: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "run_experiment.py"), *SMOKE, *steps, "--out", str(out),
         "--execution.strategy", "mirrored", "--execution.devices", "2"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _weights(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "checkpoints" / "last.npz") as arrays:
        return {k: arrays[k] for k in arrays.files if k.startswith("model/")}


def _losses(out: Path) -> list[float]:
    with open(out / "log.jsonl", encoding="utf-8") as file:
        log = [json.loads(line) for line in file]
    return [r["loss"] for r in log if r["kind"] == "train_step"]


@pytest.mark.slow
def test_run_experiment_two_workers_match_mirrored_and_only_the_chief_writes(
    tmp_path: Path,
) -> None:
    """``run_experiment.py`` with 2 workers (a calibrated unit-scaled model, 3 loops of 4
    steps, 50 s) ends where mirrored(2) does with the same global batch (measured: weights
    and losses bitwise equal); worker 1, given a folder of its own, writes nothing there."""
    steps = ["--training.steps", "12", "--training.valid_interval", "12"]
    chief, other = tmp_path / "chief", tmp_path / "other"
    workers = _workers([chief, other], *steps)
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    assert not other.exists()  # the non-chief wrote nothing (not even the folder)
    mirrored = tmp_path / "mirrored"
    _mirrored(mirrored, *steps)
    one, two = _weights(chief), _weights(mirrored)
    assert sorted(one) == sorted(two)
    diff = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    assert diff < 1e-5, diff
    losses = [_losses(chief), _losses(mirrored)]
    assert len(losses[0]) == 3 and np.abs(np.subtract(losses[0], losses[1])).max() < 1e-6, losses


@pytest.mark.slow
def test_killing_a_worker_fails_the_other_then_resume_reproduces(tmp_path: Path) -> None:
    """Worker 1 killed (SIGKILL) after 2 chunks: the chief exits 1 with one clear ``error:``
    line within 60 s (measured 4.6 s); both restarted with ``--resume`` on the shared folder
    end where an uninterrupted run does (weights within 1e-5)."""
    steps = ["--training.steps", "24", "--training.valid_interval", "8"]
    shared = tmp_path / "shared"
    workers = _workers([shared, shared], *steps, "--execution.timeout", "30")
    deadline = time.time() + 240
    while time.time() < deadline and not (shared / "checkpoints" / "last.npz").exists():
        time.sleep(0.1)
    assert (shared / "checkpoints" / "last.npz").exists()
    workers[1].kill()
    killed = time.time()
    _, err = workers[0].communicate(timeout=120)
    workers[1].communicate()
    took = time.time() - killed
    assert workers[0].returncode == 1 and took < 60, (workers[0].returncode, took, err[-2000:])
    assert "error: multi_worker: another worker stopped or cannot be reached" in err, err[-2000:]
    resumed = _workers([shared, shared], "--resume", str(shared))
    for worker in resumed:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
    reference = tmp_path / "uninterrupted"
    _mirrored(reference, *steps)  # equal to 2 workers (test above), and cheaper
    one, two = _weights(shared), _weights(reference)
    diff = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    assert diff < 1e-5, diff
    print(f"error {took:.1f} s after the kill; resumed weights within {diff:.2g}")
