"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

from .attention import dot_product_attention
from .conv import conv1d
from .einsum import einsum, weight_einsum
from .elementwise import add, dropout, gelu, relu, sigmoid, silu, tanh
from .linear import embedding, linear, matmul, readout
from .losses import sparse_categorical_crossentropy
from .normalization import layer_norm, layer_normalization, rms_norm, rms_normalization
from .residual import residual_add, residual_split, tau_from_library
from .softmax import softmax

__all__: list[str] = [
    "add",
    "conv1d",
    "dot_product_attention",
    "dropout",
    "einsum",
    "embedding",
    "gelu",
    "layer_norm",
    "layer_normalization",
    "linear",
    "matmul",
    "readout",
    "relu",
    "residual_add",
    "residual_split",
    "rms_norm",
    "rms_normalization",
    "sigmoid",
    "silu",
    "softmax",
    "sparse_categorical_crossentropy",
    "tanh",
    "tau_from_library",
    "weight_einsum",
]
