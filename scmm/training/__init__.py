"""Training: optimisers, weight rounding, compiled multi-step training and evaluation.

Settings import without TensorFlow; everything else loads it on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .settings import (
    AdamWSettings,
    OptimiserSettings,
    SGDMSettings,
    TrainingSettings,
    WeightStorage,
)

if TYPE_CHECKING:
    from .optimisers import AdamW, Optimiser, SGDM, make_optimiser, vector_learning_rate_scales
    from .rounding import stochastic_round
    from .trainer import NonFiniteError, Trainer, bits_per_character

_LAZY = {
    "AdamW": "optimisers",
    "Optimiser": "optimisers",
    "SGDM": "optimisers",
    "make_optimiser": "optimisers",
    "vector_learning_rate_scales": "optimisers",
    "stochastic_round": "rounding",
    "NonFiniteError": "trainer",
    "Trainer": "trainer",
    "bits_per_character": "trainer",
}

__all__ = [
    "AdamWSettings",
    "OptimiserSettings",
    "SGDMSettings",
    "TrainingSettings",
    "WeightStorage",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
