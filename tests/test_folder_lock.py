"""The run-folder lock: one holder at a time, across processes, released when the holder dies."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scmm.folder_lock import FolderBusyError, FolderLock, holder

_HOLD = (
    "import sys, time\n"
    "from scmm.folder_lock import FolderLock\n"
    "lock = FolderLock(sys.argv[1]).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def _hold_in_child(folder: Path) -> "subprocess.Popen[str]":
    child = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", _HOLD, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_holder_in_another_process_is_refused_with_the_pid(tmp_path: Path) -> None:
    child = _hold_in_child(tmp_path / "run")
    try:
        assert holder(str(tmp_path / "run")) == child.pid
        with pytest.raises(FolderBusyError, match=f"in use by process {child.pid}") as caught:
            FolderLock(str(tmp_path / "run")).acquire()
        assert caught.value.pid == child.pid
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kernel released the dead holder's lock: no stale lock, nothing to clean up.
    assert holder(str(tmp_path / "run")) is None
    with FolderLock(str(tmp_path / "run")) as lock:
        assert lock.held and holder(str(tmp_path / "run")) == os.getpid()
    assert holder(str(tmp_path / "run")) is None


def test_two_locks_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    first = FolderLock(str(tmp_path)).acquire()
    with pytest.raises(FolderBusyError):
        FolderLock(str(tmp_path)).acquire()
    first.release()
    FolderLock(str(tmp_path)).acquire().release()
    assert holder(str(tmp_path / "never-created")) is None


def test_probing_does_not_steal_or_break_the_lock(tmp_path: Path) -> None:
    lock = FolderLock(str(tmp_path)).acquire()
    for _ in range(3):
        assert holder(str(tmp_path)) == os.getpid()
    with pytest.raises(FolderBusyError):
        FolderLock(str(tmp_path)).acquire()
    lock.release()
    started = time.time()
    assert holder(str(tmp_path)) is None and time.time() - started < 5
