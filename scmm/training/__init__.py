"""Training: optimisers, gradient clipping, weight rounding, compiled multi-step training and
evaluation.

Settings import without TensorFlow; everything else loads it on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ..precision_settings import WeightStorage
from .settings import (
    AdamWSettings,
    ClippingSettings,
    OptimiserSettings,
    SGDMSettings,
    TrainingSettings,
)

if TYPE_CHECKING:
    from .optimisers import AdamW, Optimiser, SGDM
    from .clipping import clip_gradients
    from .rounding import stochastic_round
    from .trainer import LanguageModel, NonFiniteError, Trainer, bits_per_character

_LAZY = {
    "AdamW": "optimisers",
    "Optimiser": "optimisers",
    "SGDM": "optimisers",
    "clip_gradients": "clipping",
    "stochastic_round": "rounding",
    "LanguageModel": "trainer",
    "NonFiniteError": "trainer",
    "Trainer": "trainer",
    "bits_per_character": "trainer",
}

__all__ = [
    "AdamWSettings",
    "ClippingSettings",
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
