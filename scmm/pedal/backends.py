"""Execution backends: one device, mirrored over local devices, multi-worker (tf.distribute).

A backend is one class with a small interface (``Backend``): where variables live
(``scope``), how a per-replica function runs (``run``), how replicas sum values
(``all_sum``) and how a host batch is split over replicas (``distribute``). Communication is
TensorFlow's own (``tf.distribute``); nothing here moves data between devices by hand.

Another backend is one subclass of ``Backend`` plus a line in ``build_backend``.

Tested here: ``OneDevice`` on CPU, ``Mirrored`` over logical CPU devices (what a laptop can
run), ``MultiWorker`` over processes on 127.0.0.1 with one CPU each. The GPU paths
(``Mirrored`` over local GPUs, ``OneDevice`` on /GPU:0, ``MultiWorker`` with GPUs) are the same
code with other device names but have not been exercised on GPUs by scmm's test suite.
"""

import contextlib
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from .settings import ExecutionSettings, worker_task


def available_gpus() -> list[str]:
    """Names of the visible GPUs."""
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def use_gpus(settings: ExecutionSettings) -> bool:
    """Whether the settings pick GPUs (raises when they ask for GPUs that are not there)."""
    gpus = available_gpus()
    if settings.device == "gpu" and not gpus:
        raise ValueError("execution.device=gpu but TensorFlow sees no GPU (expected >= 1)")
    return settings.device in ("auto", "gpu") and bool(gpus)


class Backend:
    """The interface the trainer sees. The base class is the single-device behaviour."""

    name = "one"
    strategy: Optional[tf.distribute.Strategy] = None
    """None: plain TensorFlow on one device (no replica context)."""

    def __init__(self, device_name: str):
        self.device_name = device_name

    @property
    def replicas(self) -> int:
        """Replicas in sync, over all workers (the global batch is split into this many)."""
        return 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes logs, checkpoints and WandB (exactly one does)."""
        return True

    @property
    def description(self) -> str:
        """E.g. ``/CPU:0`` or ``mirrored over 2 devices (/cpu:0, /cpu:1)``."""
        return self.device_name

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which variables are created and ops placed."""
        return tf.device(self.device_name)

    def run(self, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        """``fn(*args)`` on every replica (inside a tf.function); returns replica 0's result,
        so ``fn`` must return values it has already reduced over replicas."""
        return fn(*args)

    def all_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        """Inside ``run``: each value summed over the replicas."""
        return values

    def once(self, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        """``fn(*args)`` eagerly, once in this process, where it can read the variables and
        take their gradients (on replica 0 of a strategy); its Python effects happen once."""
        return fn(*args)

    def distribute(self, batch: Mapping[str, np.ndarray], axis: int) -> dict[str, Any]:
        """Host arrays split along ``axis`` into equal consecutive parts, part r on replica r."""
        del axis  # one replica: nothing to split
        with self.scope():
            return {key: tf.convert_to_tensor(value) for key, value in batch.items()}


class OneDevice(Backend):
    """One device: /GPU:0 when the settings allow one, else /CPU:0."""

    def __init__(self, settings: ExecutionSettings):
        super().__init__("/GPU:0" if use_gpus(settings) else "/CPU:0")


class StrategyBackend(Backend):
    """A ``tf.distribute`` strategy: replica functions run through ``strategy.run``."""

    def __init__(self, strategy: tf.distribute.Strategy, devices: Sequence[str]):
        super().__init__(devices[0])
        self.strategy = strategy
        self.devices = list(devices)

    @property
    def replicas(self) -> int:
        assert self.strategy is not None
        return int(self.strategy.num_replicas_in_sync)

    @property
    def description(self) -> str:
        return f"{self.name} over {self.replicas} replicas ({', '.join(self.devices)} here)"

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        assert self.strategy is not None
        return self.strategy.scope()

    def run(self, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        strategy = self.strategy
        assert strategy is not None
        result = strategy.run(fn, args=tuple(args))
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], result)

    def all_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        context = tf.distribute.get_replica_context()
        assert context is not None, "all_sum is for inside Backend.run"
        if not values:
            return values
        return list(context.all_reduce(tf.distribute.ReduceOp.SUM, values))

    def once(self, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
        # A tape cannot watch mirrored variables outside a replica: run in the replicas, and
        # do the work only in this process's first (the others return at once; no sync).
        assert self.strategy is not None
        results = []

        def first(*inner: Any) -> None:
            context = tf.distribute.get_replica_context()
            assert context is not None
            if int(context.replica_id_in_sync_group) % len(self.devices) == 0:
                results.append(fn(*inner))

        self.strategy.run(first, args=tuple(args))
        return results[0]

    def distribute(self, batch: Mapping[str, np.ndarray], axis: int) -> dict[str, Any]:
        assert self.strategy is not None
        replicas = self.replicas
        size = {key: np.shape(value)[axis] for key, value in batch.items()}
        for key, length in size.items():
            if length % replicas:
                raise ValueError(
                    f"{key}: {length} sequences do not split into {replicas} equal replica parts"
                )

        def part(context: tf.distribute.experimental.ValueContext) -> dict[str, tf.Tensor]:
            # The global replica id: every worker holds the same global batch (the same data
            # stream), and replica r takes its r-th consecutive slice, deterministically.
            index = context.replica_id_in_sync_group
            parts = {}
            for key, value in batch.items():
                width = size[key] // replicas
                piece = np.take(value, range(index * width, (index + 1) * width), axis=axis)
                parts[key] = tf.convert_to_tensor(piece)
            return parts

        return self.strategy.experimental_distribute_values_from_function(part)


def logical_cpus(count: int) -> list[str]:
    """``count`` logical CPU devices. TensorFlow fixes its devices when it first initialises,
    so this must run before any tensor is made; a process already configured with at least
    ``count`` of them uses its first ``count``."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        pass  # already initialised: checked below
    have = tf.config.list_logical_devices("CPU")
    if len(have) < count:
        raise ValueError(
            f"execution.devices={count} logical CPU devices, but TensorFlow already started"
            f" with {len(have)} (logical devices must be set before TensorFlow initialises:"
            " start a new process)"
        )
    return [f"/cpu:{i}" for i in range(count)]


class Mirrored(StrategyBackend):
    """``tf.distribute.MirroredStrategy`` over local GPUs, or logical CPU devices."""

    name = "mirrored"

    def __init__(self, settings: ExecutionSettings):
        if use_gpus(settings):
            # Not exercised by scmm's tests (no multi-GPU machine): same code as the CPU path.
            gpus = available_gpus()
            count = settings.devices or len(gpus)
            if count > len(gpus):
                raise ValueError(
                    f"execution.devices={count} but TensorFlow sees {len(gpus)} GPU(s)"
                )
            devices = [f"/gpu:{i}" for i in range(count)]
            reduce = None  # TensorFlow's default for GPUs (NCCL all-reduce)
        else:
            devices = logical_cpus(settings.devices or 1)
            # Logical CPUs share one memory: sum on the first, a fixed order (deterministic).
            # (The default, collective ops, keys its groups per process: a second strategy
            # over other devices in the same process then fails.)
            reduce = tf.distribute.ReductionToOneDevice(devices[0])
        strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=reduce)
        super().__init__(strategy, devices)


class MultiWorker(StrategyBackend):
    """``tf.distribute.MultiWorkerMirroredStrategy`` over the processes TF_CONFIG names (each
    with its local GPUs, or one CPU). Every worker reads the same global batch stream and
    takes its replicas' slices; only the chief (``is_chief``) writes the run's outputs."""

    name = "multi_worker"

    def __init__(self, settings: ExecutionSettings):
        task = worker_task(os.environ)
        assert task is not None  # validated: TF_CONFIG present and well formed
        self.task = task
        if use_gpus(settings):
            # Not exercised by scmm's tests (no multi-GPU machines): each worker keeps its first
            # execution.devices GPUs (0: all), set before the strategy starts.
            gpus = tf.config.list_physical_devices("GPU")
            count = settings.devices or len(gpus)
            if count > len(gpus):
                raise ValueError(
                    f"execution.devices={count} but TensorFlow sees {len(gpus)} GPU(s)"
                )
            tf.config.set_visible_devices(gpus[:count], "GPU")
        elif settings.devices > 1:
            raise ValueError(
                f"execution.devices={settings.devices}: multi_worker on CPU runs one replica"
                " per worker process (use more workers, or strategy mirrored on one machine)"
            )
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(settings.timeout)
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        super().__init__(strategy, list(strategy.extended.worker_devices))

    @property
    def is_chief(self) -> bool:
        return self.task.is_chief

    @property
    def description(self) -> str:
        return (
            f"{self.name} over {self.replicas} replicas in {self.task.workers} workers"
            f" (task {self.task.kind}:{self.task.index}: {', '.join(self.devices)})"
        )

    def all_sum(self, values: list[tf.Tensor]) -> list[tf.Tensor]:
        # A tensor from the host (not made in the replica) has no device for the collective
        # ("destinations can not be empty"): an identity places it on the replica's device.
        return super().all_sum([tf.identity(value) for value in values])


def build_backend(settings: ExecutionSettings) -> Backend:
    """The backend ``settings.strategy`` names (settings already validated)."""
    if settings.strategy == "mirrored":
        return Mirrored(settings)
    if settings.strategy == "multi_worker":
        return MultiWorker(settings)
    return OneDevice(settings)
