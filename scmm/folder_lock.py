"""One process per run folder: an OS advisory lock held for the life of the run.

A run folder (``run_experiment.py --out DIR`` or ``--resume DIR``) holds ``DIR/.lock``.
The owner takes an exclusive ``flock`` on it and writes its pid into it; the kernel drops the
lock when the process exits for any reason (SIGKILL included), so there is no stale lock to
clean up and no check-then-create race: two processes can never both hold it. The file itself
is never deleted (deleting a lock file another process has open would split the lock in two).

``holder(DIR)`` probes without waiting: the pid of the live holder, or None. The sweep driver
uses it to tell a trial still running (e.g. left behind by a killed driver) from one that
stopped. Ground floor: standard library only. POSIX only (``fcntl``), as scmm is.
"""

import errno
import fcntl
import os
import time
from typing import IO, Any, Optional

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """The folder is held by another live process (``pid``; None if it could not be read)."""

    def __init__(self, folder: str, pid: Optional[int]):
        self.folder = folder
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"{folder!r} is in use by {who} (it holds {os.path.join(folder, LOCK_NAME)});"
            " wait for it to finish or stop it, or choose another folder"
        )


def _read_pid(file: IO[str]) -> Optional[int]:
    file.seek(0)
    text = file.read().split()
    try:
        return int(text[0]) if text else None
    except ValueError:
        return None


def try_lock(file: IO[Any]) -> bool:
    """Take an exclusive flock on an open file without waiting; False when another holds it."""
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class FolderLock:
    """Exclusive hold on a folder; ``acquire()`` raises ``FolderBusyError`` when taken."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._file: Optional[IO[str]] = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._file is not None

    def acquire(self) -> "FolderLock":
        """Take the lock (creating the folder) or raise naming the holder's pid."""
        if self._file is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        # "a+" creates without truncating: a holder's pid stays readable while we probe.
        file = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
        if not try_lock(file):
            pid = _read_pid(file)
            file.close()
            raise FolderBusyError(self.folder, pid)
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases it); the file stays."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: str) -> Optional[int]:
    """Pid of the live process holding ``folder``, or None when nobody holds it.

    Returns -1 when it is held but the pid cannot be read (a holder mid-write).
    """
    path = os.path.join(folder, LOCK_NAME)
    if not os.path.exists(path):
        return None
    with open(path, "a+", encoding="utf-8") as file:
        if try_lock(file):
            return None  # closing the file releases the probe's lock
        pid = _read_pid(file)
        return pid if pid is not None else -1
