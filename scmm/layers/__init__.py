"""Baseline (regular, not unit-scaled) Keras layers of the character LM."""

from .attention import Attention, relative_shift, sinusoid_embedding
from .conv import CausalConv
from .core import Embedding, LayerNorm, Projection, SeededLayer, Shift
from .ffn import FFN
from .residual import Residual, residual_weights
from .rnn import RecurrentHighway

__all__ = [
    "Attention",
    "CausalConv",
    "Embedding",
    "FFN",
    "LayerNorm",
    "Projection",
    "RecurrentHighway",
    "Residual",
    "SeededLayer",
    "Shift",
    "relative_shift",
    "residual_weights",
    "sinusoid_embedding",
]
