"""Atomic file writes: a crash mid-write never leaves a truncated file behind.

Everything scmm writes that must survive (settings, summaries, checkpoints, rewritten logs)
goes to a temporary file in the destination folder, is flushed and fsync'd, then renamed over
the target with ``os.replace`` (atomic on POSIX within one filesystem).
"""

import contextlib
import json
import math
import os
import tempfile
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit it replaces ``path``, else is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.chmod(temp_path, 0o644)  # mkstemp creates 0600; results should be readable by others
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


def finite_or_none(value: Any) -> Any:
    """Replace NaN/inf floats (recursively) by None, so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str, data: Any) -> None:
    """Atomically write ``data`` as indented strict JSON (non-finite numbers become null)."""
    with atomic_open(path) as file:
        json.dump(finite_or_none(data), file, indent=2, sort_keys=False, allow_nan=False)
        file.write("\n")


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write a dict of arrays as an uncompressed .npz."""
    with atomic_open(path, "wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines file (a torn last line from a kill is skipped)."""
    records: list[dict[str, Any]] = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.endswith("\n"):
                break  # partial line written when the process died
            records.append(json.loads(line))
    return records
