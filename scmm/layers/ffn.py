"""Position-wise feed-forward token mixer: Linear(hidden -> multiple*hidden), ReLU or GELU,
Linear back."""

from typing import Any

import keras
import tensorflow as tf

from .base import ScaledLayer
from .core import Projection


@keras.saving.register_keras_serializable(package="scmm")
class FFN(ScaledLayer):
    """Two-layer MLP (``activation`` relu or exact gelu) applied independently at each position.

    Weights: ``up/kernel`` (hidden_size, inner), ``up/bias`` (inner,), ``down/kernel``
    (inner, hidden_size), ``down/bias`` (hidden_size,), with inner = round(multiple x hidden);
    no biases with ``use_bias=False``.
    """

    def __init__(
        self,
        hidden_size: int,
        multiple: float = 4,
        activation: str = "relu",
        use_bias: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"FFN activation must be relu|gelu, got {activation!r}")
        self.hidden_size = hidden_size
        self.multiple = multiple
        self.activation = activation
        self.use_bias = use_bias
        self.inner_size = int(round(multiple * hidden_size))
        ops = self.ops_name
        self.up = Projection(
            hidden_size, self.inner_size, use_bias, seed=self.weight_seed(0), ops=ops, name="up"
        )
        self.down = Projection(
            self.inner_size, hidden_size, use_bias, seed=self.weight_seed(1), ops=ops, name="down"
        )

    def build(self, input_shape: Any = None) -> None:
        self.up.build(None)
        self.down.build(None)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.down(self.ops.ffn_activation(self.up(x), self.activation))  # (b, s, hidden)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "multiple": self.multiple,
            "activation": self.activation,
            "use_bias": self.use_bias,
        }
