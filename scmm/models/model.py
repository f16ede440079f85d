"""The character language model: embedding -> shift -> depth x residual blocks -> norm -> head.

``CharLM(settings)(tokens, mask)`` returns the loss (float32: the masked mean cross-entropy, or
the weighted one ``model.loss`` asks for), the token count, the unweighted cross-entropy,
perplexity and top-1 accuracy, and a few activation statistics. The model predicts
``tokens[:, t]`` from ``tokens[:, :t]``: the ``Shift`` layer moves embeddings one step right, so
every causal sequence mixer after it only sees earlier characters.
"""

import contextlib
from typing import Any, Iterator, Optional

import keras
import numpy as np
import tensorflow as tf

from .. import layers, precision
from ..ops import get_ops
from ..ops.kernels import (
    correct_count,
    cross_entropy_sum,
    inverse_frequency_weights,
    scored_positions,
)
from ..parameters import Parameter, ParameterTable
from ..schemes.scheme import BranchKind, Scheme
from .settings import ModelSettings


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
    """(sum of masked per-token cross-entropies, token count), both float32."""
    return cross_entropy_sum(logits, targets, mask)


def _rms(x: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(tf.cast(x, tf.float32))))


class CharLM(keras.Model):
    """Character-level LM built from a ``ModelSettings``; see the module docstring.

    Weight paths: ``embedding/embeddings``, ``shift/padding``, ``layer_<i>_sequence/norm/*``,
    ``layer_<i>_sequence/<attention|conv|rnn>/*``, ``layer_<i>_token/ffn/{up,down}/*``,
    ``final_norm/{gamma,beta}``, ``head/{kernel,bias}``. ``parameters`` is the per-parameter
    table (``scmm.parameters``), with the scheme's multipliers.
    """

    def __init__(self, settings: ModelSettings, **kwargs: Any):
        settings.validate()
        if settings.vocab_size < 1:
            raise ValueError(
                f"model.vocab_size must be set (>= 1) to build a model, got {settings.vocab_size}"
            )
        policy = dtype_policy_name(settings.dtype, settings.weights == "master")
        super().__init__(name=kwargs.pop("name", "char_lm"), dtype=policy, **kwargs)
        self.settings = settings
        self.scheme: Scheme = settings.scaling.build()
        scheme = self.scheme
        ops = scheme.ops
        self.ops = get_ops(ops)
        seed = settings.seed if settings.seed is not None else 0
        hidden = settings.hidden_size
        norm_options = {"center": scheme.use_bias, "scale": scheme.norm_scale}
        with dtype_policy_scope(policy):
            self.embedding = layers.Embedding(
                settings.vocab_size, hidden, seed=seed * 1000, ops=ops, name="embedding"
            )
            self.shift = layers.Shift(hidden, seed=seed * 1000 + 998, ops=ops, name="shift")
            self.blocks = self._make_blocks(settings, seed)
            self.final_norm = layers.LayerNorm(hidden, **norm_options, ops=ops, name="final_norm")
            self.head = layers.Projection(
                hidden,
                settings.vocab_size,
                use_bias=scheme.use_bias,
                kernel_role="readout",
                seed=seed * 1000 + 999,
                ops=ops,
                name="head",
            )
            parts: list[keras.layers.Layer] = [self.embedding, self.shift, *self.blocks]
            for layer in [*parts, self.final_norm, self.head]:
                layer.build(None)
        self.built = True
        self.parameters = self._parameter_table()

    def _make_mixers(self, settings: ModelSettings, seed: int) -> list[tuple[str, Any]]:
        """(block name, mixer) in trunk order; the name ends in the branch kind."""
        hidden, ops, bias = settings.hidden_size, self.scheme.ops, self.scheme.use_bias
        mixers: list[tuple[str, Any]] = []
        for i in range(settings.depth):
            layer_seed = seed * 1000 + 2 * i + 1
            sequence = settings.sequence.build(hidden, layer_seed, ops, bias)
            mixers.append((f"layer_{i}_sequence", sequence))
            token = settings.token.build(hidden, layer_seed + 1, ops, bias)
            if token is not None:
                mixers.append((f"layer_{i}_token", token))
        return mixers

    def _make_blocks(self, settings: ModelSettings, seed: int) -> list[layers.Residual]:
        residual, scheme = settings.residual, self.scheme
        mixers = self._make_mixers(settings, seed)
        kinds: list[BranchKind] = [
            "sequence" if name.endswith("_sequence") else "token" for name, _ in mixers
        ]
        taus = scheme.residual_taus(residual.weighting, residual.alpha, kinds)
        return [
            layers.Residual(
                mixer,
                settings.hidden_size,
                norm=residual.norm,
                tau=tau,
                norm_center=scheme.use_bias,
                norm_scale=scheme.norm_scale,
                dropout_keep_probability=settings.dropout_keep_probability,
                ops=scheme.ops,
                name=name,
            )
            for (name, mixer), tau in zip(mixers, taus)
        ]

    def _parameter_table(self) -> ParameterTable:
        """Facts the layers declared, the depth position of each block's parameters, and the
        scheme's multipliers."""
        facts = layers.parameter_facts(self)
        depth_of = {
            id(v): index
            for index, block in enumerate(self.blocks, start=1)
            for v in block.trainable_weights
        }
        rows = []
        for variable in self.trainable_weights:
            info = facts.get(id(variable))
            if info is None:
                raise RuntimeError(f"parameter {variable.path!r} was created without its facts")
            rows.append(
                Parameter(
                    path=variable.path,
                    shape=tuple(int(d) for d in variable.shape),
                    role=info.role,
                    fan_in=info.fan_in,
                    depth=depth_of.get(id(variable)),
                )
            )
        table = ParameterTable(rows, depth=len(self.blocks), layers=self.settings.depth)
        self.scheme.assign_multipliers(table)  # for Adam; a run re-assigns for its optimiser
        return table

    # Forward pass ---------------------------------------------------------------------------

    @property
    def stochastic(self) -> bool:
        """Whether training steps need a seed (dropout): the trainer then calls
        ``model(tokens, mask, training=True, seed=...)`` with a stateless (2,) int32 seed that
        is a function of the run's seed, the step and the micro-batch."""
        return self.settings.dropout_keep_probability < 1.0

    def hidden_states(
        self, tokens: tf.Tensor, training: bool = False, seed: Optional[tf.Tensor] = None
    ) -> tf.Tensor:
        """Trunk output before the final norm: (batch, seq, hidden) in the compute dtype.

        Training with dropout (``stochastic``) needs ``seed``; each dropout site draws from
        its own stream, the seed folded with the site's index."""
        dropout = training and self.stochastic
        if dropout and seed is None:
            raise ValueError("training with model.dropout_keep_probability < 1 needs a seed")

        def site_seed(site: int) -> Optional[tf.Tensor]:
            return tf.random.experimental.stateless_fold_in(seed, site) if dropout else None

        keep = self.settings.dropout_keep_probability
        with precision.scope(self.settings.precision):  # simulated low-precision matmuls
            x = self.shift(self.embedding(tokens))  # (b, s, hidden)
            if dropout:
                x = self.ops.dropout(x, keep, site_seed(0))
            for site, block in enumerate(self.blocks, start=1):
                x = block(x, training=dropout, seed=site_seed(site))
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
        self,
        tokens: tf.Tensor,
        mask: Optional[tf.Tensor] = None,
        training: bool = False,
        seed: Optional[tf.Tensor] = None,
    ) -> dict[str, tf.Tensor]:
        tokens = tf.cast(tokens, tf.int32)
        if mask is None:
            mask = tf.ones_like(tokens, dtype=tf.bool)
        hidden = self.hidden_states(tokens, training=bool(training), seed=seed)
        logits = self._head(hidden)
        return {
            **self.loss_outputs(logits, tokens, mask),
            "hidden_rms": _rms(hidden),
            "logits_rms": _rms(logits),
        }

    def loss_outputs(
        self, logits: tf.Tensor, tokens: tf.Tensor, mask: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The loss and its metrics from logits (b, s, vocab), as ``model.loss`` says.

        ``loss`` (minimised) and ``n_tokens`` (the scored targets: ``mask`` without the first
        ``autoregression_offset`` positions), then the unweighted metrics, token means over the
        scored targets: ``xentropy`` (mean cross-entropy; the loss itself under weighting
        none), ``perplexity`` = exp(xentropy) of this batch, ``accuracy`` (top-1).
        """
        settings = self.settings.loss
        offset = settings.autoregression_offset
        length = tokens.shape[-1]
        if length is not None and offset >= length:
            raise ValueError(
                f"model.loss.autoregression_offset={offset} must be < the sequence length"
                f" {length} (no position would be scored)"
            )
        scored = scored_positions(mask, offset)
        if settings.weighting == "none":
            loss, n_tokens = self.ops.cross_entropy(logits, tokens, scored)
            xentropy = loss
        else:
            weights = inverse_frequency_weights(tokens, scored, int(logits.shape[-1]))
            loss, n_tokens = self.ops.cross_entropy(logits, tokens, scored, weights)
            # The same op set's loss (u-mup's multiplier included), unweighted, no gradient.
            xentropy, _ = self.ops.cross_entropy(tf.stop_gradient(logits), tokens, scored)
        correct = correct_count(tf.stop_gradient(logits), tokens, scored)
        return {
            "loss": loss,
            "n_tokens": n_tokens,
            "xentropy": xentropy,
            "perplexity": tf.exp(tf.stop_gradient(xentropy)),
            "accuracy": correct / tf.maximum(n_tokens, 1.0),
        }

    @property
    def loss_reduction(self) -> str:
        """How the loss reduces tokens in its backward pass (the op set's: "mean" | "sum")."""
        return self.ops.loss_reduction

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
