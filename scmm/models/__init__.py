"""Character language models built from one settings dataclass."""

from .model import CharLM, dtype_policy_name, masked_cross_entropy
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

__all__ = [
    "AttentionSettings",
    "CharLM",
    "ConvSettings",
    "FFNSettings",
    "ModelSettings",
    "NoTokenMixerSettings",
    "RNNSettings",
    "ResidualSettings",
    "SequenceMixerSettings",
    "TokenMixerSettings",
    "dtype_policy_name",
    "masked_cross_entropy",
]
