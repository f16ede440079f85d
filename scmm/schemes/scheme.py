"""Scaling schemes: each one object owning every decision that makes a model regular or unit.

A scheme provides the op set its layers compute with, the residual rule (tau of each block),
the per-parameter rules (learning-rate and weight-decay multipliers, gradient factors), its
init-time calibration and the state a checkpoint must keep. Nothing else in scmm asks "is this
model unit-scaled?": the model, optimiser, runner and benchmark ask the scheme.
"""

import math
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import keras

from ..parameters import ParameterTable

BranchKind = Literal["sequence", "token"]


class Scheme:
    """Base: plain ops, the standard residual rule, every multiplier 1, no calibration."""

    name = "regular"
    ops: Union[str, dict[str, Any]] = "plain"
    """Spec of the op set (``scmm.ops.get_ops``) the model's layers use."""
    calibrates = False
    """Whether ``calibrate`` should run on a fresh model before its first step."""
    use_bias = True
    """Whether layers have biases (and norms offsets)."""
    norm_scale = True
    """Whether norms have gains."""

    def residual_tau(self, weighting: str, alpha: float, index: int) -> Optional[float]:
        """tau of the ``index``-th (1-based) residual block; None for a plain x + f(x).

        fixed: alpha; mean: 1/(index + 1), so the stream is the running mean of the
        embedding and every branch output and its scale stays constant with depth.
        """
        if weighting == "plain":
            return None
        if weighting == "fixed":
            tau = alpha
        elif weighting == "mean":
            tau = 1.0 / (index + 1)
        else:
            raise ValueError(f"residual weighting must be plain|fixed|mean, got {weighting!r}")
        if not 0.0 < tau < 1.0:
            raise ValueError(f"residual alpha must be in (0, 1), got {tau}")
        return tau

    def residual_taus(
        self, weighting: str, alpha: float, branches: Sequence[BranchKind]
    ) -> list[Optional[float]]:
        """tau of every residual block, in trunk order (``branches``: each block's mixer kind)."""
        return [self.residual_tau(weighting, alpha, index) for index in range(1, len(branches) + 1)]

    def assign_multipliers(self, table: ParameterTable, optimiser: str = "adamw") -> None:
        """Set each row's learning-rate and weight-decay multipliers (here: all 1).

        ``optimiser``: the update rule the multipliers are for (u-mup's differ for SGD).
        """
        del optimiser
        for row in table:
            row.learning_rate_multiplier = 1.0
            row.weight_decay_multiplier = 1.0

    def calibrate(
        self, model: keras.layers.Layer, batch: Mapping[str, Any], table: ParameterTable
    ) -> dict[str, Any]:
        """Init-time calibration on one batch; a summary for the log (nothing here)."""
        del model, batch, table
        return {}

    def state(self, table: ParameterTable) -> dict[str, Any]:
        """What a checkpoint keeps of the scheme's decisions (JSON-able)."""
        return {"gradient_factors": table.gradient_factors()}

    def restore(self, table: ParameterTable, state: Mapping[str, Any]) -> None:
        """Restore ``state()`` output (before the first step is traced)."""
        table.set_gradient_factors(state["gradient_factors"])


class RegularScheme(Scheme):
    """The standard parametrisation the paper calls "regular"."""


class UnitScheme(Scheme):
    """Unit scaling: unit ops, weighted residuals only, vector learning rates, calibration."""

    name = "unit"
    ops = "unit"

    def __init__(self, calibrate: bool = True):
        self.calibrates = calibrate

    def residual_tau(self, weighting: str, alpha: float, index: int) -> Optional[float]:
        if weighting == "plain":
            raise ValueError(
                f"unit-scaled models need model.residual.weighting fixed or mean, got {weighting!r}"
                " (plain x + f(x) grows the residual stream and is not unit-scaled)"
            )
        return super().residual_tau(weighting, alpha, index)

    def assign_multipliers(self, table: ParameterTable, optimiser: str = "adamw") -> None:
        """Parameters with one axis (biases, gains, offsets, the shift's padding) train at
        learning rate / sqrt(size), as in the paper's code; everything else at 1. The rule is
        the paper's, by shape: the RNN's (2, hidden) bias counts as a matrix."""
        super().assign_multipliers(table, optimiser)
        for row in table:
            if len(row.shape) == 1:
                row.learning_rate_multiplier = 1 / math.sqrt(row.shape[0])

    def calibrate(
        self, model: keras.layers.Layer, batch: Mapping[str, Any], table: ParameterTable
    ) -> dict[str, Any]:
        """Fix each parameter's gradient factor so its RMS is 1 on ``batch`` (log2 summary)."""
        if not self.calibrates:
            return {}
        import numpy as np

        from ..uscale.calibration import calibrate_weight_gradients

        factors = calibrate_weight_gradients(model, batch, table)
        log2 = np.log2(np.array(list(factors.values())))
        return {
            "parameters": len(factors),
            "log2_factor_min": float(log2.min()),
            "log2_factor_median": float(np.median(log2)),
            "log2_factor_max": float(log2.max()),
        }


class UmupScheme(Scheme):
    """u-mup (Blake et al. 2024): the u-mup op set, its residual rule, mu-P's learning rates.

    No calibration: u-mup's learning-rate rules (Adam and SGD alike) are defined for the ops'
    own analytic gradient scales, and a measured per-parameter factor would be an extra
    learning-rate multiplier under SGD (tested: every factor stays 1).
    """

    name = "umup"
    calibrates = False

    def __init__(  # pylint: disable=too-many-arguments
        self,
        ops: dict[str, Any],
        residual_mult: float = 1.0,
        residual_attn_ratio: float = 1.0,
        norm_gains: bool = False,
        biases: bool = False,
    ):
        self.ops = ops
        self.residual_mult = residual_mult
        self.residual_attn_ratio = residual_attn_ratio
        self.norm_scale = norm_gains
        self.use_bias = biases

    def residual_taus(
        self, weighting: str, alpha: float, branches: Sequence[BranchKind]
    ) -> list[Optional[float]]:
        """u-mup's rule over every branch (``umup_residual``); sequence mixers play the part of
        attention, token mixers that of the FFN. ``weighting`` / ``alpha`` are not used: at
        residual_mult = ratio = 1 the rule is a running mean with the embedding counted as
        half the branches, so "mean" (and the default) read as it, and the settings refuse
        "fixed"."""
        from .umup_residual import residual_taus

        del weighting, alpha
        kinds = ["attention" if kind == "sequence" else "ffn" for kind in branches]
        return list(residual_taus(kinds, self.residual_mult, self.residual_attn_ratio))

    def assign_multipliers(self, table: ParameterTable, optimiser: str = "adamw") -> None:
        """u-mup's rules by role and depth (``umup_rules``, L = ``table.layers``); weight decay
        multipliers 1 (the decay itself is set by ``training.weight_decay_mode``)."""
        from .umup_rules import learning_rate_multipliers

        assert isinstance(self.ops, dict)
        readout = str(self.ops.get("readout_constraint", "none"))
        rates = learning_rate_multipliers(table, table.layers, optimiser, readout)
        for row in table:
            row.learning_rate_multiplier = rates[row.path]
            row.weight_decay_multiplier = 1.0
