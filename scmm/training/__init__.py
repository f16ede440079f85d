"""Training: optimisers, weight rounding, compiled multi-step training and evaluation."""

from .optimisers import AdamW, Optimiser, SGDM, make_optimiser, vector_learning_rate_scales
from .rounding import stochastic_round
from .settings import (
    AdamWSettings,
    OptimiserSettings,
    SGDMSettings,
    TrainingSettings,
    WeightStorage,
)
from .trainer import NonFiniteError, Trainer, bits_per_character

__all__ = [
    "AdamW",
    "AdamWSettings",
    "NonFiniteError",
    "Optimiser",
    "OptimiserSettings",
    "SGDM",
    "SGDMSettings",
    "Trainer",
    "TrainingSettings",
    "WeightStorage",
    "bits_per_character",
    "make_optimiser",
    "stochastic_round",
    "vector_learning_rate_scales",
]
