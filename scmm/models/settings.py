"""Model settings: one dataclass tree from which a character LM is built.

The sequence and token mixers are chosen by kind (``--model.sequence.type conv``), each with
its own fields; ``draccus.ChoiceRegistry`` gives that on the command line and in YAML/JSON.
"""

import dataclasses
from typing import ClassVar, Literal, Optional

import draccus

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


@SequenceMixerSettings.register_subclass("rnn")
@dataclasses.dataclass
class RNNSettings(SequenceMixerSettings):
    """Recurrent highway network cell (Zilly et al. 2017) scanned over the sequence."""

    rebias: float = 1.0
    """Constant subtracted from the transform-gate pre-activation (bias towards carrying)."""


@dataclasses.dataclass
class TokenMixerSettings(draccus.ChoiceRegistry):
    """Base of the token-mixer choices (ffn | none)."""

    @property
    def kind(self) -> str:
        """Registered name of this choice."""
        return str(self.get_choice_name(type(self)))


@TokenMixerSettings.register_subclass("ffn")
@dataclasses.dataclass
class FFNSettings(TokenMixerSettings):
    """Position-wise ReLU MLP with ``multiple`` x hidden inner units."""

    multiple: float = 4.0
    """Inner width as a multiple of the hidden size."""


@TokenMixerSettings.register_subclass("none")
@dataclasses.dataclass
class NoTokenMixerSettings(TokenMixerSettings):
    """No token mixer: each layer is a sequence mixer only."""


@dataclasses.dataclass
class ResidualSettings:
    """How each mixer is wrapped: norm placement and branch weighting."""

    norm: Literal["pre", "post", "none"] = "pre"
    """Layer norm on the branch input (pre), after the residual add (post), or none."""
    weighting: Literal["plain", "fixed", "mean"] = "plain"
    """plain: x + f(x); fixed: sqrt(1-alpha) x + sqrt(alpha) f(x); mean: alpha_l = 1/(l+1)."""
    alpha: float = 0.5
    """Branch weight for weighting=fixed (ignored otherwise)."""


# Formats a matmul operand or gradient can be simulated in (see scmm.formats).
MATMUL_FORMATS = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "e4m3", "e5m2")


@dataclasses.dataclass
class PrecisionSettings:
    """Simulated low-precision matmuls (``scmm.precision``): every matmul/conv in the trunk
    sees its inputs rounded to a format, the gradient flowing back into its output rounded to
    another, and the weight gradient it produces to a third. float32 everywhere (the default)
    changes nothing. FP8: activations and weights e4m3, gradients e5m2. FP16: all float16."""

    ROLES: ClassVar[tuple[str, ...]] = ("activations", "weights", "gradients", "weight_gradients")

    activations: str = "float32"
    """Format of activation operands (including attention scores/probabilities and values)."""
    weights: str = "float32"
    """Format of weight operands."""
    gradients: str = "float32"
    """Format of the gradient arriving at each matmul output in the backward pass."""
    weight_gradients: str = "float32"
    """Format of each weight gradient a matmul produces (dW = x^T g, before the optimiser).
    Real FP16 training computes it in float16, which is where a regular model's small weight
    gradients underflow without loss scaling; FP8 recipes keep it in higher precision."""
    saturate: bool = True
    """Clamp finite values beyond the format's max (OCP saturating mode) instead of inf/NaN."""
    scaling: Literal["none", "dynamic"] = "none"
    """none: cast as is (unit scaling needs nothing else); dynamic: scale each tensor by a
    power of two from its current abs max before the cast (what FP8 libraries do)."""
    head: bool = False
    """Also simulate the output projection (kept in the compute dtype by default)."""
    subnormals: bool = True
    """False: rounded values below the format's smallest normal become zero, as on hardware
    that flushes subnormals (float16: everything under 2^-14 instead of under 2^-24)."""

    @property
    def enabled(self) -> bool:
        """Whether any role is rounded."""
        return any(f != "float32" for f in (getattr(self, role) for role in self.ROLES))

    def validate(self) -> None:
        """Raise ValueError naming an unknown format."""
        for role in self.ROLES:
            value = getattr(self, role)
            if value not in MATMUL_FORMATS:
                raise ValueError(
                    f"model.precision.{role}={value!r}; expected one of {', '.join(MATMUL_FORMATS)}"
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
    sequence: SequenceMixerSettings = dataclasses.field(default_factory=AttentionSettings)
    token: TokenMixerSettings = dataclasses.field(default_factory=FFNSettings)
    dtype: DType = "float32"
    """Compute dtype. Weight storage for 16-bit dtypes is chosen by training.weights."""
    precision: PrecisionSettings = dataclasses.field(default_factory=PrecisionSettings)
    """Simulated low-precision (e.g. FP8) matmul inputs and gradients."""
    seed: Optional[int] = None
    """Initialisation seed. None: derived from the experiment seed."""

    def validate(self) -> None:
        """Raise ValueError naming the first impossible value (before any compute)."""
        if self.vocab_size < 0:
            raise ValueError(f"model.vocab_size must be >= 0, got {self.vocab_size}")
        if self.hidden_size < 1:
            raise ValueError(f"model.hidden_size must be >= 1, got {self.hidden_size}")
        if self.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {self.depth}")
        if self.residual.weighting == "fixed" and not 0.0 < self.residual.alpha < 1.0:
            raise ValueError(f"model.residual.alpha must be in (0, 1), got {self.residual.alpha}")
        if isinstance(self.token, FFNSettings) and self.token.multiple <= 0:
            raise ValueError(f"model.token.multiple must be > 0, got {self.token.multiple}")
        self.sequence.validate(self.hidden_size)
        self.precision.validate()
