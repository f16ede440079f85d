"""Drop-in unit-scaled Keras layers: replace ``keras.layers`` with ``scmm.uu``.

Each class subclasses the Keras layer of the same name (see ``scmm.uu.base`` for the extra
``scheme`` / ``constraint`` / ``precision`` arguments). The functional twins are ``scmm.U``.
"""

from .attention import MultiHeadAttention
from .base import DEFAULT_CONSTRAINT, SCHEMES, UnitScaled
from .einsum_dense import EinsumDense
from .softmax import Softmax

__all__ = [
    "DEFAULT_CONSTRAINT",
    "EinsumDense",
    "MultiHeadAttention",
    "SCHEMES",
    "Softmax",
    "UnitScaled",
]
