"""Execution adapter (device choice, XLA, seeds, batch streaming)."""

from .execution import (
    Execution,
    ExecutionSettings,
    available_gpus,
    set_cpu_threads,
    split_seed,
)

__all__ = ["Execution", "ExecutionSettings", "available_gpus", "set_cpu_threads", "split_seed"]
