"""Character language models built from one settings dataclass.

Settings import without TensorFlow; the model classes load it on first use.
"""

from typing import TYPE_CHECKING, Any

from .settings import (
    AttentionSettings,
    ConvSettings,
    FFNSettings,
    ModelSettings,
    NoTokenMixerSettings,
    ResidualSettings,
    RNNSettings,
    SequenceMixerSettings,
    TokenMixerSettings,
)

if TYPE_CHECKING:
    from .model import CharLM, dtype_policy_name, masked_cross_entropy

_LAZY = ("CharLM", "dtype_policy_name", "masked_cross_entropy")

__all__ = [
    "AttentionSettings",
    "ConvSettings",
    "FFNSettings",
    "ModelSettings",
    "NoTokenMixerSettings",
    "RNNSettings",
    "ResidualSettings",
    "SequenceMixerSettings",
    "TokenMixerSettings",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
