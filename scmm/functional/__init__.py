"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

from .elementwise import add, gelu, relu, sigmoid, silu, tanh

__all__: list[str] = [
    "add",
    "gelu",
    "relu",
    "sigmoid",
    "silu",
    "tanh",
]
