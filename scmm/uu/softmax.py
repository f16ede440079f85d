"""``scmm.uu.Softmax``: ``keras.layers.Softmax`` computing ``scmm.U.softmax``.

The output is the softmax times a constant (unit rms for iid N(0, 1) logits: ``U.softmax``),
so it sums to that constant, not to 1: use it where the softmax output is an activation
(mixing weights that a later op rescales), not as a probability.
"""

from typing import Any, Optional, cast

import keras
import tensorflow as tf

from ..functional.softmax import softmax, softmax_scales
from ..uscale.scaling import Constraint
from .base import PACKAGE, PrecisionLike, UnitScaled


@keras.saving.register_keras_serializable(package=PACKAGE)
class Softmax(UnitScaled, keras.layers.Softmax):
    """Unit-scaled ``keras.layers.Softmax(axis)`` of ``mult * x`` (``U.softmax``).

    One int ``axis`` (Keras's tuple axes are refused). The ``mask`` call argument is refused:
    a masked row has fewer live entries, so its scale would have to be per row.
    """

    def __init__(
        self,
        axis: int = -1,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        mult: float = 1.0,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if not isinstance(axis, int):
            raise ValueError(f"uu.Softmax takes one int axis, got axis={axis!r}")
        super().__init__(axis=axis, **kwargs)
        self.init_unit_scaling(scheme, constraint, precision)
        softmax_scales(2, float(mult))  # validates mult before any compute
        self.mult = float(mult)

    def call(self, inputs: tf.Tensor, mask: Any = None) -> tf.Tensor:
        if mask is not None:
            raise ValueError(
                "uu.Softmax does not take a mask: the unit scale of a masked row depends on"
                " its number of live entries. Use U.dot_product_attention for masked attention"
            )
        with self.precision_scope():
            return softmax(
                inputs, axis=self.axis, mult=self.mult, constraint=cast(Constraint, self.constraint)
            )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config(), "mult": self.mult}
