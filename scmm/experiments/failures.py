"""What stopped a run, in one line: out of memory, a full disk, or anything else.

A run that fails writes an ``error`` record and ``summary.json`` and prints one ``error:`` line.
Out of memory and a full disk are the failures a user can act on (a smaller batch, more disk),
so they are named with what ran out and how much was asked for; anything else keeps its
traceback, because it is a bug.
"""

import errno
import shutil
from typing import Optional

import tensorflow as tf

# errno values meaning "the disk (or the user's quota, or a file size limit) is full".
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskSpaceError(OSError):
    """Not enough free space for a write we are about to make (checked before writing)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def megabytes(size: float) -> str:
    """``12.3 MB``."""
    return f"{size / 2**20:.1f} MB"


def check_free_space(folder: str, needed: int, what: str) -> None:
    """Raise ``DiskSpaceError`` unless ``folder``'s file system has ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskSpaceError(
            f"disk full: {what} needs {megabytes(needed)} in {folder}, only {megabytes(free)}"
            " free"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """TensorFlow's or Python's out-of-memory error."""
    return isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError))


def is_disk_full(error: BaseException) -> bool:
    """A write failed for lack of space."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


# What TensorFlow raises when a collective's peer is gone under multi_worker: its health check
# aborts the collectives ("The following tasks are unhealthy"), or a wait runs past
# execution.timeout.
COLLECTIVE_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


def is_worker_lost(error: BaseException) -> bool:
    """A collective failed (under multi_worker: another worker stopped or is unreachable)."""
    return isinstance(error, COLLECTIVE_FAILURES)


def worker_lost_line(error: BaseException, out_dir: str) -> str:
    """The ``error:`` line when another worker is gone (TensorFlow's first line kept)."""
    first = str(getattr(error, "message", None) or error).strip().splitlines()
    said = first[0][:300] if first else type(error).__name__
    return (
        f"multi_worker: another worker stopped or cannot be reached ({type(error).__name__}:"
        f" {said}); restart every worker with --resume {out_dir} (the chief's last checkpoint)"
    )


def one_line(error: BaseException, batch: Optional[str] = None) -> str:
    """The ``error:`` line for a failure (without the prefix)."""
    if is_out_of_memory(error):
        # TensorFlow's message starts with what it tried, e.g. "Out of memory while trying to
        # allocate 76.15GiB"; its op name and hints follow on later lines.
        first = str(getattr(error, "message", None) or error).strip().splitlines()
        asked = first[0] if first else type(error).__name__
        hint = f" with {batch}" if batch else ""
        return f"out of memory{hint}: {asked} (try a smaller training.batch_sequences)"
    if isinstance(error, DiskSpaceError):
        return str(error)
    if is_disk_full(error):
        assert isinstance(error, OSError)
        where = f" writing {error.filename}" if error.filename else ""
        return f"disk full: {error.strerror or 'no space left on device'}{where}"
    return f"{type(error).__name__}: {error}"
