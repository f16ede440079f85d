"""Unit-scaled ops under ``keras.ops`` names (``from scmm import U``): the functional twins
of ``scmm.uu``, built on ``scmm.uscale``.
"""

__all__: list[str] = []
