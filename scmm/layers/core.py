"""Baseline building blocks: seeded initialisers, embedding, shift, layer norm, projection.

Every layer follows the Keras 3 contract (weights created in ``build`` with ``add_weight``,
``get_config`` round-trips the constructor) but computes with plain TF ops: they compile well
under XLA and keep the numerics explicit. Weights are created by name so that a model's
variables have stable paths (``trunk/block_0_sequence/mixer/qkv``) used by checkpoints.
"""

from typing import Any, Optional

import keras
import tensorflow as tf

from .. import precision


def seeded_normal(seed: int, stddev: float) -> keras.initializers.Initializer:
    """Normal initialiser with its own seed, so weights never depend on creation order."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=stddev, seed=seed)


def seeded_uniform(seed: int, limit: float) -> keras.initializers.Initializer:
    """Uniform(-limit, limit) initialiser with its own seed."""
    return keras.initializers.RandomUniform(minval=-limit, maxval=limit, seed=seed)


class SeededLayer(keras.layers.Layer):
    """A layer whose k-th weight is initialised from ``seed + k`` (deterministic init)."""

    def __init__(self, seed: int = 0, **kwargs: Any):
        super().__init__(**kwargs)
        self.seed = seed

    def weight_seed(self, index: int) -> int:
        """The seed of this layer's ``index``-th random weight."""
        return int(self.seed) * 1009 + index

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}


class Embedding(SeededLayer):
    """Token embedding: ids (batch, seq) -> (batch, seq, hidden), table initialised N(0, 1)."""

    def __init__(self, vocab_size: int, hidden_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_weight(
            name="embeddings",
            shape=(self.vocab_size, self.hidden_size),
            initializer=seeded_normal(self.weight_seed(0), 1.0),
        )

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        table = tf.convert_to_tensor(self.embeddings)
        return tf.gather(table, tokens)  # (batch, seq, hidden)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
        }


class Shift(SeededLayer):
    """Shift the sequence right by one, filling position 0 with a learned padding vector.

    After the shift, position t holds the embedding of character t-1, so a causal trunk
    predicts character t from characters before t only.

    The padding is initialised N(0, 1) like an embedding row, not zeros: a zero vector at
    position 0 has zero variance, and layer norm's gradient there is amplified by
    1/sqrt(epsilon) per norm, which overflows float16 backward passes at initialisation.
    """

    def __init__(self, hidden_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size

    def build(self, input_shape: Any = None) -> None:
        self.padding = self.add_weight(
            name="padding",
            shape=(self.hidden_size,),
            initializer=seeded_normal(self.weight_seed(0), 1.0),
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # x: (batch, seq, hidden)
        pad = tf.cast(self.padding, x.dtype)
        pad = tf.broadcast_to(pad, tf.stack([tf.shape(x)[0], 1, self.hidden_size]))
        return tf.concat([pad, x[:, :-1, :]], axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_size": self.hidden_size}


class LayerNorm(keras.layers.Layer):
    """Layer norm over the last axis whose statistics are computed in float32.

    In float16 a squared activation of 1e4 already overflows (max 65504), so the mean and
    variance are always taken in float32 and only the normalised result is cast back.
    """

    def __init__(self, hidden_size: int, epsilon: float = 1e-5, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.epsilon = epsilon

    def build(self, input_shape: Any = None) -> None:
        self.gamma = self.add_weight(name="gamma", shape=(self.hidden_size,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(self.hidden_size,), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        x32 = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
        normed = tf.cast((x32 - mean) * tf.math.rsqrt(variance + self.epsilon), x.dtype)
        return normed * tf.cast(self.gamma, x.dtype) + tf.cast(self.beta, x.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_size": self.hidden_size, "epsilon": self.epsilon}


class Projection(SeededLayer):
    """Dense projection (..., in) -> (..., out) with weight init N(0, 1/in) and optional bias."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        use_bias: bool = True,
        init_scale: Optional[float] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.input_size = input_size
        self.output_size = output_size
        self.use_bias = use_bias
        self.init_scale = init_scale

    def build(self, input_shape: Any = None) -> None:
        stddev = self.init_scale if self.init_scale is not None else self.input_size**-0.5
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.input_size, self.output_size),
            initializer=seeded_normal(self.weight_seed(0), stddev),
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.output_size,), initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        y = precision.tensordot(x, tf.cast(self.kernel, x.dtype))
        if self.bias is not None:
            y = y + tf.cast(self.bias, x.dtype)
        return y

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "input_size": self.input_size,
            "output_size": self.output_size,
            "use_bias": self.use_bias,
            "init_scale": self.init_scale,
        }
