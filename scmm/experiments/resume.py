"""A run folder before a run: is it free for a new run, has its run ended, and which
checkpoint a resume continues from.

Everything here runs before any compute, under the run folder's lock, so that a damaged
checkpoint, a checkpoint for other settings, or a run that already ended is one clear error
(or one line saying so) instead of a traceback half-way into setting up.
"""

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Mapping, Optional

import numpy as np

from ..io import atomic_path, write_json
from . import checkpoints
from .checkpoints import CheckpointError
from .trackers import JsonlTracker

# Statuses after which there is nothing to resume (a diverged run would diverge again).
TERMINAL = ("finished", "diverged")


def default_out_dir(label: str) -> str:
    """``out/<YYYYmmdd-HHMMSS>-<label>`` (the preset or run name)."""
    return os.path.join("out", f"{time.strftime('%Y%m%d-%H%M%S')}-{label or 'run'}")


def check_new_folder(out_dir: str) -> None:
    """A new run's folder must not hold a run already (checked again under the lock)."""
    if os.path.exists(os.path.join(out_dir, "settings.json")):
        raise FileExistsError(
            f"--out {out_dir!r} already holds a run; use --resume {out_dir} to continue it or"
            " choose another folder"
        )


@dataclasses.dataclass
class ResumePoint:
    """A loaded, verified checkpoint."""

    path: str
    model: dict[str, np.ndarray]
    optimiser: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        """The optimiser step the checkpoint was written at."""
        return int(self.state["step"])


def ended_run(out_dir: str, steps: int) -> Optional[dict[str, Any]]:
    """The summary of a run that already ended (finished at ``steps`` or more, or diverged)."""
    path = os.path.join(out_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as file:
            summary = json.load(file)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # no (readable) summary: the run did not end cleanly
    if not isinstance(summary, dict):
        return None
    status = summary.get("status")
    if status == "diverged" or (status == "finished" and int(summary.get("step", -1)) >= steps):
        return summary
    return None


def _verified(
    path: str, model: Mapping[str, np.ndarray], optimiser: Mapping[str, np.ndarray]
) -> ResumePoint:
    model_arrays, optimiser_arrays, state = checkpoints.load(path)
    checkpoints.check_shapes(path, model_arrays, model, "the model settings.json describes")
    checkpoints.check_shapes(
        path, optimiser_arrays, optimiser, "the optimiser settings.json describes"
    )
    return ResumePoint(path, model_arrays, optimiser_arrays, state)


def _offer_best(out_dir: str, model: Mapping[str, np.ndarray], optimiser: Any) -> str:
    best = checkpoints.path_of(out_dir, "best")
    if not os.path.isfile(best):
        return " (there is no best.npz to fall back on)"
    try:
        point = _verified(best, model, optimiser)
    except CheckpointError as error:
        return f" (best.npz cannot be used either: {error})"
    return (
        f". {best} (step {point.step}) is intact: continue from it with"
        f" --resume {out_dir} --from best"
    )


def load_point(
    out_dir: str,
    source: str,
    model: Mapping[str, np.ndarray],
    optimiser: Mapping[str, np.ndarray],
    steps: int,
) -> Optional[ResumePoint]:
    """The verified checkpoint ``source`` (last | best) of ``out_dir``; None when the run was
    killed before its first checkpoint (it then starts again from step 0).

    ``model``/``optimiser`` are the freshly built run's arrays: the checkpoint must have
    exactly their names and shapes. ``steps`` is ``training.steps``: a checkpoint past it is
    refused (the run cannot go back).
    """
    path = checkpoints.path_of(out_dir, source)
    if not os.path.isfile(path):
        if source == "best":
            raise CheckpointError(f"--from best: there is no {path}")
        return None
    try:
        point = _verified(path, model, optimiser)
    except CheckpointError as error:
        offer = _offer_best(out_dir, model, optimiser) if source == "last" else ""
        raise CheckpointError(f"{error}{offer}") from None
    if point.step > steps:  # bad input, not bad state
        raise ValueError(
            f"{path} is at step {point.step}, past training.steps={steps}; a run cannot go"
            f" back (expected --training.steps >= {point.step})"
        )
    return point


def repair_best(out_dir: str, point: ResumePoint) -> bool:
    """Make ``best.npz`` agree with a ``last.npz`` that says it is itself the best.

    A checkpoint records the step of the best validation (``best_step``); when that is its own
    step and ``best.npz`` holds another step (a kill between the two writes, by an scmm that
    wrote last.npz first), ``last.npz`` is copied over it. True when it repaired.
    """
    if os.path.basename(point.path) != "last.npz" or point.state.get("best_step") != point.step:
        return False
    best = checkpoints.path_of(out_dir, "best")
    try:
        best_step = checkpoints.load(best)[2]["step"] if os.path.isfile(best) else None
    except CheckpointError:
        best_step = None
    if best_step == point.step:
        return False
    with atomic_path(best) as temp:
        shutil.copyfile(point.path, temp)
    return True


def record_refusal(out_dir: str, message: str) -> None:
    """An ``error`` record and a ``failed`` summary for a resume refused before compute."""
    tracker = JsonlTracker(os.path.join(out_dir, "log.jsonl"))
    try:
        tracker.log({"time": time.time(), "kind": "error", "step": None, "message": message})
    finally:
        tracker.finish("failed")
    summary = {"status": "failed", "error": message, "out_dir": os.path.abspath(out_dir)}
    write_json(os.path.join(out_dir, "summary.json"), summary)
