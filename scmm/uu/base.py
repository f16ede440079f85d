"""What every drop-in unit-scaled Keras layer shares: its scheme, constraint and formats.

A ``scmm.uu`` layer is a subclass of the Keras layer of the same name (same constructor
arguments and defaults, except that kernels start at N(0, 1)) whose ``call`` computes with the
unit-scaled ops of ``scmm.U``. On top of Keras's arguments it takes:

- ``scheme``: ``"unit"`` (Unit Scaling, Blake et al. 2023) or ``"umup"`` (u-muP, Blake et al.
  2024). The scheme picks the defaults below; the arithmetic of each op is the same.
- ``constraint``: how an op on a non-cut edge ties its output scale and its input-gradient
  scale (``scmm.uscale.constrain``): ``"gmean"`` (the unit scheme's default), ``"forward"``
  (u-muP's, the PyTorch library's ``to_output_scale``), ``"backward"``, or ``"separate"``
  (unconstrained: only where the input is a cut edge, e.g. after the last residual add).
  ``None`` means the scheme's default.
- ``precision``: simulated number formats for this layer's matmul operands and gradients (a
  ``scmm.precision_settings.PrecisionSettings`` or its dict). ``None`` leaves whatever scope
  the caller set; ``simulate_fp8`` sets it on every layer it walks.

Each layer also states the role and fan-in of every variable it creates
(``parameter_info``): the u-muP optimiser reads them through ``scmm.uu.parameter_table``
instead of guessing fan-in from a kernel's shape (Keras's layouts are not PyTorch's).
"""

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Optional, Union

import keras

from .. import precision as precision_hooks
from ..parameters import ParameterInfo
from ..precision_settings import PrecisionSettings
from ..uscale.scaling import CONSTRAINTS

SCHEMES = ("unit", "umup")
DEFAULT_CONSTRAINT = {"unit": "gmean", "umup": "forward"}
PACKAGE = "scmm.uu"
"""The Keras serialisation package every ``uu`` layer is registered under."""

PrecisionLike = Union[PrecisionSettings, Mapping[str, Any], None]


def check_scheme(scheme: str) -> str:
    """``scheme`` if it is a known one, else a ValueError naming it."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown unit-scaling scheme {scheme!r}; expected one of {SCHEMES}")
    return scheme


def resolve_constraint(constraint: Optional[str], scheme: str) -> str:
    """The constraint to use: ``constraint`` checked, or the scheme's default for None."""
    if constraint is None:
        return DEFAULT_CONSTRAINT[check_scheme(scheme)]
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")
    return constraint


def as_precision(value: PrecisionLike) -> Optional[PrecisionSettings]:
    """Settings from a ``PrecisionSettings``, its dict (a layer config) or None; validated."""
    if value is None:
        return None
    if isinstance(value, PrecisionSettings):
        settings = value
    else:
        known = {field.name for field in dataclasses.fields(PrecisionSettings)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown precision settings {unknown}; expected some of {sorted(known)}"
            )
        settings = PrecisionSettings(**value)
    settings.validate()
    return settings


def refuse_keras_quantization(layer: keras.layers.Layer, what: str) -> None:
    """ValueError if ``layer`` was given a quantized Keras dtype policy."""
    mode = getattr(layer.dtype_policy, "quantization_mode", None)
    if mode is not None:
        raise ValueError(
            f"{what} does not support Keras's quantized dtype policies (got"
            f" {layer.dtype_policy.name!r}, mode {mode!r}); use scmm.simulate_fp8 instead"
        )


def refuse_lora_and_quantization(what: str, lora_rank: Optional[int], quantized: bool) -> None:
    """The constructor's refusals: ValueError for a LoRA rank, or for Keras quantization
    arguments (``quantized``: e.g. a ``quantization_config`` was given)."""
    if lora_rank:
        raise ValueError(f"{what} does not support LoRA, got lora_rank={lora_rank}")
    if quantized:
        raise ValueError(f"{what} does not support Keras quantization; use scmm.simulate_fp8")


class RefusesKerasQuantization:
    """Mixin placed before the Keras base class: its ``quantize`` and ``enable_lora`` raise a
    ValueError, since Keras's quantized and LoRA kernels would bypass the unit scales.

    Subclasses set ``refused_as`` (the name in the messages, e.g. ``"uu.Dense"``) and
    ``quantize_refusal`` (the text after ``(mode=...)``).
    """

    refused_as = ""
    quantize_refusal = ""

    def quantize(self, mode: Any = None, type_check: bool = True, config: Any = None) -> None:
        """Refused: simulate number formats with ``scmm.simulate_fp8`` instead."""
        del type_check, config
        raise ValueError(
            f"{self.refused_as} cannot be quantized with Keras (mode={mode!r})"
            f"{self.quantize_refusal}"
        )

    def enable_lora(self, rank: int, *args: Any, **kwargs: Any) -> None:
        """Refused: LoRA is not unit-scaled."""
        del args, kwargs
        raise ValueError(f"{self.refused_as} does not support LoRA (rank {rank})")


class UnitScaled:
    """Mixin placed before the Keras base class: ``class Dense(UnitScaled, keras.layers.Dense)``.

    Subclasses call ``self.init_unit_scaling(scheme, constraint, precision)`` in ``__init__``,
    add ``self.unit_config()`` to ``get_config``, run their arithmetic inside
    ``self.precision_scope()`` and override ``parameter_info``.
    """

    scheme: str
    constraint: str
    precision: Optional[PrecisionSettings]
    _explicit_constraint: Optional[str]

    def init_unit_scaling(
        self,
        scheme: str = "unit",
        constraint: Optional[str] = None,
        precision: PrecisionLike = None,
    ) -> None:
        """Check and store the unit-scaling arguments (before any compute)."""
        self.scheme = check_scheme(scheme)
        self.constraint = resolve_constraint(constraint, scheme)
        # get_config stores what the user passed, so a scheme change keeps its default.
        self._explicit_constraint = constraint
        self.precision = as_precision(precision)

    def unit_config(self) -> dict[str, Any]:
        """The unit-scaling arguments, for ``get_config``."""
        return {
            "scheme": self.scheme,
            "constraint": self._explicit_constraint,
            "precision": None if self.precision is None else dataclasses.asdict(self.precision),
        }

    @contextlib.contextmanager
    def precision_scope(self) -> Iterator[None]:
        """This layer's simulated formats, or the caller's scope when it has none."""
        if self.precision is None:
            yield
            return
        with precision_hooks.scope(self.precision):
            yield

    def parameter_info(self) -> dict[str, ParameterInfo]:
        """``{attribute name of a variable: its role and fan-in}`` (e.g. ``{"kernel": ...}``)."""
        return {}
