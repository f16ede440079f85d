"""Residual block around a sequence or token mixer, with norm placement and branch weighting.

    norm="pre":  y = skip * x + branch * f(LN(x))
    norm="post": y = LN(skip * x + branch * f(x))
    norm="none": y = skip * x + branch * f(x)

Weighting: "plain" (skip = branch = 1), "fixed" (alpha given) or "mean" (alpha = 1/(l+1) for
the l-th residual block counted from 1, the embedding being term 0), with
skip = sqrt(1 - alpha), branch = sqrt(alpha). With "mean" the residual stream is the running
mean of the embedding and every branch output, so its scale stays constant with depth.
"""

import math
from typing import Any, Literal

import keras
import tensorflow as tf

from .core import LayerNorm

NormPlacement = Literal["pre", "post", "none"]


def residual_weights(weighting: str, alpha: float, index: int) -> tuple[float, float]:
    """(skip, branch) multipliers of the ``index``-th residual block (1-based)."""
    if weighting == "plain":
        return 1.0, 1.0
    if weighting == "fixed":
        tau = alpha
    elif weighting == "mean":
        tau = 1.0 / (index + 1)
    else:
        raise ValueError(f"residual weighting must be plain|fixed|mean, got {weighting!r}")
    if not 0.0 < tau < 1.0:
        raise ValueError(f"residual alpha must be in (0, 1), got {tau}")
    return math.sqrt(1.0 - tau), math.sqrt(tau)


class Residual(keras.layers.Layer):
    """Residual block: wraps ``body`` (a layer mapping (b, s, h) -> (b, s, h))."""

    norm_class: type[LayerNorm] = LayerNorm  # the unit-scaled twin swaps this

    def __init__(
        self,
        body: keras.layers.Layer,
        hidden_size: int,
        norm: NormPlacement = "pre",
        skip: float = 1.0,
        branch: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if norm not in ("pre", "post", "none"):
            raise ValueError(f"residual norm must be pre|post|none, got {norm!r}")
        self.body = body
        self.hidden_size = hidden_size
        self.norm_placement = norm
        self.skip = skip
        self.branch = branch
        self.norm = self.norm_class(hidden_size, name="norm") if norm != "none" else None

    def build(self, input_shape: Any = None) -> None:
        if self.norm is not None:
            self.norm.build(None)
        self.body.build(None)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden)
        norm = self.norm
        branch_input = norm(x) if norm is not None and self.norm_placement == "pre" else x
        y = self._scale(x, self.skip) + self._scale(self.body(branch_input), self.branch)
        return norm(y) if norm is not None and self.norm_placement == "post" else y

    @staticmethod
    def _scale(x: tf.Tensor, factor: float) -> tf.Tensor:
        return x if factor == 1.0 else x * tf.cast(factor, x.dtype)
