"""Execution adapter: where steps run (CPU or the first GPU), with or without XLA.

``Execution`` is the one place that knows about devices and compilation. The training code
hands it plain Python step functions; it returns compiled callables placed on the chosen
device and streams host batches through them. IPUs are not supported here: Graphcore's SDK
is not installable on the machines scmm is developed and tested on, so that path would be
untested code; ``device="ipu"`` is refused with a clear error instead.
"""

import contextlib
import hashlib
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import tensorflow as tf

from .settings import ExecutionSettings

F = TypeVar("F", bound=Callable[..., Any])


def available_gpus() -> list[str]:
    """Names of the visible GPUs."""
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def split_seed(seed: int, *names: str) -> int:
    """A 31-bit seed derived from ``seed`` and a path of names (stable across runs/platforms)."""
    text = "/".join([str(int(seed)), *names])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


class Execution:
    """Selects the device, applies XLA and determinism, and runs compiled step functions."""

    def __init__(self, settings: ExecutionSettings):
        self.settings = settings
        gpus = available_gpus()
        if settings.device == "gpu" and not gpus:
            raise ValueError("execution.device=gpu but TensorFlow sees no GPU (expected >= 1)")
        if settings.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"execution.device must be auto|cpu|gpu, got {settings.device!r}")
        use_gpu = settings.device in ("auto", "gpu") and bool(gpus)
        self.device_name = "/GPU:0" if use_gpu else "/CPU:0"
        if settings.deterministic:
            tf.config.experimental.enable_op_determinism()

    @property
    def description(self) -> str:
        """E.g. ``/CPU:0 (XLA)``."""
        return f"{self.device_name} ({'XLA' if self.settings.xla else 'no XLA'})"

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which variables and ops are placed on the chosen device."""
        return tf.device(self.device_name)

    def compile(self, fn: F) -> F:
        """``fn`` as a tf.function on the chosen device, XLA-compiled if enabled."""
        compiled = tf.function(fn, jit_compile=self.settings.xla, reduce_retracing=True)

        def placed(*args: Any, **kwargs: Any) -> Any:
            with self.scope():
                return compiled(*args, **kwargs)

        placed.compiled = compiled  # type: ignore[attr-defined]
        return placed  # type: ignore[return-value]

    def to_device(self, batch: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
        """Host arrays to tensors on the chosen device."""
        with self.scope():
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
