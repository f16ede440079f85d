"""Causal multi-head self-attention with Transformer-XL-style relative position scores.

score(i, j) = (q_i · k_j + q_i · p_{i-j}) / sqrt(head_size),  for j <= i (causal)

where p_r = W_pos · e_r is a learned per-head projection of a fixed sinusoid embedding e_r of
the relative distance r = i - j (``frequencies`` sin/cos pairs, periods geometric from 4
characters to ``max_period``). The positional term is computed once per (query, distance)
pair and moved to (query, key) layout with the "relative shift" reshape trick
(``scmm.ops.kernels``), which avoids an O(seq^2 x head) gather of position keys.
"""

from typing import Any

import keras
import tensorflow as tf

from ..ops.kernels import sinusoid_embedding
from .base import ScaledLayer


@keras.saving.register_keras_serializable(package="scmm")
class Attention(ScaledLayer):
    """Causal multi-head self-attention with relative sinusoid position scores.

    Weights: ``qkv`` (hidden_size, 3, heads, head_size), fan-in hidden_size; ``positional``
    (2 frequencies, heads, head_size), fan-in 2 frequencies; ``output_kernel`` (heads,
    head_size, hidden_size), fan-in heads x head_size; ``output_bias`` (hidden_size,; unless
    ``use_bias=False``).
    ``query_chunk`` only changes how the computation is split (results are equal up to float
    rounding): queries are processed in chunks that attend to keys up to the chunk's end.
    """

    def __init__(
        self,
        hidden_size: int,
        heads: int,
        head_size: int,
        frequencies: int,
        max_period: float,
        query_chunk: int = 64,
        use_bias: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.query_chunk = query_chunk
        self.use_bias = use_bias
        self.hidden_size = hidden_size
        self.heads = heads
        self.head_size = head_size
        self.frequencies = frequencies
        self.max_period = max_period

    def build(self, input_shape: Any = None) -> None:
        h, heads, hs, f = self.hidden_size, self.heads, self.head_size, 2 * self.frequencies
        self.qkv = self.add_parameter("qkv", (h, 3, heads, hs), "weight", fan_in=h)
        self.positional = self.add_parameter(
            "positional", (f, heads, hs), "weight", fan_in=f, seed_index=1
        )
        self.output_kernel = self.add_parameter(
            "output_kernel", (heads, hs, h), "weight", fan_in=heads * hs, seed_index=2
        )
        self.output_bias = (
            self.add_parameter("output_bias", (h,), "bias", init="zeros") if self.use_bias else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden)
        batch, seq = x.shape[0], x.shape[1]
        if batch is None or seq is None:
            raise ValueError(f"Attention needs static batch and sequence sizes, got {x.shape}")
        ops = self.ops
        q, k, v = ops.qkv_projection(x, self.read_kernel("qkv"))  # each (b, heads, s, hs)
        # Position keys for distances seq-1 ... 0 (reversed, as the relative shift expects).
        embedding = sinusoid_embedding(seq, self.frequencies, self.max_period)[::-1].copy()
        pos_keys = ops.positional_keys(embedding, self.positional, batch, x.dtype)
        mixed = ops.attention(q, k, v, pos_keys, self.query_chunk)  # (b, s, heads, hs)
        out = ops.projection(mixed, self.read_kernel("output_kernel"), axes=2)  # (b, s, hidden)
        return ops.add_bias(out, self.output_bias) if self.output_bias is not None else out

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "heads": self.heads,
            "head_size": self.head_size,
            "frequencies": self.frequencies,
            "max_period": self.max_period,
            "query_chunk": self.query_chunk,
            "use_bias": self.use_bias,
        }
