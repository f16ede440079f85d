"""The small model and optimisers both replica check scripts train (``replica_checks.py``,
``multiworker_checks.py``); importable, unlike them, because it configures no devices."""

import dataclasses

from conftest import model_settings, unit_scaled

from scmm.models import ModelSettings
from scmm.schemes import UmupScalingSettings
from scmm.training import AdamWSettings, SGDMSettings

SEQUENCES, LENGTH, VOCAB = 8, 12, 16
OPTIMISERS = {
    "sgdm": SGDMSettings(learning_rate=0.05, momentum=0.9, weight_decay=0.1),
    # epsilon well above float32 noise on gradients that are zero in exact arithmetic
    "adamw": AdamWSettings(learning_rate=0.01, weight_decay=0.1, epsilon=1e-4),
}


def settings(scheme: str) -> ModelSettings:
    """A small attention model of ``scheme`` (regular | unit | umup)."""
    base = model_settings("attention", hidden_size=16, depth=1, seed=3)
    if scheme == "unit":
        return unit_scaled(base)
    if scheme == "umup":
        return dataclasses.replace(unit_scaled(base), scaling=UmupScalingSettings())
    return base
