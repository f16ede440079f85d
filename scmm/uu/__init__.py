"""Drop-in unit-scaled Keras layers: replace ``keras.layers`` with ``scmm.uu``.

Each class subclasses the Keras layer of the same name (see ``scmm.uu.base`` for the extra
``scheme`` / ``constraint`` / ``precision`` arguments). The functional twins are ``scmm.U``.
"""

from . import losses
from .activation import Activation, ReLU
from .base import DEFAULT_CONSTRAINT, SCHEMES, UnitScaled
from .dropout import Dropout
from .merging import Add
from .normalization import LayerNormalization, RMSNormalization
from .residual import Residual

__all__ = [
    "Activation",
    "Add",
    "DEFAULT_CONSTRAINT",
    "Dropout",
    "LayerNormalization",
    "RMSNormalization",
    "ReLU",
    "Residual",
    "SCHEMES",
    "UnitScaled",
    "losses",
]
