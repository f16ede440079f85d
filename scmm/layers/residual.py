"""Residual block around a sequence or token mixer, with norm placement and branch weighting.

    norm="pre":  y = sqrt(1 - tau) x + sqrt(tau) f(LN(x))
    norm="post": y = LN(sqrt(1 - tau) x + sqrt(tau) f(x))
    norm="none": y = sqrt(1 - tau) x + sqrt(tau) f(x)

``tau=None`` is the plain sum x + f(x). The scaling scheme chooses tau for each block (fixed,
or the running mean 1/(l+1) that keeps the residual stream's scale constant with depth); the
op set applies it (``residual_split`` / ``residual_add``: the unit-scaled set gives the branch a
unit gradient and pays the sqrt(tau) on the way into it).

With ``dropout_keep_probability`` p < 1, f's output is dropped out while training (the op
set's dropout: x m / p, or x m / sqrt(p) unit-scaled), from the stateless ``seed`` the caller
passes with ``training=True``.
"""

from typing import Any, Literal, Optional

import keras
import tensorflow as tf

from .base import ScaledLayer
from .core import LayerNorm

NormPlacement = Literal["pre", "post", "none"]


@keras.saving.register_keras_serializable(package="scmm")
class Residual(ScaledLayer):
    """Residual block wrapping ``body`` (a layer mapping (b, s, h) -> (b, s, h)).

    Weights: the body's, plus ``norm/gamma`` and ``norm/beta`` unless norm="none" (or the
    norm has no gain / offset: ``norm_scale`` / ``norm_center`` False, as under u-mup).
    """

    def __init__(
        self,
        body: keras.layers.Layer,
        hidden_size: int,
        norm: NormPlacement = "pre",
        tau: Optional[float] = None,
        norm_center: bool = True,
        norm_scale: bool = True,
        dropout_keep_probability: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 < dropout_keep_probability <= 1.0:
            raise ValueError(
                f"dropout keep probability must be in (0, 1], got {dropout_keep_probability}"
            )
        if norm not in ("pre", "post", "none"):
            raise ValueError(f"residual norm must be pre|post|none, got {norm!r}")
        if tau is not None and not 0.0 < tau < 1.0:
            raise ValueError(f"residual tau must be in (0, 1) or None (plain sum), got {tau}")
        if isinstance(body, dict):  # from get_config
            body = keras.saving.deserialize_keras_object(body)
        self.body = body
        self.hidden_size = hidden_size
        self.norm_placement = norm
        self.tau = tau
        self.norm_center = norm_center
        self.norm_scale = norm_scale
        self.dropout_keep_probability = dropout_keep_probability
        self.norm = (
            LayerNorm(
                hidden_size, center=norm_center, scale=norm_scale, ops=self.ops_name, name="norm"
            )
            if norm != "none"
            else None
        )

    def build(self, input_shape: Any = None) -> None:
        if self.norm is not None:
            self.norm.build(None)
        if not self.body.built:  # a body restored by from_config may come built
            self.body.build(None)

    def call(
        self, x: tf.Tensor, training: Optional[bool] = None, seed: Optional[tf.Tensor] = None
    ) -> tf.Tensor:
        # x: (batch, seq, hidden); seed: (2,) int32, needed when training with dropout
        skip, branch_input = self.ops.residual_split(x, self.tau)
        norm = self.norm
        if norm is not None and self.norm_placement == "pre":
            branch_input = norm(branch_input)
        branch = self.body(branch_input)
        if training and self.dropout_keep_probability < 1.0:
            if seed is None:
                raise ValueError(f"{self.name}: training with dropout needs a stateless seed")
            branch = self.ops.dropout(branch, self.dropout_keep_probability, seed)
        y = self.ops.residual_add(skip, branch, self.tau)
        return norm(y) if norm is not None and self.norm_placement == "post" else y

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "body": keras.saving.serialize_keras_object(self.body),
            "hidden_size": self.hidden_size,
            "norm": self.norm_placement,
            "tau": self.tau,
            "norm_center": self.norm_center,
            "norm_scale": self.norm_scale,
            "dropout_keep_probability": self.dropout_keep_probability,
        }
