"""Scaling-scheme settings (``--model.scaling.type regular|unit``), importable without TF.

The scheme is part of the model: ``ModelSettings`` alone rebuilds a model, scheme included.
Each choice builds the scheme object it describes (``build()``).
"""

import dataclasses
from typing import TYPE_CHECKING

import draccus

if TYPE_CHECKING:
    from .scheme import Scheme


@dataclasses.dataclass
class ScalingSettings(draccus.ChoiceRegistry):
    """Base of the scaling-scheme choices (regular | unit)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def build(self) -> "Scheme":
        """The scheme object this choice describes."""
        raise NotImplementedError

    def validate(self, residual_weighting: str) -> None:
        """Raise ValueError if the scheme cannot wrap residuals weighted this way."""


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

    def validate(self, residual_weighting: str) -> None:
        if residual_weighting == "plain":
            raise ValueError(
                "model.scaling.type=unit needs model.residual.weighting fixed or mean, got"
                " 'plain' (x + f(x) grows the residual stream, so it has no unit-scaled form)"
            )
