"""The u-mup op set: unit scaling with mu-P's readout and attention, and u-mup's multipliers.

u-mup (Blake et al. 2024; ``../shared/reference/unit-scaling-papers.md`` section E) keeps
unit scaling's ops with three changes, all here, and four multipliers (default 1) that each
change the forward function:

- **The "forward" constraint** on non-cut edges (the library's ``to_output_scale``): an op
  scales its input gradient by its output scale, so every activation is unit at init and the
  backward pass is the true gradient of that function (unit scaling's geometric mean moves half
  of each mismatch into the forward pass).
- **mu-P's readout**: forward 1/fan_in, backward fan_out^-1/2, unconstrained
  (``scmm.uscale.readout``; ``readout_constraint="forward"`` ties both to 1/fan_in).
- **mu-P's attention temperature** ``attn_softmax / head_size`` instead of 1/sqrt(head_size).
  At init the logits then have variance ~2 attn_softmax^2 / head_size: nearly uniform
  attention, a causal running mean of the values. How much a running mean shrinks depends on
  the data: by alpha = ``attention_scale`` (6.5 for 256 positions, hs 64) for values iid
  across positions (the first layer on random tokens), not at all for values that share a
  component (deeper layers: each attention branch adds a running mean to the stream). The
  output (and, one consistent scale, the q, k and v gradients) is multiplied by alpha^1/2,
  the geometric middle of the two extremes. Measured at init (hidden 128, 8 x 256
  characters, depth 8, attention outputs / their input gradients): alpha^1/2 0.45-1.93 /
  0.30-3.7 over random and text batches; alpha (the PyTorch library's choice, the iid fit)
  1.1-5.8, and it blows up the stream (std 2.8 at the top, so every gradient below the final
  norm is ~0.35); 1 (plain mixing, the unit scheme's) 0.18-0.57 / 1.06-1.13. A larger scale
  also feeds back: a shared component passes every running mean unshrunk and is multiplied by
  the scale at each layer.
- Multipliers: ``attn_softmax`` (above), ``ffn_act`` (the FFN's gelu(ffn_act x) / ffn_act,
  scales computed exactly), ``loss_softmax`` (cross-entropy of loss_softmax x logits). The
  residual multipliers are the scheme's (``scmm.schemes.umup_residual``): they set tau.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from .. import uscale
from .unit import UnitOps

READOUT_CONSTRAINTS = ("none", "forward")


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"u-mup multiplier {name} must be a finite number > 0, got {value!r}")
    return value


def umup_logit_variance(attn_softmax: float, head_size: int) -> float:
    """Variance of u-mup's attention logits at init: (mult / hs)^2 x (hs + hs) for unit q, k
    and position keys (content and position scores, each a sum of hs unit products)."""
    return 2.0 * attn_softmax**2 / head_size


class UmupOps(UnitOps):
    """u-mup's ops (see the module docstring); options are the multipliers."""

    name = "umup"
    constraint: uscale.Constraint = "forward"

    def __init__(
        self,
        attn_softmax: float = 1.0,
        ffn_act: float = 1.0,
        loss_softmax: float = 1.0,
        readout_constraint: str = "none",
    ):
        self.attn_softmax = _positive("attn_softmax", attn_softmax)
        self.ffn_act = _positive("ffn_act", ffn_act)
        self.loss_softmax = _positive("loss_softmax", loss_softmax)
        if readout_constraint not in READOUT_CONSTRAINTS:
            raise ValueError(
                f"u-mup readout_constraint must be one of {', '.join(READOUT_CONSTRAINTS)},"
                f" got {readout_constraint!r}"
            )
        self.readout_constraint = readout_constraint

    def readout(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if self.readout_constraint == "none":
            return uscale.readout(x, kernel)
        return uscale.readout(x, kernel, "forward")

    def ffn_activation(self, x: tf.Tensor, kind: str) -> tf.Tensor:
        if kind == "gelu":
            return uscale.gelu(x, self.constraint, mult=self.ffn_act)
        if kind == "relu":
            # relu(m x) / m = relu(x): the multiplier cannot act (the scheme's settings refuse
            # ffn_act != 1 with a relu FFN rather than ignore it).
            return self.relu(x)
        raise ValueError(f"FFN activation must be relu|gelu, got {kind!r}")

    def positional_keys(
        self, embedding: np.ndarray, weight: tf.Tensor, batch: int, dtype: tf.DType
    ) -> tf.Tensor:
        head_size = int(weight.shape[-1])
        return uscale.positional_keys(
            embedding,
            weight,
            batch,
            dtype,
            logit_variance=umup_logit_variance(self.attn_softmax, head_size),
        )

    def attention(
        self, q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, pos_keys: tf.Tensor, query_chunk: int
    ) -> tf.Tensor:
        seq, head_size = int(q.shape[2]), int(q.shape[3])
        variance = umup_logit_variance(self.attn_softmax, head_size)
        return uscale.causal_attention(
            q,
            k,
            v,
            pos_keys,
            query_chunk,
            scale=uscale.attention_scale(seq, variance) ** 0.5,
            temperature=self.attn_softmax / head_size,
        )

    def cross_entropy(
        self,
        logits: tf.Tensor,
        targets: tf.Tensor,
        mask: tf.Tensor,
        weights: Optional[tf.Tensor] = None,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        return uscale.softmax_cross_entropy(
            logits, targets, mask, mult=self.loss_softmax, weights=weights
        )
