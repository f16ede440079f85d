"""Settings of the execution target (kept free of TensorFlow so the CLI starts fast)."""

import dataclasses
from typing import Literal

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
        if self.strategy == "one" and self.devices > 1:
            raise ValueError(
                f"execution.devices={self.devices} needs --execution.strategy mirrored (or"
                " multi_worker); strategy one runs on a single device"
            )
