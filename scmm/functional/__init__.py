"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

from .elementwise import add, dropout, gelu, relu, sigmoid, silu, tanh
from .losses import sparse_categorical_crossentropy
from .normalization import layer_norm, layer_normalization, rms_norm, rms_normalization
from .residual import residual_add, residual_split, tau_from_library

__all__: list[str] = [
    "add",
    "dropout",
    "gelu",
    "layer_norm",
    "layer_normalization",
    "relu",
    "residual_add",
    "residual_split",
    "rms_norm",
    "rms_normalization",
    "sigmoid",
    "sparse_categorical_crossentropy",
    "silu",
    "tanh",
    "tau_from_library",
]
