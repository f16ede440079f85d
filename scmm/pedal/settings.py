"""Settings of the execution target (kept free of TensorFlow so the CLI starts fast)."""

import dataclasses
import json
import os
from typing import Any, Literal, Optional

STRATEGIES = ("one", "mirrored", "multi_worker")

# Why IPUs are refused rather than supported: scmm is TensorFlow 2.21 / Keras 3, and Graphcore's
# IPU TensorFlow is a fork of TensorFlow 2.6 (with Keras 2.6) shipped in the Poplar SDK; Keras 3
# does not run on it, and the SDK is not installable where scmm is developed and tested.
IPU_REFUSAL = (
    "execution.device=ipu is not supported: IPUs need Graphcore's TensorFlow 2.6 / Keras 2.6"
    " from the Poplar SDK, which cannot run scmm's Keras 3 code. Use --execution.device cpu|gpu"
    " (with --execution.strategy mirrored --execution.devices N for several local devices, or"
    " multi_worker with TF_CONFIG for several machines)"
)


@dataclasses.dataclass
class ExecutionSettings:
    """Execution target."""

    device: Literal["auto", "cpu", "gpu", "ipu"] = "auto"
    """auto: the first GPU when present, else CPU. ipu is refused (see the README)."""
    strategy: Literal["one", "mirrored", "multi_worker"] = "one"
    """one: a single device. mirrored: data parallel over this machine's devices (GPUs, or
    execution.devices logical CPU devices). multi_worker: data parallel over the processes
    that TF_CONFIG names (tf.distribute.MultiWorkerMirroredStrategy)."""
    devices: int = 0
    """Local devices per process for mirrored and multi_worker: 0 = every GPU (1 on CPU);
    N = the first N GPUs, or N logical CPU devices on CPU. one: 0 or 1."""
    xla: bool = True
    """Compile step functions with XLA (jit_compile)."""
    deterministic: bool = True
    """Deterministic TF kernels, so the same seed gives bitwise-identical runs on one machine."""
    timeout: float = 120.0
    """multi_worker: seconds a collective waits for the other workers before the run fails (a
    worker that dies is usually noticed sooner, by TensorFlow's health checks, ~10 s)."""

    def validate(self) -> None:
        """Raise ValueError naming the first bad value (before TensorFlow starts)."""
        if self.device == "ipu":
            raise ValueError(IPU_REFUSAL)
        if self.device not in ("auto", "cpu", "gpu"):
            raise ValueError(f"execution.device must be auto|cpu|gpu, got {self.device!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"execution.strategy must be {'|'.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if isinstance(self.devices, bool) or not isinstance(self.devices, int):
            raise ValueError(f"execution.devices must be a whole number, got {self.devices!r}")
        if self.devices < 0:
            raise ValueError(f"execution.devices must be >= 0, got {self.devices}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"execution.timeout must be > 0 seconds, got {self.timeout!r}")
        if self.strategy == "multi_worker":
            worker_task(os.environ)  # TF_CONFIG present and well formed
        if self.strategy == "one" and self.devices > 1:
            raise ValueError(
                f"execution.devices={self.devices} needs --execution.strategy mirrored (or"
                " multi_worker); strategy one runs on a single device"
            )


@dataclasses.dataclass(frozen=True)
class WorkerTask:
    """This process's place in a TF_CONFIG cluster."""

    kind: str
    """The task's job: "worker" or "chief"."""
    index: int
    workers: int
    """Processes in the cluster (its chief and workers)."""
    has_chief: bool = False
    """Whether the cluster names a "chief" job."""

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the "chief" task if the cluster has one, else worker 0."""
        if self.has_chief:
            return self.kind == "chief"
        return self.index == 0


def worker_task(environ: Any, strategy: str = "multi_worker") -> Optional[WorkerTask]:
    """Parse TF_CONFIG from ``environ`` for ``strategy`` multi_worker (None for the others);
    ValueError naming what is missing or malformed."""
    if strategy != "multi_worker":
        return None
    text = environ.get("TF_CONFIG")
    example = (
        ' e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]},'
        ' "task": {"type": "worker", "index": 0}}\''
    )
    if not text:
        raise ValueError(
            "execution.strategy=multi_worker needs the TF_CONFIG environment variable (the"
            " cluster's addresses and this process's task)," + example
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
        jobs = {name: list(hosts) for name, hosts in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"TF_CONFIG is not valid ({error!r});{example}") from None
    if kind not in ("worker", "chief") or kind not in jobs or not 0 <= index < len(jobs[kind]):
        raise ValueError(
            f"TF_CONFIG task {kind}:{index} is not one of the cluster's chief/worker tasks"
            f" ({ {name: len(hosts) for name, hosts in jobs.items()} })"
        )
    if "chief" in jobs and len(jobs["chief"]) != 1:
        raise ValueError("TF_CONFIG cluster: at most one chief")
    workers = len(jobs.get("worker", [])) + len(jobs.get("chief", []))
    return WorkerTask(kind, index, workers, "chief" in jobs)


def writes_outputs(settings: ExecutionSettings, environ: Any = None) -> bool:
    """Whether this process writes the run folder: always, except a multi_worker task that is
    not the chief (it trains and reads checkpoints, and writes nothing)."""
    task = worker_task(os.environ if environ is None else environ, settings.strategy)
    return task is None or task.is_chief
