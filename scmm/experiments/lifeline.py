"""Stop a run when the process that launched it dies (``SCMM_STOP_WITH_PARENT=1``).

A sweep trial runs in its own session, so neither a terminal's Ctrl-C nor the death of its
sweep driver reaches it; a driver killed with SIGKILL would leave it training on unseen, racing
the driver's re-run. The launcher therefore gives the trial a pipe as stdin and never writes
to it: when the launcher dies, however it dies, the kernel closes the pipe's other end, the
read here returns end-of-file, and the run sends itself SIGTERM -- which the runner answers
by checkpointing at its current step and exiting 130 (interrupted, resumable). A pipe needs no
polling, no pid (which the OS may reuse) and no cooperation from the dying process, and works
the same under Ray, where the launcher is the Ray worker process.

Ground floor for the experiment package: standard library only, started before anything heavy.
"""

import os
import signal
import threading

STOP_WITH_PARENT = "SCMM_STOP_WITH_PARENT"


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass  # the launcher never writes; anything it did is ignored
    except OSError:
        pass  # stdin closed or unreadable: the launcher is gone all the same
    os.kill(os.getpid(), signal.SIGTERM)


def watch_launcher() -> bool:
    """If ``SCMM_STOP_WITH_PARENT=1``, watch stdin in a daemon thread and SIGTERM this process
    at its end-of-file. Returns whether it watches. The variable is removed from the
    environment so that processes this run starts do not inherit the duty."""
    if os.environ.pop(STOP_WITH_PARENT, "") != "1":
        return False
    threading.Thread(target=_watch, args=(0,), name="lifeline", daemon=True).start()
    return True
