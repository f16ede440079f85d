"""What a transform did to each layer and op, returned with the transformed model.

Tests and users read this object, not log text: ``report.unhandled`` lists what was left as is,
``report.residual_adds`` every residual add found with its tau.
"""

import dataclasses
import warnings
from typing import Literal, Optional

Status = Literal["replaced", "scale-neutral", "unhandled", "residual", "unchanged"]


@dataclasses.dataclass
class Entry:
    """One layer or op of the input model."""

    name: str
    kind: str
    """The class name (``Dense``, or ``ops.Add`` for a ``keras.ops`` op)."""
    status: Status
    replacement: Optional[str] = None
    detail: str = ""


@dataclasses.dataclass
class ResidualReport:
    """A residual add found in the graph and rewritten as a split / merge."""

    name: str
    index: int
    """1-based position among the residual adds, in graph order."""
    kind: str
    """``sequence`` (the branch mixes positions: attention, conv) or ``token`` (an MLP)."""
    tau: float
    branch: list[str]
    """Names of the layers and ops in the branch."""


@dataclasses.dataclass
class TransformReport:
    """Every layer/op of the input model and what the transform made of it."""

    transform: str
    scheme: Optional[str] = None
    entries: list[Entry] = dataclasses.field(default_factory=list)
    residual_adds: list[ResidualReport] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, entry: Entry) -> None:
        """Record one layer/op (once: a shared layer is recorded at its first call)."""
        if not any(e.name == entry.name for e in self.entries):
            self.entries.append(entry)

    def with_status(self, status: Status) -> list[Entry]:
        """Entries of one status."""
        return [e for e in self.entries if e.status == status]

    @property
    def unhandled(self) -> list[Entry]:
        """Layers and ops left as they were because the transform has no rule for them."""
        return self.with_status("unhandled")

    @property
    def replaced(self) -> list[Entry]:
        """Layers and ops swapped for a unit-scaled or simulated twin."""
        return self.with_status("replaced")

    def branches(self) -> dict[str, int]:
        """``{layer name: 1-based index of the residual branch holding it}`` (what
        ``scmm.uu.parameter_table`` takes as ``branches`` for u-mup's depth rules)."""
        found: dict[str, int] = {}
        for residual in self.residual_adds:
            for name in residual.branch:
                found.setdefault(name, residual.index)
        return found

    def warn_unhandled(self) -> None:
        """One warning naming every unhandled layer/op (nothing when there is none)."""
        if self.unhandled:
            names = ", ".join(f"{e.name} ({e.kind})" for e in self.unhandled)
            warnings.warn(
                f"{self.transform}: no rule for {names}; left unchanged, so their scale is not"
                " controlled (pass replace={{...}} to map them)",
                stacklevel=3,
            )

    def __str__(self) -> str:
        lines = [f"{self.transform} ({self.scheme or 'no scheme'}):"]
        width = max([len(e.name) for e in self.entries] + [4])
        for e in self.entries:
            target = f" -> {e.replacement}" if e.replacement else ""
            detail = f"  {e.detail}" if e.detail else ""
            lines.append(f"  {e.name:<{width}}  {e.kind:<22} {e.status}{target}{detail}")
        for r in self.residual_adds:
            lines.append(f"  residual {r.index}: {r.name} ({r.kind} branch) tau={r.tau:.4g}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
