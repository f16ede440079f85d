"""Import TensorFlow without the start-up log lines that ``TF_CPP_MIN_LOG_LEVEL`` cannot stop.

TensorFlow 2.21 logs through absl. Two of its shared libraries (the framework, and the profiler
plugin that ``import tensorflow`` loads) each carry their own copy of absl, and each logs
"oneDNN custom operations are on" while it loads, before TensorFlow applies
``TF_CPP_MIN_LOG_LEVEL``, preceded by absl's "All log messages before absl::InitializeLog() is
called are written to STDERR". So a run showed four lines of noise on every start, whatever
the log level. The only switch that stops the oneDNN line at its source,
``TF_ENABLE_ONEDNN_OPTS=0``, also turns oneDNN off and so changes the numbers. So the import
runs with file descriptor 2 passed through a filter. It drops exactly what the log level
asked TensorFlow to drop: absl-format lines (``I0000 00:00:... file.cc:153] ...``) below
``TF_CPP_MIN_LOG_LEVEL`` (0 info, 1 warning, 2 error; fatal is always kept), and absl's
banner when the level is 1 or more. Everything else, Python's own output included, goes
through unchanged and at once.
"""

import contextlib
import os
import re
import sys
import threading
from typing import Callable, Iterator

# absl's line prefix: severity, MMDD, time, thread id, file:line]. Before absl::InitializeLog()
# the date is 0000 and the time is seconds since the epoch (I0000 00:00:1796171823.029026).
ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called"
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (unset or not a number: 0, log all)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def keeps(line: bytes, level: int) -> bool:
    """Whether a stderr line printed while TensorFlow loads gets through at ``level``."""
    if level >= 1 and line.startswith(ABSL_BANNER):
        return False
    match = ABSL_LINE.match(line)
    if match is None:
        return True
    severity = _SEVERITY[match.group(1)]
    return severity >= min(level, 3)


def import_tensorflow_quietly() -> None:
    """``import tensorflow`` with its unfilterable start-up lines dropped (module docstring)."""
    if "tensorflow" in sys.modules:
        return
    level = min_log_level()
    quiet = (
        filtered_stderr(lambda line: keeps(line, level)) if level > 0 else contextlib.nullcontext()
    )
    with quiet:
        import tensorflow  # pylint: disable=import-outside-toplevel,unused-import


@contextlib.contextmanager
def filtered_stderr(keep: Callable[[bytes], bool]) -> Iterator[None]:
    """Pass everything written to file descriptor 2 (C++ and Python alike) through ``keep``.

    Lines are forwarded as they arrive, by a thread, so that a crash inside the block loses at
    most the line being written, not everything captured so far.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(target=_forward, args=(read_end, saved, keep), daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the forwarder reads end of file
        forwarder.join()
        os.close(saved)


def _forward(read_end: int, target: int, keep: Callable[[bytes], bool]) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if keep(line):
                _write_all(target, line)


def _write_all(target: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(target, view) :]
