"""Unit-scaled ``Dropout``: Keras's inverted dropout times sqrt(1 - rate) while training, so
the output (and the input gradient) keeps unit variance, not unit mean (``scmm.U.dropout``).

At inference it is the identity, like Keras's: a unit input stays unit, so training and
inference see activations of the same scale.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional import elementwise
from .base import PACKAGE, PrecisionLike, UnitScaled


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dropout(UnitScaled, keras.layers.Dropout):
    """``keras.layers.Dropout`` with a variance-preserving training output. ``rate`` must be
    below 1 (rate 1 zeroes everything: no scale can make that unit)."""

    def __init__(
        self,
        rate: float,
        noise_shape: Any = None,
        seed: Optional[int] = None,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"scmm.uu.Dropout rate must be a number in [0, 1), got {rate!r}")
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
        self.init_unit_scaling(scheme, constraint, precision)

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        if training and self.rate > 0:
            return elementwise.dropout(
                inputs, self.rate, noise_shape=self.noise_shape, seed=self.seed_generator
            )
        return inputs

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}
