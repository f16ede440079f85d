"""The character language model: embedding -> shift -> depth x residual blocks -> norm -> head.

``CharLM(settings)(tokens, mask)`` returns the masked mean cross-entropy (float32), the token
count and a few activation statistics. The model predicts ``tokens[:, t]`` from
``tokens[:, :t]``: the ``Shift`` layer moves embeddings one step right, so every causal
sequence mixer after it only sees earlier characters.
"""

import contextlib
from types import ModuleType
from typing import Any, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from .. import layers, precision
from .settings import (
    AttentionSettings,
    ConvSettings,
    FFNSettings,
    ModelSettings,
    NoTokenMixerSettings,
    RNNSettings,
)


@contextlib.contextmanager
def dtype_policy_scope(policy: str) -> Iterator[None]:
    """Construct layers under ``policy`` (Keras layers read the global policy when created)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def dtype_policy_name(dtype: str, master_weights: bool) -> str:
    """Keras policy: 16-bit compute with float32 variables is Keras' "mixed_*" policy."""
    if dtype == "float32" or not master_weights:
        return dtype
    return f"mixed_{dtype}"


def masked_cross_entropy(
    logits: tf.Tensor, targets: tf.Tensor, mask: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(sum of masked per-token cross-entropies, token count), both float32.

    Computed in float32 whatever the logits' dtype: a 16-bit log-softmax loses most of its
    precision exactly where the loss is small.
    """
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(logits, tf.float32)
    )  # (b, s)
    weights = tf.cast(mask, tf.float32)
    return tf.reduce_sum(per_token * weights), tf.reduce_sum(weights)


def _unit_scaled_layers() -> ModuleType:
    # Imported on demand: scmm.uscale builds on scmm.layers, not the other way round.
    from ..uscale import layers as unit_scaled

    return unit_scaled


def _unit_scaled_cross_entropy() -> Any:
    from ..uscale import softmax_cross_entropy

    return softmax_cross_entropy


def _rms(x: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(x, tf.float32))))


class CharLM(keras.Model):
    """Character-level LM built from a ``ModelSettings``; see the module docstring."""

    def __init__(
        self,
        settings: ModelSettings,
        master_weights: bool = True,
        unit_scale: bool = False,
        **kwargs: Any,
    ):
        settings.validate()
        if settings.vocab_size < 1:
            raise ValueError(
                f"model.vocab_size must be set (>= 1) to build a model, got {settings.vocab_size}"
            )
        policy = dtype_policy_name(settings.dtype, master_weights)
        super().__init__(name=kwargs.pop("name", "char_lm"), dtype=policy, **kwargs)
        self.settings = settings
        self.unit_scale = unit_scale
        # One import switches every layer to its unit-scaled twin (same names and weights).
        self.lib: ModuleType = _unit_scaled_layers() if unit_scale else layers
        lib = self.lib
        seed = settings.seed if settings.seed is not None else 0
        hidden = settings.hidden_size
        with dtype_policy_scope(policy):
            self.embedding = lib.Embedding(
                settings.vocab_size, hidden, seed=seed * 1000, name="embedding"
            )
            self.shift = lib.Shift(hidden, seed=seed * 1000 + 998, name="shift")
            self.blocks = self._make_blocks(settings, seed)
            self.final_norm = lib.LayerNorm(hidden, name="final_norm")
            self.head = lib.Projection(
                hidden, settings.vocab_size, seed=seed * 1000 + 999, name="head"
            )
            parts: list[keras.layers.Layer] = [self.embedding, self.shift, *self.blocks]
            for layer in [*parts, self.final_norm, self.head]:
                layer.build(None)
        self.built = True

    def _make_mixers(self, settings: ModelSettings, seed: int) -> list[tuple[str, Any]]:
        lib, hidden = self.lib, settings.hidden_size
        mixers: list[tuple[str, Any]] = []
        for i in range(settings.depth):
            layer_seed = seed * 1000 + 2 * i + 1
            seq = settings.sequence
            mixer: keras.layers.Layer
            if isinstance(seq, AttentionSettings):
                mixer = lib.Attention(
                    hidden,
                    seq.heads,
                    seq.head_size,
                    seq.frequencies,
                    seq.max_period,
                    seed=layer_seed,
                    name="attention",
                )
            elif isinstance(seq, ConvSettings):
                mixer = lib.CausalConv(
                    hidden, seq.kernel_size, seq.groups, seed=layer_seed, name="conv"
                )
            elif isinstance(seq, RNNSettings):
                mixer = lib.RecurrentHighway(hidden, seq.rebias, seed=layer_seed, name="rnn")
            else:
                raise ValueError(f"unknown sequence mixer settings {seq!r}")
            mixers.append((f"layer_{i}_sequence", mixer))
            if isinstance(settings.token, FFNSettings):
                ffn = lib.FFN(hidden, settings.token.multiple, seed=layer_seed + 1, name="ffn")
                mixers.append((f"layer_{i}_token", ffn))
            elif not isinstance(settings.token, NoTokenMixerSettings):
                raise ValueError(f"unknown token mixer settings {settings.token!r}")
        return mixers

    def _make_blocks(self, settings: ModelSettings, seed: int) -> list[layers.Residual]:
        residual = settings.residual
        blocks = []
        for index, (name, mixer) in enumerate(self._make_mixers(settings, seed), start=1):
            if self.unit_scale:
                tau = self.lib.residual_tau(residual.weighting, residual.alpha, index)
                block = self.lib.Residual(
                    mixer, settings.hidden_size, norm=residual.norm, tau=tau, name=name
                )
            else:
                skip, branch = layers.residual_weights(residual.weighting, residual.alpha, index)
                block = layers.Residual(
                    mixer,
                    settings.hidden_size,
                    norm=residual.norm,
                    skip=skip,
                    branch=branch,
                    name=name,
                )
            blocks.append(block)
        return blocks

    # Forward pass ---------------------------------------------------------------------------

    def hidden_states(self, tokens: tf.Tensor) -> tf.Tensor:
        """Trunk output before the final norm: (batch, seq, hidden) in the compute dtype."""
        with precision.scope(self.settings.precision):  # simulated low-precision matmuls
            x = self.shift(self.embedding(tokens))  # (b, s, hidden)
            for block in self.blocks:
                x = block(x)
        return x

    def _head(self, hidden: tf.Tensor) -> tf.Tensor:
        # The output projection stays in the compute dtype unless precision.head is set.
        settings = self.settings.precision
        with precision.scope(settings if settings.head else None):
            return self.head(self.final_norm(hidden))

    def logits(self, tokens: tf.Tensor) -> tf.Tensor:
        """Next-character logits (batch, seq, vocab) in the compute dtype."""
        return self._head(self.hidden_states(tokens))

    def call(  # pylint: disable=arguments-differ
        self, tokens: tf.Tensor, mask: Optional[tf.Tensor] = None
    ) -> dict[str, tf.Tensor]:
        tokens = tf.cast(tokens, tf.int32)
        if mask is None:
            mask = tf.ones_like(tokens, dtype=tf.bool)
        hidden = self.hidden_states(tokens)
        logits = self._head(hidden)
        if self.unit_scale:
            loss, n_tokens = _unit_scaled_cross_entropy()(logits, tokens, mask)
        else:
            loss_sum, n_tokens = masked_cross_entropy(logits, tokens, mask)
            loss = loss_sum / tf.maximum(n_tokens, 1.0)
        return {
            "loss": loss,
            "n_tokens": n_tokens,
            "hidden_rms": _rms(hidden),
            "logits_rms": _rms(logits),
        }

    # Weights by stable name -----------------------------------------------------------------

    def named_weights(self) -> dict[str, keras.Variable]:
        """Every weight by its stable path, e.g. ``layer_0_sequence/attention/qkv``."""
        named = {v.path: v for v in self.weights}
        if len(named) != len(self.weights):
            raise RuntimeError("duplicate weight paths in model")
        return named

    def get_weight_arrays(self) -> dict[str, np.ndarray]:
        """Copy of every weight as numpy, keyed by path."""
        return {name: np.asarray(v.numpy()) for name, v in self.named_weights().items()}

    def set_weight_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Assign weights by path; names, shapes and dtypes must match exactly."""
        named = self.named_weights()
        missing, unexpected = set(named) - set(arrays), set(arrays) - set(named)
        if missing or unexpected:
            raise ValueError(
                f"weight names differ: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
            )
        for name, variable in named.items():  # check everything before assigning anything
            value = arrays[name]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"weight {name}: shape {value.shape} != expected {tuple(variable.shape)}"
                )
        for name, variable in named.items():
            variable.assign(arrays[name].astype(variable.dtype))

    def parameter_count(self) -> int:
        """Total number of trainable scalars."""
        return int(sum(np.prod(v.shape) for v in self.trainable_weights))
