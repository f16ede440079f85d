"""One-line transforms of any Keras model: ``unit_scale`` and ``simulate_fp8`` /
``simulate_format``. Each returns a new model (the input is left as it was) carrying a
``scmm_report`` (``TransformReport``) of what happened to every layer and op."""

from .report import Entry, ResidualReport, TransformReport
from .simulate import simulate_format, simulate_fp8
from .unit_scale import unit_scale

__all__ = [
    "Entry",
    "ResidualReport",
    "TransformReport",
    "simulate_format",
    "simulate_fp8",
    "unit_scale",
]
