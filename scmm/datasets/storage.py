"""Disk helpers of the data pipeline: the cache folder, cache keys, chunked text reads, DataError.

Every file the pipeline writes goes through ``scmm.io``'s atomic writers, so a crash or a
concurrent reader never sees a half-written cache file, and two processes filling the same
cache simply race to an identical result.
"""

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from ..io import PathLike

CACHE_ENV_VAR = "SCMM_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/scmm"

# 2**24 characters is at most 64 MiB as a str and 64 MiB as UTF-32, so a chunk plus its
# temporaries stays well under 0.5 GB while keeping per-chunk numpy overhead negligible.
DEFAULT_CHUNK_CHARS = 1 << 24

# What Windows editors put at the start of "UTF-8" files. It is an encoding signature, not
# text: read_text_chunks skips it (utf-8-sig), so it never becomes a vocabulary character.
UTF8_BOM = b"\xef\xbb\xbf"


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


def read_text_chunks(path: PathLike, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> Iterator[str]:
    """Yield the UTF-8 text of `path` in pieces of at most `chunk_chars` characters.

    newline="" keeps line endings exactly as stored ("\\r\\n" stays two characters), so the ids
    describe the file itself. The incremental decoder handles multi-byte characters that span
    read boundaries. A byte-order mark at the very start is skipped (``utf-8-sig``); one
    anywhere else is the character U+FEFF and kept.
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    with open(path, "r", encoding="utf-8-sig", newline="") as file:
        while True:
            try:
                chunk = file.read(chunk_chars)
            except UnicodeDecodeError as exc:
                raise DataError(f"{str(path)!r} is not valid UTF-8 text: {exc}") from exc
            if not chunk:
                return
            yield chunk


def starts_with_bom(path: PathLike) -> bool:
    """Whether the file begins with the UTF-8 byte-order mark."""
    with open(path, "rb") as file:
        return file.read(len(UTF8_BOM)) == UTF8_BOM


def warn_if_bom(path: PathLike) -> None:
    """One line on stderr when `path` starts with a byte-order mark (which reading skips)."""
    if starts_with_bom(path):
        print(
            f"warning: {str(path)!r} starts with a UTF-8 byte-order mark; it is skipped, not"
            " read as a character",
            file=sys.stderr,
        )


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Identity of a file for cache keys: absolute path, size and modification time (ns)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
