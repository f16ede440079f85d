"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

from .attention import dot_product_attention
from .einsum import einsum, weight_einsum
from .softmax import softmax

__all__: list[str] = ["dot_product_attention", "einsum", "softmax", "weight_einsum"]
