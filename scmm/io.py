"""Files that survive crashes: atomic writes, and reading back logs a crash may have torn.

Everything scmm writes that must survive (settings, summaries, checkpoints, rewritten logs,
sweep indexes, scale records, data caches) goes to a temporary file in the destination folder
and is then renamed over the target with ``os.replace`` (atomic on POSIX within one file
system). A crash or a concurrent reader therefore never sees a half-written file, the previous
version survives a failed write, and two processes filling the same cache simply race to an
identical result.

This is a ground-floor module (standard library and numpy only): data, experiments, analysis
and sweeps all write through it. Inside the package it is ``scmm.io``; the standard library's
``io`` is unaffected because imports are absolute.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

# Every temporary file starts with this, then the target's name: a stray one left by a SIGKILL
# is easy to find (and to attribute) with ``ls -a``.
TEMP_PREFIX = ".tmp-"

_ATOMIC_OPEN_MODES = ("w", "wt", "wb")


def _temp_beside(target: Path) -> Path:
    # Same folder as the target so os.replace is a rename on one file system (atomic).
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    os.close(handle)
    # mkstemp creates 0600 files; results and caches are meant to be readable like normal ones.
    os.chmod(name, 0o644)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    The caller opens (and, if it wants durability across power loss, fsyncs) the temporary
    file itself; ``atomic_open`` does both for the common case.
    """
    # Absolute, so a change of working directory inside the block cannot misplace the rename.
    target = Path(os.path.abspath(path))
    temp = _temp_beside(target)
    replaced = False
    try:
        yield temp
        os.replace(temp, target)
        replaced = True
    finally:
        # Any exit without the rename (an exception, KeyboardInterrupt, the generator closed)
        # removes the temp. After a rename the name is free again, so it is never touched.
        if not replaced:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` (UTF-8 unless binary); on clean exit it is flushed,
    fsync'd and replaces ``path``; on any exception it is removed and ``path`` is untouched."""
    if mode not in _ATOMIC_OPEN_MODES:
        raise ValueError(
            f"atomic_open mode must be one of {', '.join(_ATOMIC_OPEN_MODES)}, got {mode!r}"
            " (an atomic write always starts a new file)"
        )
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as temp:
        with open(temp, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (newlines written exactly as given)."""
    with atomic_path(path) as temp:
        with open(temp, "w", encoding="utf-8", newline="") as file:
            file.write(text)


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """``np.save`` ``array`` to ``path`` atomically (no pickles)."""
    with atomic_path(path) as temp:
        with open(temp, "wb") as file:
            np.save(file, array, allow_pickle=False)


@contextlib.contextmanager
def atomic_memmap(path: PathLike, dtype: np.dtype, length: int) -> Iterator[np.ndarray]:
    """Yield a writable 1-D .npy memmap of ``length`` items that becomes ``path`` on success.

    Lets a large array be filled chunk by chunk without ever holding it in RAM.
    """
    with atomic_path(path) as temp:
        if length == 0:
            # mmap cannot map zero bytes of payload portably; an empty array costs nothing.
            empty = np.zeros(0, dtype=dtype)
            yield empty
            with open(temp, "wb") as file:
                np.save(file, empty, allow_pickle=False)
        else:
            array = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=(length,))
            yield array
            array.flush()
            del array  # unmap before the rename


def finite_or_none(value: Any) -> Any:
    """Replace NaN/inf floats (recursively) by None, so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: PathLike, data: Any) -> None:
    """Atomically write ``data`` as indented strict JSON (non-finite numbers become null)."""
    with atomic_open(path) as file:
        json.dump(finite_or_none(data), file, indent=2, sort_keys=False, allow_nan=False)
        file.write("\n")


def write_npz(path: PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write a dict of arrays as an uncompressed .npz."""
    with atomic_open(path, "wb") as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]


@dataclasses.dataclass
class JsonlScan:
    """A JSON-lines file read line by line: the good records and every line that was not one.

    ``lines`` are all the file's lines (terminated or not) in order; ``records[i]`` is the
    record of line ``record_lines[i]``; ``bad`` lists (1-based line number, reason) for a
    malformed line or a torn last line (no newline: the writer died mid-record).
    """

    lines: list[str]
    records: list[dict[str, Any]]
    record_lines: list[int]
    bad: list[tuple[int, str]]

    def describe_bad(self, path: PathLike) -> str:
        """One line naming the file and every line skipped (for a warning)."""
        where = ", ".join(f"line {number} ({reason})" for number, reason in self.bad)
        return f"{path}: skipped {len(self.bad)} unreadable line(s): {where}"


def scan_jsonl(path: PathLike) -> JsonlScan:
    """Read every line of ``path``; malformed and torn lines are reported, never raised."""
    scan = JsonlScan([], [], [], [])
    if not os.path.exists(path):
        return scan
    with open(path, "rb") as file:
        raw_lines = file.read().splitlines(keepends=True)
    for index, raw in enumerate(raw_lines):
        line = raw.decode("utf-8", errors="replace")
        scan.lines.append(line)
        if not line.endswith("\n"):
            scan.bad.append((index + 1, "torn: no newline, the writer stopped mid-record"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            scan.bad.append((index + 1, f"not JSON: {error.msg} at column {error.colno}"))
            continue
        if not isinstance(record, dict):
            scan.bad.append((index + 1, f"not a record: a JSON {type(record).__name__}"))
            continue
        scan.records.append(record)
        scan.record_lines.append(index)
    return scan


def read_jsonl(path: PathLike, warn: bool = True) -> list[dict[str, Any]]:
    """All good records of a JSON-lines file, in order.

    A torn last line (a kill mid-write) or a malformed line (a damaged file) is skipped, with
    one warning on stderr naming the file and lines unless ``warn`` is False; the good records
    around it are all kept. A missing file has no records (a run killed before its first line).
    """
    scan = scan_jsonl(path)
    if scan.bad and warn:
        print(f"warning: {scan.describe_bad(path)}", file=sys.stderr)
    return scan.records
