"""Checkpoints: model weights, optimiser state, step, data-stream and seed state in one file.

A checkpoint is a single ``.npz`` (``model/<weight path>``, ``optimiser/<state name>`` arrays
and a JSON ``state`` record), written atomically, with the settings tree stored beside it in
the run folder. ``last.npz`` is replaced at every validation; ``best.npz`` when the
validation loss improves. ``best.npz`` is written *before* ``last.npz``: a kill between the two
leaves ``last.npz`` one validation behind, so the resumed run redoes that validation and
writes ``best.npz`` again, and ``best.npz`` is never older than what ``last.npz`` believes.

Reading one never raises a raw ``zipfile``/``zlib``/``json`` error: a damaged file is a
``CheckpointError`` naming the file and what is wrong with it.
"""

import json
import os
import zipfile
import zlib
from typing import Any, Mapping, Optional

import numpy as np

from ..io import TEMP_PREFIX, write_npz

STATE_KEY = "__state__"
NAMES = ("last", "best")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, or not for this model)."""


def checkpoint_dir(out_dir: str) -> str:
    """``OUT/checkpoints``."""
    return os.path.join(out_dir, "checkpoints")


def path_of(out_dir: str, name: str) -> str:
    """``OUT/checkpoints/<name>.npz`` for name ``last`` or ``best``."""
    if name not in NAMES:
        raise ValueError(f"checkpoint name must be one of {', '.join(NAMES)}, got {name!r}")
    return os.path.join(checkpoint_dir(out_dir), f"{name}.npz")


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


def size_bytes(model_arrays: dict[str, np.ndarray], optimiser_arrays: dict[str, np.ndarray]) -> int:
    """About how large ``save`` makes a checkpoint (uncompressed .npz: data plus headers)."""
    arrays = [*model_arrays.values(), *optimiser_arrays.values()]
    return sum(int(np.asarray(a).nbytes) for a in arrays) + 256 * (len(arrays) + 1) + 65536


# Everything numpy/zipfile/json raise for a truncated, garbled or foreign file.
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(model arrays, optimiser arrays, state) from a checkpoint file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        # Every array is read (and its CRC checked) inside the block, so damage anywhere in the
        # file is found here, before anything is assigned.
        with np.load(path, allow_pickle=False) as data:
            model = {k[len("model/") :]: data[k] for k in data.files if k.startswith("model/")}
            optimiser = {
                k[len("optimiser/") :]: data[k] for k in data.files if k.startswith("optimiser/")
            }
            if STATE_KEY not in data.files:
                raise KeyError("it has no state record")
            state = json.loads(bytes(data[STATE_KEY]).decode("utf-8"))
    except _DAMAGE as error:
        raise CheckpointError(f"{path} is damaged or not a checkpoint: {_reason(error)}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is damaged or not a checkpoint: its state has no step")
    return model, optimiser, state


def _reason(error: BaseException) -> str:
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, EOFError) or "truncated" in text.lower() or not text:
        text = text or "the file ends early (truncated)"
    return f"{type(error).__name__}: {text}"


def check_shapes(
    path: str,
    loaded: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    what: str,
) -> None:
    """Raise ``CheckpointError`` unless ``loaded`` has exactly ``expected``'s names and shapes.

    ``what`` says what the expected arrays are (e.g. "the model built from settings.json").
    """
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit {what}: missing {missing[:3]}{'…' if len(missing) > 3 else ''}"
            f", unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    for name, array in expected.items():
        got, want = tuple(np.shape(loaded[name])), tuple(np.shape(array))
        if got != want:
            raise CheckpointError(
                f"{path} does not fit {what}: {name} has shape {got} in the checkpoint,"
                f" {want} in the model (were the settings changed?)"
            )


def remove_temporaries(out_dir: str) -> list[str]:
    """Delete ``.tmp-*`` files an interrupted write left in the run folder and its checkpoints.

    Only call this while holding the run folder's lock: then no write of ours is in flight.
    """
    removed = []
    for folder in (out_dir, checkpoint_dir(out_dir)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
    return removed


def latest(out_dir: str) -> Optional[str]:
    """Path of the run's last checkpoint, or None."""
    path = path_of(out_dir, "last")
    return path if os.path.isfile(path) else None
