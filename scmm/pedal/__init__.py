"""Execution adapter (device choice, replicas, XLA, seeds, batch streaming).

Backends (``scmm.pedal.backends``): one device, mirrored over local devices; IPUs are refused
by the settings (``IPU_REFUSAL``).

Settings import without TensorFlow; the execution classes load it on first use, so the
command line can reject bad input before TensorFlow starts.
"""

from typing import TYPE_CHECKING, Any

from .settings import ExecutionSettings

if TYPE_CHECKING:
    from .execution import Execution, available_gpus, set_cpu_threads, split_seed

_LAZY = ("Execution", "available_gpus", "set_cpu_threads", "split_seed")

__all__ = ["ExecutionSettings", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import execution

        return getattr(execution, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
