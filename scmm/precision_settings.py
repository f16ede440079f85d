"""Settings of simulated low precision and weight storage (importable without TensorFlow).

They sit beside ``scmm.precision`` (the rounding hooks) on the ground floor, so that layers,
op sets and the trainer can read them without reaching up into the models package.
"""

import dataclasses
from typing import ClassVar, Literal

WeightStorage = Literal["master", "rounded", "stochastic"]
"""How a 16-bit model keeps its weights. master: float32 weights cast each step (GPU mixed
precision); rounded: weights in the compute dtype, updates rounded to nearest; stochastic:
weights in the compute dtype, updates stochastically rounded (as on IPU)."""

# Formats a matmul operand or gradient can be simulated in (see scmm.formats).
MATMUL_FORMATS = ("float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "e4m3", "e5m2")
# How a simulated operand or gradient is rounded to its format (see scmm.formats.quantise).
ROUNDINGS = ("nearest", "stochastic")


@dataclasses.dataclass
class PrecisionSettings:
    """Simulated low-precision matmuls (``scmm.precision``): every matmul/conv in the trunk
    sees its inputs rounded to a format, the gradient flowing back into its output rounded to
    another, and the weight gradient it produces to a third. float32 everywhere (the default)
    changes nothing. FP8: activations and weights e4m3, gradients e5m2. FP16: all float16."""

    ROLES: ClassVar[tuple[str, ...]] = ("activations", "weights", "gradients", "weight_gradients")

    activations: str = "float32"
    """Format of activation operands (including attention scores/probabilities and values):
    float32 (no rounding), bfloat16, float16, e4m3 or e5m2 (also spelt float8_e4m3fn,
    float8_e5m2)."""
    weights: str = "float32"
    """Format of weight operands (formats as for activations)."""
    gradients: str = "float32"
    """Format of the gradient arriving at each matmul output in the backward pass (formats as
    for activations)."""
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
    """false: rounded values below the format's smallest normal become zero, as on hardware
    that flushes subnormals (float16: everything under 2^-14 instead of under 2^-24)."""
    rounding: Literal["nearest", "stochastic"] = "nearest"
    """nearest: round to nearest, ties to even (what a cast does); stochastic: round to one of
    the two neighbouring values, away from zero with probability equal to the fractional
    distance (unbiased), drawing fresh randomness for every tensor at every step."""

    @property
    def enabled(self) -> bool:
        """Whether any role is rounded."""
        return any(f != "float32" for f in (getattr(self, role) for role in self.ROLES))

    def validate(self) -> None:
        """Raise ValueError naming an unknown format or rounding."""
        if self.rounding not in ROUNDINGS:
            expected = ", ".join(ROUNDINGS)
            raise ValueError(
                f"model.precision.rounding={self.rounding!r}; expected one of {expected}"
            )
        for role in self.ROLES:
            value = getattr(self, role)
            if value not in MATMUL_FORMATS:
                raise ValueError(
                    f"model.precision.{role}={value!r}; expected one of {', '.join(MATMUL_FORMATS)}"
                )
