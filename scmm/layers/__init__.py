"""scmm's Keras layers, each written once over an op set (``ops="plain"`` or ``"unit"``).

A layer's arithmetic comes from ``scmm.ops``: the plain set gives the regular models, the
unit-scaled set the unit-scaled ones, with the same constructor arguments, weight names and
shapes (so a checkpoint's weights load into either).
"""

from ..ops.kernels import relative_shift, sinusoid_embedding
from .attention import Attention
from .base import ScaledLayer, parameter_facts, seeded_normal
from .conv import CausalConv
from .core import Embedding, LayerNorm, Projection, Shift
from .ffn import FFN
from .residual import Residual
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
    "ScaledLayer",
    "Shift",
    "parameter_facts",
    "relative_shift",
    "seeded_normal",
    "sinusoid_embedding",
]
