"""Disk helpers shared by the data pipeline: atomic writes, the cache folder, chunked text reads.

Every file the pipeline writes goes to a uniquely named temporary file in the destination folder
and is then ``os.replace``d into place. A crash or a concurrent reader therefore never sees a
half-written cache file, and two processes filling the same cache simply race to an identical
result.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

CACHE_ENV_VAR = "SCMM_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/scmm"

# 2**24 characters is at most 64 MiB as a str and 64 MiB as UTF-32, so a chunk plus its
# temporaries stays well under 0.5 GB while keeping per-chunk numpy overhead negligible.
DEFAULT_CHUNK_CHARS = 1 << 24


class DataError(ValueError):
    """Bad data or a bad data argument (message names the value and what was expected)."""


def resolve_cache_dir(cache_dir: Optional[str]) -> Path:
    """`cache_dir`, else $SCMM_CACHE, else ~/.cache/scmm (not created here)."""
    chosen = cache_dir or os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser().resolve()


def stable_hash(value: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable value (key order independent)."""
    encoded = json.dumps(value, sort_keys=True, ensure_ascii=True).encode("ascii")
    return hashlib.sha256(encoded).hexdigest()


def _temp_path(path: Path) -> Path:
    # Same folder as the target so os.replace is a rename on one file system (atomic).
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; cache and data files are meant to be shared like normal ones.
    os.chmod(name, 0o644)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    temp = _temp_path(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (newlines written exactly as given)."""
    with atomic_path(path) as temp:
        with open(temp, "w", encoding="utf-8", newline="") as file:
            file.write(text)


def atomic_save_npy(path: PathLike, array: np.ndarray) -> None:
    """np.save `array` to `path` atomically."""
    with atomic_path(path) as temp:
        with open(temp, "wb") as file:
            np.save(file, array, allow_pickle=False)


@contextlib.contextmanager
def atomic_memmap(path: PathLike, dtype: np.dtype, length: int) -> Iterator[np.ndarray]:
    """Yield a writable 1-D .npy memmap of `length` items that becomes `path` on success.

    Lets a large array be filled chunk by chunk without ever holding it in RAM.
    """
    target = Path(path)
    temp = _temp_path(target)
    try:
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
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def read_text_chunks(path: PathLike, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> Iterator[str]:
    """Yield the UTF-8 text of `path` in pieces of at most `chunk_chars` characters.

    newline="" keeps line endings exactly as stored ("\\r\\n" stays two characters), so the ids
    describe the file itself. The incremental decoder handles multi-byte characters that span
    read boundaries.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    with open(path, "r", encoding="utf-8", newline="") as file:
        while True:
            try:
                chunk = file.read(chunk_chars)
            except UnicodeDecodeError as exc:
                raise DataError(f"{str(path)!r} is not valid UTF-8 text: {exc}") from exc
            if not chunk:
                return
            yield chunk


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a file for cache keys: absolute path, size and modification time (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
