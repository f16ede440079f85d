"""Settings of the execution target (kept free of TensorFlow so the CLI starts fast)."""

import dataclasses
from typing import Literal


@dataclasses.dataclass
class ExecutionSettings:
    """Execution target."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: the first GPU when present, else CPU."""
    xla: bool = True
    """Compile step functions with XLA (jit_compile)."""
    deterministic: bool = True
    """Deterministic TF kernels, so the same seed gives bitwise-identical runs on one machine."""
