"""Replicated execution against one device, in a process of its own (run by test_replicas).

TensorFlow fixes its logical devices when it first initialises, once per process, so this
script configures 4 logical CPU devices before anything else and prints one ``RESULT {json}``
line. ``python tests/replica_checks.py gradients`` or ``train [--xla] [--all]``.
"""

import contextlib
import json
import os
import sys
import unittest.mock
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 4
)

from replica_setup import LENGTH, OPTIMISERS, SEQUENCES, VOCAB, settings

from scmm.models import CharLM
from scmm.pedal import Execution, ExecutionSettings
from scmm.training import Trainer, TrainingSettings
from scmm.training import trainer as trainer_module


def execution(replicas: int, xla: bool) -> Execution:
    """One device for 1, mirrored over ``replicas`` logical CPUs otherwise."""
    strategy = "one" if replicas == 1 else "mirrored"
    return Execution(
        ExecutionSettings(device="cpu", strategy=strategy, devices=replicas, xla=xla)  # type: ignore
    )


def trainer(scheme: str, optimiser: str, replicas: int, xla: bool, parts: int = 1) -> Trainer:
    """A fresh model (same seed every time) and its trainer under ``replicas``."""
    run = execution(replicas, xla)
    training = TrainingSettings(
        batch_sequences=SEQUENCES, accumulation_steps=parts, optimiser=OPTIMISERS[optimiser]
    )
    with run.scope():
        model = CharLM(settings(scheme))
        model.scheme.assign_multipliers(model.parameters, training.optimiser.kind)
        return Trainer(model, training, run, model.parameters, vocab_size=VOCAB)


def batch(rng: np.random.Generator, *shape: int) -> dict[str, np.ndarray]:
    """Random tokens; a random mask, so replicas hold unequal token counts."""
    tokens = rng.integers(0, VOCAB, (*shape, LENGTH)).astype(np.int32)
    mask = rng.random((*shape, LENGTH)) < 0.7
    return {"tokens": tokens, "mask": mask}


def rms(arrays: list[np.ndarray]) -> float:
    """Root mean square over every entry of ``arrays``."""
    flat = np.concatenate([np.ravel(a).astype(np.float64) for a in arrays])
    return float(np.sqrt(np.mean(flat**2)))


def gradients() -> dict[str, Any]:
    """Gradient RMS ratio and largest difference, R replicas (x M micro-batches) vs one."""
    data = batch(np.random.default_rng(0), SEQUENCES)
    report: dict[str, Any] = {}
    for scheme in ("regular", "unit", "umup"):
        one = trainer(scheme, "sgdm", 1, xla=False).gradients(data)
        for replicas, parts in ((2, 1), (4, 1), (2, 2)):
            many = trainer(scheme, "sgdm", replicas, xla=False, parts=parts).gradients(data)
            report[f"{scheme}/R{replicas}xM{parts}"] = {
                "rms_ratio": rms(many) / rms(one),
                "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(many, one)),
                "max_ratio_error": max(abs(rms([a]) / rms([b]) - 1) for a, b in zip(many, one)),
            }
    # Control: the same replicated step traced without the batch split (each replica's
    # rows^-1/2 counting its local rows) sums to sqrt(R) x it: the check can see the defect.
    one = trainer("unit", "sgdm", 1, xla=False).gradients(data)
    with unittest.mock.patch.object(
        trainer_module, "batch_split", lambda _: contextlib.nullcontext()
    ):
        unsplit = trainer("unit", "sgdm", 2, xla=False).gradients(data)
    report["unit/R2xM1 without batch_split"] = {"rms_ratio": rms(unsplit) / rms(one)}
    return report


def train(xla: bool, everything: bool) -> dict[str, Any]:
    """3 compiled loops of 2 steps: mirrored over 2 vs one device with the same global batch."""
    rng = np.random.default_rng(1)
    loops = [batch(rng, 2, SEQUENCES) for _ in range(3)]
    cases = [("unit", "adamw"), ("regular", "sgdm")]
    if everything:
        cases = [(s, o) for s in ("regular", "unit", "umup") for o in ("adamw", "sgdm")]
    report: dict[str, Any] = {}
    for scheme, optimiser in cases:
        runs = [trainer(scheme, optimiser, r, xla) for r in (1, 2)]
        losses = [np.concatenate([t.train(b)["loss"] for b in loops]) for t in runs]
        weights = [[np.asarray(v.numpy()) for v in t.variables] for t in runs]
        start = trainer(scheme, optimiser, 1, xla)
        report[f"{scheme}/{optimiser}"] = {
            "weights_max_diff": max(float(np.abs(a - b).max()) for a, b in zip(*weights)),
            "loss_max_diff": float(np.abs(losses[0] - losses[1]).max()),
            "moved": max(
                float(np.abs(a - np.asarray(v.numpy())).max())
                for a, v in zip(weights[0], start.variables)
            ),
            "steps": [t.step for t in runs],
        }
    return report


if __name__ == "__main__":
    what = sys.argv[1]
    result = gradients() if what == "gradients" else train("--xla" in sys.argv, "--all" in sys.argv)
    print("RESULT " + json.dumps(result))
