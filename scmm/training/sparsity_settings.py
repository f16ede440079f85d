"""Settings of sparse training (``training.sparsity``): static, SET and RigL in one node.

RigL (Evci et al. 2020): weights are kept sparse; every ``update_interval`` steps the
smallest-magnitude active blocks of each layer are dropped and as many regrown where the dense
gradient is largest, the drop fraction decaying over training. Static sparse training is
``update_interval: null`` (or ``drop_fraction: 0``); SET is ``regrow: random``. Defaults follow
the RigL paper (drop fraction 0.3, cosine decay ending at 75% of training, ΔT = 100, a dropped
block may come straight back); Graphcore's sparse LM is ``regrow_exclude: dropped``, block 16,
``pooling: max``, ``end_fraction: 1``.
"""

import dataclasses
from typing import Literal, Optional

Distribution = Literal["uniform", "erk"]
Decay = Literal["constant", "cosine"]
Regrow = Literal["gradient", "random"]
Pooling = Literal["sum", "average", "max"]
Exclude = Literal["kept", "dropped"]


@dataclasses.dataclass
class SparsitySettings:  # pylint: disable=too-many-instance-attributes
    """Which weights are sparse, how sparse, and how their masks move."""

    sparsity: float = 0.0
    """Fraction of the selected weights (blocks) held at zero; 0 trains densely."""
    distribution: Distribution = "uniform"
    """uniform: every selected layer at ``sparsity``; erk: Erdős–Rényi-Kernel densities
    (wide layers sparser), the total number of active weights the same."""
    block_size: int = 1
    """Side of the square blocks that are active or not (1: element sparsity); must divide
    both dimensions of every selected kernel (viewed as fan-in x fan-out)."""
    include: list[str] = dataclasses.field(default_factory=lambda: ["*"])
    """Globs on parameter paths (``layer_*_token/ffn/*``): of the hidden weights (role
    weight; never embeddings, norms, biases or the readout), those matching one are sparse."""
    update_interval: Optional[int] = 100
    """Steps between mask updates (RigL's ΔT); null: static sparsity (the initial random
    mask throughout)."""
    drop_fraction: float = 0.3
    """Fraction of each layer's active blocks dropped (and regrown) at an update, before
    decay."""
    drop_decay: Decay = "cosine"
    """constant: drop_fraction at every update; cosine:
    drop_fraction x ½(1 + cos(phase + period·2π·(t − zero_steps)/(T − zero_steps)))."""
    zero_steps: int = 0
    """Steps before the first update (the decay's t0)."""
    phase: float = 0.0
    """Phase of the cosine decay (radians)."""
    period: float = 0.5
    """Periods of the cosine over [zero_steps, T] (0.5: one half-cosine from 1 to 0)."""
    end_fraction: float = 0.75
    """T as a fraction of training.steps: no updates after it (the RigL paper's 75%)."""
    regrow: Regrow = "gradient"
    """gradient: the blocks with the largest pooled dense gradient (RigL); random: uniformly
    among the allowed ones (SET)."""
    pooling: Pooling = "sum"
    """How the dense gradient's |values| pool over a block (block_size > 1)."""
    regrow_exclude: Exclude = "kept"
    """kept: only blocks kept at this update are excluded from regrowth, a dropped block may
    come straight back (Google's RigL); dropped: every block active before the update is
    (Graphcore's)."""
    seed: int = 0
    """Seed of the initial masks and of random regrowth."""

    @property
    def enabled(self) -> bool:
        """Whether any weight is sparse."""
        return self.sparsity > 0.0

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value (before any compute)."""

        def fail(name: str, expected: str) -> None:
            value = getattr(self, name)
            raise ValueError(f"training.sparsity.{name} must be {expected}, got {value!r}")

        if not 0.0 <= self.sparsity < 1.0:
            fail("sparsity", "in [0, 1) (the fraction of weights at zero)")
        if self.distribution not in ("uniform", "erk"):
            fail("distribution", "'uniform' or 'erk'")
        if self.block_size < 1:
            fail("block_size", ">= 1")
        if not self.include or not all(isinstance(g, str) and g for g in self.include):
            fail("include", "a non-empty list of path globs")
        if self.update_interval is not None and self.update_interval < 1:
            fail("update_interval", ">= 1 or null (static sparsity)")
        if not 0.0 <= self.drop_fraction <= 1.0:
            fail("drop_fraction", "in [0, 1]")
        if self.drop_decay not in ("constant", "cosine"):
            fail("drop_decay", "'constant' or 'cosine'")
        if self.zero_steps < 0:
            fail("zero_steps", ">= 0")
        if not self.period > 0:
            fail("period", "> 0")
        if not 0.0 < self.end_fraction <= 1.0:
            fail("end_fraction", "in (0, 1]")
        if self.regrow not in ("gradient", "random"):
            fail("regrow", "'gradient' or 'random'")
        if self.pooling not in ("sum", "average", "max"):
            fail("pooling", "'sum', 'average' or 'max'")
        if self.regrow_exclude not in ("kept", "dropped"):
            fail("regrow_exclude", "'kept' or 'dropped'")
