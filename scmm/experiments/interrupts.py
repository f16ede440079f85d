"""Ctrl-C and SIGTERM during a run: stop at the next safe point, checkpoint, exit 130.

A signal can arrive anywhere, including between taking a batch from the data stream and
training on it; a checkpoint written there would not resume exactly. So the first SIGINT or
SIGTERM only *requests* a stop: the loop checks ``requested`` after every compiled chunk (where
weights, optimiser, data stream and step agree) and raises ``StopRequested`` there; the runner
then writes a checkpoint at that step. A second signal raises ``KeyboardInterrupt`` at once
(for a chunk that would take too long): the run stops without a new checkpoint and resumes
from its previous one.
"""

import signal
import sys
import types
from typing import Any, Callable, Optional, Union

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Union[Callable[[int, Optional[types.FrameType]], Any], int, None]


class StopRequested(Exception):
    """Raised at a safe point after a SIGINT/SIGTERM; ``signum`` is the signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Interrupts:
    """While entered, SIGINT/SIGTERM request a stop (``check()`` raises) instead of killing."""

    def __init__(self, notice: Callable[[str], None] = lambda text: print(text, file=sys.stderr)):
        self.requested: Optional[int] = None
        self._notice = notice
        self._previous: dict[int, _Handler] = {}

    def _handle(self, signum: int, frame: Optional[types.FrameType]) -> None:
        del frame
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.requested = signum
        self._notice(
            f"{signal.Signals(signum).name}: stopping after the current chunk and writing a"
            " checkpoint (send it again to stop now, resuming from the previous checkpoint)"
        )

    def check(self) -> None:
        """Raise ``StopRequested`` if a signal came; call only where a checkpoint is exact."""
        if self.requested is not None:
            raise StopRequested(self.requested)

    def __enter__(self) -> "Interrupts":
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
