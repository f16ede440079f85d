"""Periodic actions of a run, and where compiled training chunks must end for them.

A ``Hook`` runs every ``every`` steps (and, if ``at_end``, after the last step). The loop
never asks what a hook does: validation with checkpointing, scale analysis and progress are
hooks, and later ones (sparsity mask updates, schedule changes) are added to the list without
touching the loop. Hooks that need the weights at an exact step (``ends_chunk``) make the
compiled multi-step chunk stop at their next multiple.
"""

import dataclasses
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Hook:
    """``run(step)`` after a chunk that ends on a multiple of ``every`` steps."""

    name: str
    every: int
    run: Callable[[int], None]
    at_end: bool = False
    """Also run after the last training step when that is not a multiple of ``every``."""
    ends_chunk: bool = True
    """Compiled chunks end at this hook's multiples (False: it runs at whatever chunk ends
    come, e.g. a progress line every chunk with every=1)."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"hook {self.name!r}: every must be >= 1, got {self.every}")

    def due(self, step: int, last_step: int) -> bool:
        """Whether the hook runs after ``step``."""
        return step % self.every == 0 or (self.at_end and step == last_step)


def chunk_length(step: int, last_step: int, longest: int, hooks: Sequence[Hook]) -> int:
    """Steps of the next compiled chunk: at most ``longest``, ending at the last step or at
    the next multiple of any chunk-ending hook's interval, whichever comes first."""
    end = min(step + longest, last_step)
    for hook in hooks:
        if hook.ends_chunk:
            end = min(end, (step // hook.every + 1) * hook.every)
    return end - step


def run_due(hooks: Sequence[Hook], step: int, last_step: int) -> None:
    """Run every hook due after ``step``, in list order."""
    for hook in hooks:
        if hook.due(step, last_step):
            hook.run(step)
