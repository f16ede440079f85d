"""Multi-worker training against mirrored, one process per worker (run by test_multiworker).

``python tests/multiworker_checks.py worker INDEX PORT0 PORT1 OUT.npz``: worker INDEX of a
2-worker TF_CONFIG cluster on 127.0.0.1. ``... mirrored OUT.npz``: the same training mirrored
over 2 logical CPUs in one process. Both train a unit-scaled AdamW and a regular SGD-M model
(3 compiled loops of 2 steps, global batch 8) and save weights and losses to OUT.npz.
"""

import json
import os
import sys
from typing import Literal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if sys.argv[1] == "worker":  # before TensorFlow starts
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in sys.argv[3:5]]},
            "task": {"type": "worker", "index": int(sys.argv[2])},
        }
    )

# pylint: disable=wrong-import-position
import numpy as np
import tensorflow as tf

from replica_setup import LENGTH, OPTIMISERS, SEQUENCES, VOCAB, settings

from scmm.models import CharLM
from scmm.pedal import Execution, ExecutionSettings
from scmm.training import Trainer, TrainingSettings


def batch(rng: np.random.Generator, *shape: int) -> dict[str, np.ndarray]:
    """Random tokens; a random mask, so replicas hold unequal token counts."""
    tokens = rng.integers(0, VOCAB, (*shape, LENGTH)).astype(np.int32)
    mask = rng.random((*shape, LENGTH)) < 0.7
    return {"tokens": tokens, "mask": mask}


def trainer(scheme: str, optimiser: str, run: Execution) -> Trainer:
    """A fresh model (same seed every time) and its trainer."""
    training = TrainingSettings(batch_sequences=SEQUENCES, optimiser=OPTIMISERS[optimiser])
    with run.scope():
        model = CharLM(settings(scheme))
        model.scheme.assign_multipliers(model.parameters, training.optimiser.kind)
        return Trainer(model, training, run, model.parameters, vocab_size=VOCAB)


def main() -> None:
    """Train both cases under the backend argv names; save weights and losses."""
    strategy: Literal["multi_worker", "mirrored"] = (
        "multi_worker" if sys.argv[1] == "worker" else "mirrored"
    )
    run = Execution(
        ExecutionSettings(
            device="cpu", strategy=strategy, devices=1 if strategy == "multi_worker" else 2,
            xla=False, timeout=60.0,
        )  # fmt: skip
    )
    assert run.replicas == 2, run.description
    rng = np.random.default_rng(1)
    loops = [batch(rng, 2, SEQUENCES) for _ in range(3)]
    arrays: dict[str, np.ndarray] = {}
    for scheme, optimiser in (("unit", "adamw"), ("regular", "sgdm")):
        train = trainer(scheme, optimiser, run)
        losses = np.concatenate([train.train(b)["loss"] for b in loops])
        arrays[f"{scheme}/{optimiser}/losses"] = losses
        arrays[f"{scheme}/{optimiser}/step"] = np.asarray(train.step)
        for i, variable in enumerate(train.variables):
            arrays[f"{scheme}/{optimiser}/w{i}"] = np.asarray(variable.numpy())
    np.savez(sys.argv[-1], **arrays)  # type: ignore[arg-type]
    print(f"RESULT {json.dumps({'description': run.description, 'chief': run.is_chief})}")


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    main()
