"""Progress on stderr: a live tqdm bar on a terminal, plain periodic lines otherwise."""

import sys
import time
from typing import Any, Optional

from tqdm import tqdm


class Progress:
    """Shows step, loss, BPC, tokens/s and ETA."""

    def __init__(self, mode: str, total: int, initial: int = 0, interval: float = 30.0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode
        self.total = total
        self.interval = interval
        self._last_line = 0.0
        self._bar: Optional[Any] = None
        if mode == "bar":
            self._bar = tqdm(
                total=total, initial=initial, unit="step", file=sys.stderr, dynamic_ncols=True
            )
        self._start = time.time()
        self._start_step = initial

    def update(self, step: int, metrics: dict[str, float], force: bool = False) -> None:
        """Report that training reached ``step`` with these metrics."""
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)
            self._bar.refresh()
            return
        now = time.time()
        if self.mode == "lines" and (force or now - self._last_line >= self.interval):
            self._last_line = now
            done = step - self._start_step
            elapsed = now - self._start
            eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
            fields = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"step {step}/{self.total} {fields} eta={eta:.0f}s", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """A line that does not break the bar."""
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
