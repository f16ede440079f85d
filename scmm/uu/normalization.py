"""Unit-scaled ``LayerNormalization`` and ``RMSNormalization`` (``scmm.U.layer_norm`` /
``rms_norm``): Keras's forward pass, gain and offset gradients scaled by rows^-1/2.

Both keep Keras's constructor, variables (same names, shapes, initialisers, order) and config,
so the ``unit_scale`` transform can build a twin from ``get_config()`` plus ``scheme``.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from ..functional import normalization
from ..parameters import ParameterInfo
from .base import PACKAGE, PrecisionLike, UnitScaled


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerNormalization(UnitScaled, keras.layers.LayerNormalization):
    """``keras.layers.LayerNormalization`` with unit-scaled gamma / beta gradients.

    Keras's deprecated ``rms_scaling=True`` (which divides by the standard deviation, not the
    RMS) is refused: use ``RMSNormalization``. ``constraint`` is accepted for a uniform API
    but has nothing to tie here (x passes unscaled).
    """

    def __init__(  # pylint: disable=too-many-arguments,too-many-locals,too-many-positional-arguments
        self,
        axis: Any = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        if kwargs.get("rms_scaling"):
            raise ValueError(
                "scmm.uu.LayerNormalization does not support rms_scaling=True (deprecated in"
                " Keras: it divides by the standard deviation); use scmm.uu.RMSNormalization"
            )
        normalization.check_epsilon(epsilon, "LayerNormalization")
        super().__init__(
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self.init_unit_scaling(scheme, constraint, precision)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        with self.precision_scope():
            outputs = normalization.layer_norm(
                inputs, self.gamma, self.beta, axis=self.axis, epsilon=self.epsilon
            )
        return keras.ops.cast(outputs, self.compute_dtype)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        info = {}
        if self.gamma is not None:
            info["gamma"] = ParameterInfo("gain")
        if self.beta is not None:
            info["beta"] = ParameterInfo("offset")
        return info

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class RMSNormalization(UnitScaled, keras.layers.RMSNormalization):
    """``keras.layers.RMSNormalization`` with a unit-scaled ``scale`` gradient."""

    def __init__(
        self,
        axis: Any = -1,
        epsilon: float = 1e-6,
        *,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
        **kwargs: Any,
    ):
        normalization.check_epsilon(epsilon, "RMSNormalization")
        super().__init__(axis=axis, epsilon=epsilon, **kwargs)
        self.init_unit_scaling(scheme, constraint, precision)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        with self.precision_scope():
            return normalization.rms_norm(x, self.scale, axis=self.axis, epsilon=self.epsilon)

    def parameter_info(self) -> dict[str, ParameterInfo]:
        return {"scale": ParameterInfo("gain")}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.unit_config()}
