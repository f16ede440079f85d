"""Building blocks: token embedding, sequence shift, layer norm, projection.

Every layer follows the Keras 3 contract (weights created in ``build``, ``get_config``
round-trips the constructor, registered serialisable under the package "scmm") and computes
with the op set named by ``ops``. Weight paths are stable (``embedding/embeddings``,
``layer_0_sequence/norm/gamma``): checkpoints and the per-parameter table use them.
"""

from typing import Any

import keras
import tensorflow as tf

from .base import ScaledLayer


@keras.saving.register_keras_serializable(package="scmm")
class Embedding(ScaledLayer):
    """Token embedding: ids (batch, seq) -> (batch, seq, hidden).

    Weight ``embeddings`` (vocab_size, hidden_size), initialised N(0, 1) in every op set.
    """

    def __init__(self, vocab_size: int, hidden_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_parameter(
            "embeddings", (self.vocab_size, self.hidden_size), "embedding", init="unit_normal"
        )

    def call(self, tokens: tf.Tensor) -> tf.Tensor:
        return self.ops.embedding_lookup(self.embeddings, tokens, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
        }


@keras.saving.register_keras_serializable(package="scmm")
class Shift(ScaledLayer):
    """Shift the sequence right by one, filling position 0 with a learned padding vector.

    After the shift, position t holds the embedding of character t-1, so a causal trunk
    predicts character t from characters before t only. Weight ``padding`` (hidden_size,).

    The padding is initialised N(0, 1) like an embedding row, not zeros: a zero vector at
    position 0 has zero variance, and layer norm's gradient there is amplified by
    1/sqrt(epsilon) per norm, which overflows float16 backward passes at initialisation.
    """

    def __init__(self, hidden_size: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size

    def build(self, input_shape: Any = None) -> None:
        self.padding = self.add_parameter(
            "padding", (self.hidden_size,), "embedding", init="unit_normal"
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.ops.shift_right(x, self.padding)  # (batch, seq, hidden)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="scmm")
class LayerNorm(ScaledLayer):
    """Layer norm over the last axis, statistics in float32 (float16 squares overflow).

    Weights ``gamma`` (gain, ones; unless ``scale=False``) and ``beta`` (offset, zeros; unless
    ``center=False``), each (hidden_size,); the flags are ``keras.layers.LayerNormalization``'s.
    u-mup's norms have neither (non-parametric norms, Lingle 2024).
    """

    def __init__(
        self,
        hidden_size: int,
        epsilon: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def build(self, input_shape: Any = None) -> None:
        self.gamma = (
            self.add_parameter("gamma", (self.hidden_size,), "gain", init="ones")
            if self.scale
            else None
        )
        self.beta = (
            self.add_parameter("beta", (self.hidden_size,), "offset", init="zeros")
            if self.center
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return self.ops.layer_norm(x, self.gamma, self.beta, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }


@keras.saving.register_keras_serializable(package="scmm")
class Projection(ScaledLayer):
    """Dense projection (..., input_size) -> (..., output_size) with optional bias.

    Weights ``kernel`` (input_size, output_size), fan-in input_size, role ``kernel_role``
    ("weight"; the model's output layer uses "readout"), and ``bias`` (output_size,).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        use_bias: bool = True,
        kernel_role: str = "weight",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if kernel_role not in ("weight", "readout"):
            raise ValueError(f"Projection kernel_role must be weight|readout, got {kernel_role!r}")
        self.input_size = input_size
        self.output_size = output_size
        self.use_bias = use_bias
        self.kernel_role = kernel_role

    def build(self, input_shape: Any = None) -> None:
        self.kernel = self.add_parameter(
            "kernel",
            (self.input_size, self.output_size),
            "readout" if self.kernel_role == "readout" else "weight",
            fan_in=self.input_size,
        )
        self.bias = (
            self.add_parameter("bias", (self.output_size,), "bias", init="zeros")
            if self.use_bias
            else None
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        if self.kernel_role == "readout":  # the op set's readout (mu-P's, under u-mup)
            y = self.ops.readout(x, self.read_kernel("kernel"))
        else:
            y = self.ops.projection(x, self.read_kernel("kernel"))
        return self.ops.add_bias(y, self.bias) if self.bias is not None else y

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "input_size": self.input_size,
            "output_size": self.output_size,
            "use_bias": self.use_bias,
            "kernel_role": self.kernel_role,
        }
