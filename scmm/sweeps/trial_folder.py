"""One trial's folder across driver deaths: who is still in it, what it left, what comes next.

A sweep driver can die at any moment (SIGKILL included) while its trials run; its re-run then
finds trial folders in every state. Before launching anything into a folder the re-run's worker

1. waits until no process is in the folder: neither a process writing the trial's ``.log``
   (``TrialLog``: the log is ``flock``-ed by whoever opened it for a launch, and the trial
   inherits that open file as its stdout, so the lock lives exactly as long as the driver's or
   the trial's copy -- from the launch on, before the trial has taken any lock of its own) nor
   a holder of the run-folder lock (``scmm.folder_lock``: e.g. a trial of another node, or a
   hand-started ``run_experiment.py --resume``);
2. reads what the folder holds (``inspect``): a finished or diverged ``summary.json`` is the
   result (adopted, nothing re-run); a crash summary is a crash; a folder holding a run's
   ``settings.json`` (interrupted, or killed before it could say) is resumed with ``--resume``
   (the runner continues from its last checkpoint, or from step 0 without one); anything else
   is started afresh.

So one process at a time writes a folder and its log, and every attempt is accounted once.
"""

import dataclasses
import json
import os
import threading
import time
from typing import IO, Any, Optional

from ..exit_codes import EXIT_DIVERGED, EXIT_FAILED, EXIT_FINISHED
from ..folder_lock import holder, try_lock

POLL_SECONDS = 0.5

# summary.json status -> the exit code its run ended with (the results a re-run adopts).
_ENDED = {"finished": EXIT_FINISHED, "diverged": EXIT_DIVERGED, "failed": EXIT_FAILED}


def read_summary(out_dir: str) -> Optional[dict[str, Any]]:
    """The trial's summary.json, or None if it never got that far (or it is unreadable)."""
    path = os.path.join(out_dir, "summary.json")
    try:
        with open(path, encoding="utf-8") as file:
            summary = json.load(file)
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


@dataclasses.dataclass
class Leftover:
    """What earlier attempts left in a trial folder."""

    summary: Optional[dict[str, Any]]
    has_run: bool
    """The folder holds a run's settings.json (``--resume`` continues it)."""

    @property
    def ended_with(self) -> Optional[int]:
        """The exit code of a run that ended (finished, diverged, crashed), else None."""
        status = (self.summary or {}).get("status")
        return _ENDED.get(status) if isinstance(status, str) else None


def inspect(out_dir: str) -> Leftover:
    """Read a trial folder nobody is in (see the module docstring)."""
    return Leftover(
        summary=read_summary(out_dir),
        has_run=os.path.isfile(os.path.join(out_dir, "settings.json")),
    )


def move_aside(out_dir: str) -> Optional[str]:
    """Rename a crashed trial's folder to ``<out_dir>.crash<k>`` (kept for inspection; one
    atomic rename, so the next attempt starts afresh and the crash is never counted twice)."""
    if not os.path.exists(out_dir):
        return None
    number = 1
    while os.path.exists(f"{out_dir}.crash{number}"):
        number += 1
    target = f"{out_dir}.crash{number}"
    os.rename(out_dir, target)
    return target


class TrialLog:
    """The trial's ``.log``, opened for appending and held exclusively while open."""

    def __init__(self, path: str, file: IO[bytes]):
        self.path = path
        self.file = file

    def separator(self, what: str) -> int:
        """Mark where this launch's output starts; returns that offset."""
        self.file.seek(0, os.SEEK_END)
        if self.file.tell():
            self.file.write(b"\n")
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"===== {what} (sweep pid {os.getpid()}, {when}) =====\n".encode())
        self.file.flush()
        return self.file.tell()

    def output_since(self, offset: int) -> str:
        """What was written from ``offset`` on (this launch's output)."""
        with open(self.path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")

    def close(self) -> None:
        """Release the log (a trial still running keeps it held through its stdout)."""
        self.file.close()

    def __enter__(self) -> "TrialLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_in_use(path: str) -> bool:
    """Whether a live process holds the trial log (probe; no waiting)."""
    if not os.path.exists(path):
        return False
    with open(path, "ab") as file:
        return not try_lock(file)  # closing the file drops the probe's lock


def claim(log_path: str, out_dir: str, stopping: threading.Event) -> Optional[TrialLog]:
    """Wait until nobody is in the trial (its log and its folder), then hold its log.

    Returns None if ``stopping`` is set first. Says once on stdout what it waits for: a driver
    that was killed leaves its trials to stop (they notice within moments) or finish.
    """
    told = False
    while not stopping.is_set():
        file = open(log_path, "ab")  # pylint: disable=consider-using-with
        busy_pid = None if try_lock(file) else -1
        if busy_pid is None:
            busy_pid = holder(out_dir)
        if busy_pid is None:
            return TrialLog(log_path, file)
        file.close()
        if not told:
            who = "a process" if busy_pid == -1 else f"process {busy_pid}"
            print(f"waiting: {who} is still running in {out_dir}", flush=True)
            told = True
        stopping.wait(POLL_SECONDS)
    return None
