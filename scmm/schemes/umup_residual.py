"""u-mup's residual rule: one tau per residual branch, from two multipliers (issue 14).

u-mup (Blake et al. 2024, ``../shared/reference/unit-scaling-papers.md`` section E) weights the
residual branches of a transformer so that, at the end of the trunk,

- the squared contributions of the embedding and of every branch sum to 1 (unit scale);
- a branch's average contribution relative to the embedding's (the embedding counted as half
  as many branches as there are) is ``residual_mult``;
- an attention branch contributes ``residual_attn_ratio`` times an FFN branch.

Each branch kind gets a weight alpha (FFN: ``m * sqrt(2 / (1 + r^2))``, attention ``r`` times
that). Branch i (0-based) then has ``tau_i = alpha_i^2 / v_{i+1}``, where
``v_i = L/2 + sum_{j<i} alpha_j^2`` is the stream's running total and L the number of
branches. This is scmm's convention, ``y = sqrt(1 - tau) x + sqrt(tau) f(x)``. The PyTorch
library writes ``tau_lib = alpha_i / sqrt(v_i)`` with ``y = (x + tau_lib f(x)) / sqrt(1 +
tau_lib^2)``, and the two are the same rule: ``tau = tau_lib^2 / (1 + tau_lib^2)``
(tested against the library's formula). At m = r = 1 it is ``1 / (L/2 + i + 1)``: scmm's
running mean with the embedding counted as L/2 branches.

Unlike the library, which assumes strictly alternating attention and FFN branches, the branch
kinds are given, so a model with no FFN (``model.token.type none``) or a mixer other than
attention gets the same three properties over the branches it has. Not yet used by a scheme:
the u-mup scheme of issue 14 will take its taus from here.
"""

import math
from typing import Sequence

BRANCH_KINDS = ("attention", "ffn")


def branch_weights(residual_mult: float, residual_attn_ratio: float) -> dict[str, float]:
    """alpha per branch kind: FFN ``m sqrt(2 / (1 + r^2))``, attention ``r`` times that."""
    for name, value in (
        ("residual_mult", residual_mult),
        ("residual_attn_ratio", residual_attn_ratio),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    ffn = residual_mult * math.sqrt(2.0 / (1.0 + residual_attn_ratio**2))
    return {"ffn": ffn, "attention": residual_attn_ratio * ffn}


def residual_taus(
    branches: Sequence[str], residual_mult: float = 1.0, residual_attn_ratio: float = 1.0
) -> list[float]:
    """scmm's tau of each branch, in trunk order (``branches``: "attention" or "ffn" each)."""
    unknown = [kind for kind in branches if kind not in BRANCH_KINDS]
    if unknown or not branches:
        raise ValueError(
            f"branches must be a non-empty list of {', '.join(BRANCH_KINDS)}, got {list(branches)}"
        )
    alpha = branch_weights(residual_mult, residual_attn_ratio)
    total = len(branches) / 2.0  # the embedding counts as half the branches
    taus = []
    for kind in branches:
        weight = alpha[kind] ** 2
        total += weight
        taus.append(weight / total)
    return taus


def contributions(taus: Sequence[float]) -> tuple[float, list[float]]:
    """(embedding, per-branch) squared contributions to the trunk's output under scmm's
    convention: what the three properties of the module docstring are about."""
    embedding = 1.0
    branch: list[float] = []
    for tau in taus:
        embedding *= 1.0 - tau
        branch = [c * (1.0 - tau) for c in branch] + [tau]
    return embedding, branch
