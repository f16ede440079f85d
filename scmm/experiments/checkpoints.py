"""Checkpoints: model weights, optimiser state, step, data-stream and seed state in one file.

A checkpoint is a single ``.npz`` (``model/<weight path>``, ``optimiser/<state name>`` arrays
and a JSON ``state`` record), written atomically, with the settings tree stored beside it in
the run folder. ``last.npz`` is replaced at every validation; ``best.npz`` when the
validation loss improves.
"""

import json
import os
from typing import Any, Optional

import numpy as np

from ..io import write_npz

STATE_KEY = "__state__"


def checkpoint_dir(out_dir: str) -> str:
    """``OUT/checkpoints``."""
    return os.path.join(out_dir, "checkpoints")


def save(
    path: str,
    model_arrays: dict[str, np.ndarray],
    optimiser_arrays: dict[str, np.ndarray],
    state: dict[str, Any],
) -> None:
    """Write one checkpoint file atomically."""
    arrays = {f"model/{k}": v for k, v in model_arrays.items()}
    arrays.update({f"optimiser/{k}": v for k, v in optimiser_arrays.items()})
    arrays[STATE_KEY] = np.frombuffer(json.dumps(state).encode("utf-8"), dtype=np.uint8)
    write_npz(path, arrays)


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(model arrays, optimiser arrays, state) from a checkpoint file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    with np.load(path, allow_pickle=False) as data:
        model = {k[len("model/") :]: data[k] for k in data.files if k.startswith("model/")}
        optimiser = {
            k[len("optimiser/") :]: data[k] for k in data.files if k.startswith("optimiser/")
        }
        state = json.loads(bytes(data[STATE_KEY]).decode("utf-8"))
    return model, optimiser, state


def latest(out_dir: str) -> Optional[str]:
    """Path of the run's last checkpoint, or None."""
    path = os.path.join(checkpoint_dir(out_dir), "last.npz")
    return path if os.path.isfile(path) else None
