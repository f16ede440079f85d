"""Position-wise feed-forward token mixer: Linear(hidden -> multiple*hidden), ReLU, Linear back."""

from typing import Any

import tensorflow as tf

from .core import Projection, SeededLayer


class FFN(SeededLayer):
    """Two-layer ReLU MLP applied independently at each position."""

    projection_class: type[Projection] = Projection  # the unit-scaled twin swaps this

    def __init__(self, hidden_size: int, multiple: float = 4, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.multiple = multiple
        self.inner_size = int(round(multiple * hidden_size))
        make = self.projection_class
        self.up = make(hidden_size, self.inner_size, seed=self.weight_seed(0), name="up")
        self.down = make(self.inner_size, hidden_size, seed=self.weight_seed(1), name="down")

    def build(self, input_shape: Any = None) -> None:
        self.up.build(None)
        self.down.build(None)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.down(tf.nn.relu(self.up(x)))  # (b, s, hidden)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_size": self.hidden_size, "multiple": self.multiple}
