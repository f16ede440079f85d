"""``scmm.uu.losses.SparseCategoricalCrossentropy``: Keras's loss from logits, unit-scaled.

Its value is ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``'s (mean over the
scored tokens); the logits' gradient is ``scmm.U.sparse_categorical_crossentropy``'s (std ~1
per scored token). It reduces itself (``__call__`` returns the scalar), because Keras's own
reduction would divide the unit-scaled gradient by the token count again; sample weights are
refused for the same reason (use ``ignore_class``).
"""

from typing import Any, Optional

import keras

from ..functional.losses import sparse_categorical_crossentropy
from .base import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Unit-scaled sparse categorical cross-entropy from logits (see the module docstring)."""

    def __init__(
        self,
        from_logits: bool = True,
        ignore_class: Optional[int] = None,
        mult: float = 1.0,
        name: str = "sparse_categorical_crossentropy",
        **kwargs: Any,
    ):
        if not from_logits:
            raise ValueError("uu.losses.SparseCategoricalCrossentropy needs from_logits=True")
        super().__init__(name=name, **kwargs)
        self.from_logits = True
        self.ignore_class = ignore_class
        self.mult = float(mult)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            raise ValueError(
                "uu.losses.SparseCategoricalCrossentropy takes no sample_weight (it would rescale"
                " the unit-scaled gradient); mark unscored targets with ignore_class"
            )
        return self.call(y_true, y_pred)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=True, ignore_class=self.ignore_class, mult=self.mult
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("reduction", None)
        return {**config, "from_logits": True, "ignore_class": self.ignore_class, "mult": self.mult}
