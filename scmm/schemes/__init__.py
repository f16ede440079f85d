"""Scaling schemes (regular | unit | umup): op set, residual rule, per-parameter rules, calibration.

Settings import without TensorFlow; ``ScalingSettings.build()`` returns the scheme object.
"""

from .settings import (
    RegularScalingSettings,
    ScalingSettings,
    UmupScalingSettings,
    UnitScalingSettings,
)

__all__ = [
    "RegularScalingSettings",
    "ScalingSettings",
    "UmupScalingSettings",
    "UnitScalingSettings",
]
