"""Unit-scaled ``Add``: the sum of N inputs with output scale N^-1/2 (``scmm.U.add``'s rule).

For residual connections use ``scmm.uu.Residual`` (or the transform's residual layers): a plain
sum of a skip and a branch is not the interpolating residual add of unit scaling.
"""

from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

from ..functional import elementwise
from .base import PACKAGE, PrecisionLike, UnitScaled


@keras.saving.register_keras_serializable(package=PACKAGE)
class Add(UnitScaled, keras.layers.Add):
    """``keras.layers.Add`` unit-scaled: ideal output scale N^-1/2 for N inputs, gradient
    scale e^-1/2 for an input broadcast e-fold, tied by the constraint (gmean: one scale for
    all)."""

    def __init__(
        self,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.init_unit_scaling(scheme, constraint, precision)

    def _merge_function(self, inputs: Sequence[tf.Tensor]) -> tf.Tensor:
        with self.precision_scope():
            return elementwise.add_all(list(inputs), self.constraint)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}
