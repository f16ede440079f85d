"""Execution adapter: where steps run (one device, or replicas under a tf.distribute backend),
with or without XLA.

``Execution`` is the one place that knows about devices, replicas and compilation. The
training code hands it plain Python step functions; it returns compiled callables placed on
the chosen devices and streams host batches through them. The backend
(``scmm.pedal.backends``) is chosen by ``execution.strategy``: one device, mirrored over local
devices, or (later) multi-worker. IPUs are refused by the settings with a clear error
(``scmm.pedal.settings.IPU_REFUSAL``): Graphcore's SDK cannot run Keras 3.

Why XLA differs under replicas: an XLA cluster cannot span devices, so a replicated loop is an
ordinary tf.function whose per-replica arithmetic (``replica_part``: forward and backward) is
XLA-compiled, and whose cross-replica sums and the update run outside XLA.
"""

import contextlib
import hashlib
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, TypeVar

import numpy as np
import tensorflow as tf

from .backends import Backend, available_gpus, build_backend
from .settings import ExecutionSettings

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Execution", "available_gpus", "set_cpu_threads", "split_seed"]


def split_seed(seed: int, *names: str) -> int:
    """A 31-bit seed derived from ``seed`` and a path of names (stable across runs/platforms)."""
    text = "/".join([str(int(seed)), *names])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


class Execution:
    """Selects the backend, applies XLA and determinism, and runs compiled step functions."""

    def __init__(self, settings: ExecutionSettings):
        settings.validate()
        self.settings = settings
        self.backend: Backend = build_backend(settings)
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()

    @property
    def device_name(self) -> str:
        """The first (or only) device, where unreplicated work (evaluation) runs."""
        return self.backend.device_name

    @property
    def replicas(self) -> int:
        """Replicas in sync: the global batch is split into this many parts."""
        return self.backend.replicas

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's outputs."""
        return self.backend.is_chief

    @property
    def strategy(self) -> Optional[tf.distribute.Strategy]:
        """The tf.distribute strategy (None on one device)."""
        return self.backend.strategy

    @property
    def description(self) -> str:
        """E.g. ``/CPU:0 (XLA)``."""
        return f"{self.backend.description} ({'XLA' if self.settings.xla else 'no XLA'})"

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which variables and ops are placed on the chosen device(s)."""
        return self.backend.scope()

    def _placed(self, compiled: Any) -> Any:
        def placed(*args: Any, **kwargs: Any) -> Any:
            with self.scope():
                return compiled(*args, **kwargs)

        placed.compiled = compiled  # type: ignore[attr-defined]
        return placed

    def compile(self, fn: F) -> F:
        """``fn`` as a tf.function, XLA-compiled if enabled. Under a strategy it runs outside
        any replica, on the first device (reading the first copy of mirrored variables)."""
        compiled = tf.function(fn, jit_compile=self.settings.xla, reduce_retracing=True)
        return self._placed(compiled)

    def compile_replicated(self, fn: F) -> F:
        """``fn``, which calls ``run`` for its per-replica work, as a tf.function: on one
        device exactly ``compile``; under a strategy without XLA around it (module docstring)."""
        if self.strategy is None:
            return self.compile(fn)
        compiled = tf.function(fn, jit_compile=False, reduce_retracing=True)
        return self._placed(compiled)

    def replica_part(self, fn: F) -> F:
        """Per-replica arithmetic without cross-replica sums (forward and backward): XLA-
        compiled on its own under a strategy; unchanged on one device (whose whole loop is)."""
        if self.strategy is None or not self.settings.xla:
            return fn
        return tf.function(fn, jit_compile=True, reduce_retracing=True)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Inside a ``compile_replicated`` function: ``fn(*args)`` on every replica; replica
        0's result (``fn`` reduces what it returns with ``all_sum``)."""
        return self.backend.run(fn, args)

    def once(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` eagerly, once per process, able to read the variables and take their
        gradients (the first replica under a strategy): calibration and scale analysis, on
        whatever batch they are given (the global one: nothing is split)."""
        return self.backend.once(fn, args)

    def first_local(self, value: Any) -> Any:
        """Replica 0's part of a distributed value (the value itself on one device)."""
        if self.strategy is None:
            return value
        return self.strategy.experimental_local_results(value)[0]

    def all_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        """Inside ``run``: the values summed over replicas (unchanged on one device)."""
        return self.backend.all_sum(values)

    def distribute(self, batch: Mapping[str, np.ndarray], axis: int = 1) -> dict[str, Any]:
        """A host batch for ``run``: split along ``axis`` (sequences) into consecutive equal
        parts, part r to replica r; on one device, tensors on that device."""
        return self.backend.distribute(batch, axis)

    def to_device(self, batch: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
        """Host arrays to tensors on the chosen (first) device."""
        with tf.device(self.device_name):
            return {key: tf.convert_to_tensor(value) for key, value in batch.items()}

    def stream(
        self, step: Callable[..., Any], batches: Iterable[Mapping[str, np.ndarray]]
    ) -> Iterator[Any]:
        """Run ``step(**batch)`` for each host batch, yielding its results."""
        for batch in batches:
            yield step(**self.to_device(batch))


def set_cpu_threads(threads: int) -> None:
    """Limit TF's thread pools (call before TF runs anything); 0 keeps TF's default."""
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
