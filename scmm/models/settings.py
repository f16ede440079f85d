"""Model settings: one dataclass tree from which a character LM is built, and nothing else.

The sequence and token mixers and the scaling scheme are chosen by kind
(``--model.sequence.type conv``, ``--model.scaling.type unit``), each with its own fields;
``draccus.ChoiceRegistry`` gives that on the command line and in YAML/JSON. Each choice builds
the object it describes (``build``), so the model factory is a loop, not an ``isinstance``
chain. ``ModelSettings`` alone rebuilds a model: mixers, scheme, dtype and weight storage.
"""

import dataclasses
from typing import TYPE_CHECKING, Literal, Optional

import draccus

from ..precision_settings import MATMUL_FORMATS, PrecisionSettings, WeightStorage
from ..schemes.settings import RegularScalingSettings, ScalingSettings

if TYPE_CHECKING:
    import keras

    from ..ops import OpsSpec

__all__ = [
    "AttentionSettings",
    "ConvSettings",
    "DType",
    "FFNSettings",
    "LOSS_WEIGHTINGS",
    "LossSettings",
    "LossWeighting",
    "MATMUL_FORMATS",
    "ModelSettings",
    "NoTokenMixerSettings",
    "PrecisionSettings",
    "RNNSettings",
    "ResidualSettings",
    "SequenceMixerSettings",
    "TokenMixerSettings",
    "WeightStorage",
]

DType = Literal["float32", "float16", "bfloat16"]


@dataclasses.dataclass
class SequenceMixerSettings(draccus.ChoiceRegistry):
    """Base of the sequence-mixer choices (attention | conv | rnn)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def validate(self, hidden_size: int) -> None:
        """Raise ValueError if the mixer cannot be built at this hidden size."""

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> "keras.layers.Layer":
        """The mixer layer (weights seeded by ``seed``, arithmetic from op set ``ops``; biases
        unless ``use_bias`` is False)."""
        raise NotImplementedError


@SequenceMixerSettings.register_subclass("attention")
@dataclasses.dataclass
class AttentionSettings(SequenceMixerSettings):
    """Causal multi-head self-attention with relative sinusoid position scores."""

    heads: int = 2
    """Attention heads; heads x head_size must equal the hidden size."""
    head_size: int = 64
    """Query/key/value width of each head."""
    frequencies: int = 128
    """Number of sin/cos frequency pairs in the relative position embedding."""
    max_period: float = 1024.0
    """Longest period of the position embedding, in characters."""

    def validate(self, hidden_size: int) -> None:
        for name in ("heads", "head_size", "frequencies"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.sequence.{name} must be >= 1, got {getattr(self, name)}")
        if self.heads * self.head_size != hidden_size:
            raise ValueError(
                f"model.sequence.heads x head_size = {self.heads} x {self.head_size}"
                f" = {self.heads * self.head_size} does not fit hidden_size={hidden_size}"
                f" (expected heads x head_size == hidden_size)"
            )
        if self.max_period < 4:
            raise ValueError(f"model.sequence.max_period must be >= 4, got {self.max_period}")

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> "keras.layers.Layer":
        from ..layers import Attention

        return Attention(
            hidden_size,
            self.heads,
            self.head_size,
            self.frequencies,
            self.max_period,
            use_bias=use_bias,
            seed=seed,
            ops=ops,
            name="attention",
        )


@SequenceMixerSettings.register_subclass("conv")
@dataclasses.dataclass
class ConvSettings(SequenceMixerSettings):
    """Causal grouped 1-D convolution followed by ReLU."""

    kernel_size: int = 7
    """Characters each output sees (the current one and kernel_size-1 before it)."""
    groups: int = 8
    """Channel groups (must divide the hidden size); each group convolves separately."""

    def validate(self, hidden_size: int) -> None:
        if self.kernel_size < 1:
            raise ValueError(f"model.sequence.kernel_size must be >= 1, got {self.kernel_size}")
        if self.groups < 1 or hidden_size % self.groups:
            raise ValueError(
                f"model.sequence.groups={self.groups} must divide hidden_size={hidden_size}"
            )

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> "keras.layers.Layer":
        from ..layers import CausalConv

        return CausalConv(
            hidden_size,
            self.kernel_size,
            self.groups,
            use_bias=use_bias,
            seed=seed,
            ops=ops,
            name="conv",
        )


@SequenceMixerSettings.register_subclass("rnn")
@dataclasses.dataclass
class RNNSettings(SequenceMixerSettings):
    """Recurrent highway network cell (Zilly et al. 2017) scanned over the sequence."""

    rebias: float = 1.0
    """Constant subtracted from the transform-gate pre-activation (bias towards carrying)."""

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> "keras.layers.Layer":
        from ..layers import RecurrentHighway

        return RecurrentHighway(
            hidden_size, self.rebias, use_bias=use_bias, seed=seed, ops=ops, name="rnn"
        )


@dataclasses.dataclass
class TokenMixerSettings(draccus.ChoiceRegistry):
    """Base of the token-mixer choices (ffn | none)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))

    def validate(self) -> None:
        """Raise ValueError naming an impossible value."""

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> Optional["keras.layers.Layer"]:
        """The token-mixer layer, or None for no token mixer."""
        raise NotImplementedError


@TokenMixerSettings.register_subclass("ffn")
@dataclasses.dataclass
class FFNSettings(TokenMixerSettings):
    """Position-wise MLP with ``multiple`` x hidden inner units."""

    multiple: float = 4.0
    """Inner width as a multiple of the hidden size."""
    activation: Literal["relu", "gelu"] = "relu"
    """relu (the unit-scaling paper's) or gelu (exact; u-mup's ffn_act tempers it)."""

    def validate(self) -> None:
        if self.multiple <= 0:
            raise ValueError(f"model.token.multiple must be > 0, got {self.multiple}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"model.token.activation must be relu|gelu, got {self.activation!r}")

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> Optional["keras.layers.Layer"]:
        from ..layers import FFN

        return FFN(
            hidden_size,
            self.multiple,
            self.activation,
            use_bias,
            seed=seed,
            ops=ops,
            name="ffn",
        )


@TokenMixerSettings.register_subclass("none")
@dataclasses.dataclass
class NoTokenMixerSettings(TokenMixerSettings):
    """No token mixer: each layer is a sequence mixer only."""

    def build(
        self, hidden_size: int, seed: int, ops: "OpsSpec", use_bias: bool = True
    ) -> Optional["keras.layers.Layer"]:
        return None


@dataclasses.dataclass
class ResidualSettings:
    """How each mixer is wrapped: norm placement and branch weighting."""

    norm: Literal["pre", "post", "none"] = "pre"
    """Layer norm on the branch input (pre), after the residual add (post), or none."""
    weighting: Literal["plain", "fixed", "mean"] = "plain"
    """plain: x + f(x); fixed: sqrt(1-alpha) x + sqrt(alpha) f(x); mean: alpha_l = 1/(l+1)."""
    alpha: float = 0.5
    """Branch weight for weighting=fixed (ignored otherwise)."""


LossWeighting = Literal["none", "inverse_frequency"]
LOSS_WEIGHTINGS: tuple[str, ...] = ("none", "inverse_frequency")


@dataclasses.dataclass
class LossSettings:
    """The objective the model computes from its logits: which targets count, with what weight.

    A model setting, not a training one: ``model(tokens, mask)`` returns its loss, so the model
    settings say what that loss is (as u-mup's ``loss_softmax`` multiplier does), the trainer
    minimises whatever comes back, and evaluation reports the same objective on held-out text.
    """

    weighting: LossWeighting = "none"
    """none: every scored target weighs 1 (the mean cross-entropy). inverse_frequency: each
    target weighs 1/(its count in its own sequence's scored window), Graphcore's sparse-LM
    objective; the sum is still divided by the number of scored targets, not by the sum of
    the weights. xentropy, perplexity and accuracy are always the unweighted metrics."""
    autoregression_offset: int = 0
    """Positions 0..offset-1 of every sequence are not scored (neither in the loss nor in
    n_tokens), in training and evaluation alike; must be < data.sequence_length. Training
    windows already skip their first data.overlap_length positions, so only an offset above
    that changes training. Evaluation then skips the split's first offset characters and, for
    an offset above overlap_length, positions overlap_length..offset-1 of every window."""

    def validate(self) -> None:
        """Raise ValueError naming an impossible value."""
        if self.weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"model.loss.weighting must be one of {', '.join(LOSS_WEIGHTINGS)},"
                f" got {self.weighting!r}"
            )
        offset = self.autoregression_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(
                f"model.loss.autoregression_offset must be an integer >= 0, got {offset!r}"
            )


@dataclasses.dataclass
class ModelSettings:
    """Character LM: embedding, shift, depth x (sequence, token) blocks, final norm, head."""

    vocab_size: int = 0
    """Output classes. 0: taken from the dataset's vocabulary."""
    hidden_size: int = 128
    """Width of the residual stream."""
    depth: int = 8
    """Layers, each a sequence-mixer block then (unless token=none) a token-mixer block."""
    residual: ResidualSettings = dataclasses.field(default_factory=ResidualSettings)
    """How each mixer is wrapped: norm placement and branch weighting."""
    sequence: SequenceMixerSettings = dataclasses.field(default_factory=AttentionSettings)
    """Sequence mixer (mixes across positions, causally): attention, conv or rnn."""
    token: TokenMixerSettings = dataclasses.field(default_factory=FFNSettings)
    """Token mixer (each position on its own): ffn, or none for sequence mixers only."""
    scaling: ScalingSettings = dataclasses.field(default_factory=RegularScalingSettings)
    """Scaling scheme: regular (standard parametrisation), unit (unit scaling) or umup (u-mup)."""
    dtype: DType = "float32"
    """Compute dtype."""
    weights: WeightStorage = "master"
    """16-bit models only. master: float32 weights cast each step (GPU mixed precision);
    rounded: weights in the compute dtype, updates rounded to nearest; stochastic: weights in
    the compute dtype, updates stochastically rounded (as on IPU)."""
    precision: PrecisionSettings = dataclasses.field(default_factory=PrecisionSettings)
    """Simulated low-precision (e.g. FP8) matmul inputs and gradients."""
    loss: LossSettings = dataclasses.field(default_factory=LossSettings)
    """The loss: target weighting and autoregression offset."""
    dropout_keep_probability: float = 1.0
    """While training, keep each element of the embedding output and of every residual
    branch's output with this probability (1: no dropout). Regular models: inverted dropout
    x m / p (the mean kept); unit-scaled and u-mup: x m / sqrt(p) (the variance kept)."""
    seed: Optional[int] = None
    """Initialisation seed. null: derived from the experiment seed."""

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value (before any compute)."""
        keep = self.dropout_keep_probability
        if isinstance(keep, bool) or not 0.0 < keep <= 1.0:
            raise ValueError(f"model.dropout_keep_probability must be in (0, 1], got {keep}")
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
        if self.hidden_size < 1:
            raise ValueError(f"model.hidden_size must be >= 1, got {self.hidden_size}")
        if self.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {self.depth}")
        if self.residual.weighting == "fixed" and not 0.0 < self.residual.alpha < 1.0:
            raise ValueError(f"model.residual.alpha must be in (0, 1), got {self.residual.alpha}")
        self.token.validate()
        self.scaling.validate(
            self.residual.weighting, self.residual.norm, getattr(self.token, "activation", None)
        )
        self.sequence.validate(self.hidden_size)
        self.precision.validate()
        self.loss.validate()
