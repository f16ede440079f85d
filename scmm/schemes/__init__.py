"""Scaling schemes (regular | unit): op set, residual rule, per-parameter rules, calibration.

Settings import without TensorFlow; ``ScalingSettings.build()`` returns the scheme object.
"""

from .settings import RegularScalingSettings, ScalingSettings, UnitScalingSettings

__all__ = ["RegularScalingSettings", "ScalingSettings", "UnitScalingSettings"]
