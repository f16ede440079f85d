"""Scaling-scheme settings (``--model.scaling.type regular|unit|umup``), importable without TF.

The scheme is part of the model: ``ModelSettings`` alone rebuilds a model, scheme included.
Each choice builds the scheme object it describes (``build()``).
"""

import dataclasses
import math
from typing import TYPE_CHECKING, Literal, Optional

import draccus

if TYPE_CHECKING:
    from .scheme import Scheme


@dataclasses.dataclass
class ScalingSettings(draccus.ChoiceRegistry):
    """Base of the scaling-scheme choices (regular | unit | umup)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def build(self) -> "Scheme":
        """The scheme object this choice describes."""
        raise NotImplementedError

    def validate(
        self,
        residual_weighting: str,
        residual_norm: str = "pre",
        token_activation: Optional[str] = None,
    ) -> None:
        """Raise ValueError if the scheme cannot build this model (residual weighting and norm
        placement; the FFN's activation, None without an FFN)."""


@ScalingSettings.register_subclass("regular")
@dataclasses.dataclass
class RegularScalingSettings(ScalingSettings):
    """Standard parametrisation: N(0, 1/fan_in) weights, plain ops, any residual weighting."""

    def build(self) -> "Scheme":
        from .scheme import RegularScheme

        return RegularScheme()


@ScalingSettings.register_subclass("unit")
@dataclasses.dataclass
class UnitScalingSettings(ScalingSettings):
    """Unit scaling (Blake et al. 2023): unit-initialised weights and unit-scaled ops
    (``scmm.uscale``), weighted residuals, vector parameters at learning rate / sqrt(size)."""

    calibrate: bool = True
    """Before step 0, measure every parameter's gradient RMS on one training batch and fix a
    per-parameter factor making it 1 (scmm.uscale.calibration). A cut edge: the model, its
    activation gradients and Adam's updates are unchanged. false keeps the analytic rows^-1/2
    scales."""

    def build(self) -> "Scheme":
        from .scheme import UnitScheme

        return UnitScheme(calibrate=self.calibrate)

    def validate(
        self,
        residual_weighting: str,
        residual_norm: str = "pre",
        token_activation: Optional[str] = None,
    ) -> None:
        if residual_weighting == "plain":
            raise ValueError(
                "model.scaling.type=unit needs model.residual.weighting fixed or mean, got"
                " 'plain' (x + f(x) grows the residual stream, so it has no unit-scaled form)"
            )


@ScalingSettings.register_subclass("umup")
@dataclasses.dataclass
class UmupScalingSettings(ScalingSettings):  # pylint: disable=too-many-instance-attributes
    """u-mup (Blake et al. 2024): unit scaling with mu-P's learning-rate rules, so the best
    learning rate of a small model transfers to wider and deeper ones. Unit-initialised
    weights; ops with the "forward" constraint, mu-P's readout (forward 1/fan_in) and attention
    temperature (mult / head_size); the u-mup residual rule; learning rates by role, fan-in and
    depth (scmm.schemes.umup_rules). Every multiplier changes the forward function."""

    attn_softmax: float = 1.0
    """Attention softmax temperature: logits x attn_softmax / head_size."""
    ffn_act: float = 1.0
    """FFN nonlinearity temperature: gelu(ffn_act x) / ffn_act (needs model.token.activation
    gelu: relu is unchanged by it)."""
    residual_mult: float = 1.0
    """Branches' average contribution to the trunk relative to the embedding's."""
    residual_attn_ratio: float = 1.0
    """A sequence-mixer (attention) branch's contribution relative to a token-mixer (FFN) one."""
    loss_softmax: float = 1.0
    """Cross-entropy softmax temperature: the loss of loss_softmax x logits."""
    norm_gains: bool = False
    """Give the layer norms gains (u-mup's norms are non-parametric by default)."""
    biases: bool = False
    """Give layers biases and norms offsets (off by default, as in u-mup)."""
    readout_constraint: Literal["none", "forward"] = "none"
    """none: the readout's backward scale is fan_out^-1/2, unconstrained (u-mup's default);
    forward: tied to its forward 1/fan_in (the library's to_output_scale; SGD then uses
    u-mup's SGD rule)."""

    def build(self) -> "Scheme":
        from .scheme import UmupScheme

        ops = {
            "name": "umup",
            "attn_softmax": self.attn_softmax,
            "ffn_act": self.ffn_act,
            "loss_softmax": self.loss_softmax,
            "readout_constraint": self.readout_constraint,
        }
        return UmupScheme(
            ops, self.residual_mult, self.residual_attn_ratio, self.norm_gains, self.biases
        )

    def validate(
        self,
        residual_weighting: str,
        residual_norm: str = "pre",
        token_activation: Optional[str] = None,
    ) -> None:
        for name in (
            "attn_softmax",
            "ffn_act",
            "residual_mult",
            "residual_attn_ratio",
            "loss_softmax",
        ):
            _check_multiplier(name, getattr(self, name))
        if self.readout_constraint not in ("none", "forward"):
            raise ValueError(
                "model.scaling.readout_constraint must be none|forward, got"
                f" {self.readout_constraint!r}"
            )
        if residual_weighting == "fixed":
            raise ValueError(
                "model.residual.weighting='fixed' does not fit model.scaling.type=umup: its"
                " residual rule sets every branch's tau from model.scaling.residual_mult and"
                " residual_attn_ratio (a running mean at 1, 1). Use weighting mean (or the"
                " default), which umup reads as its rule"
            )
        if residual_norm == "post":
            raise ValueError(
                "model.scaling.type=umup needs model.residual.norm pre or none, got 'post'"
                " (u-mup's residual rule is derived for an un-normalised residual stream)"
            )
        if self.ffn_act != 1.0 and token_activation != "gelu":
            raise ValueError(
                f"model.scaling.ffn_act={self.ffn_act} needs model.token.type ffn with"
                f" activation gelu, got {token_activation or 'no FFN'!r} (relu(m x)/m = relu(x):"
                " the multiplier would do nothing)"
            )


def _check_multiplier(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"model.scaling.{name} must be a finite number > 0, got {value!r}")
