"""Drop-in unit-scaled Keras layers: replace ``keras.layers`` with ``scmm.uu``.

Each class subclasses the Keras layer of the same name (see ``scmm.uu.base`` for the extra
``scheme`` / ``constraint`` / ``precision`` arguments). The functional twins are ``scmm.U``.
"""

from . import losses
from .activation import Activation, ReLU
from .attention import MultiHeadAttention
from .base import DEFAULT_CONSTRAINT, SCHEMES, UnitScaled
from .conv import Conv1D
from .dense import Dense, DenseReadout
from .dropout import Dropout
from .einsum_dense import EinsumDense
from .embedding import Embedding
from .merging import Add
from .normalization import LayerNormalization, RMSNormalization
from .optimizers import AdamW
from .parameter_table import KerasParameterTable, parameter_table
from .residual import Residual
from .softmax import Softmax

__all__ = [
    "Activation",
    "AdamW",
    "Add",
    "Conv1D",
    "DEFAULT_CONSTRAINT",
    "Dense",
    "DenseReadout",
    "Dropout",
    "EinsumDense",
    "Embedding",
    "KerasParameterTable",
    "LayerNormalization",
    "MultiHeadAttention",
    "RMSNormalization",
    "ReLU",
    "Residual",
    "SCHEMES",
    "Softmax",
    "UnitScaled",
    "losses",
    "parameter_table",
]
