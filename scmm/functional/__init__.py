"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

from .attention import dot_product_attention
from .conv import conv1d
from .linear import embedding, linear, matmul, readout
from .einsum import einsum, weight_einsum
from .softmax import softmax

__all__: list[str] = [
    "conv1d",
    "embedding",
    "linear",
    "matmul",
    "readout",
    "dot_product_attention",
    "einsum",
    "softmax",
    "weight_einsum",
]
