"""The coordinate check: ``python -m scmm.coord_check --widths 64 128 256 512``.

Is a model's parametrisation width-stable? ``make_plan`` (the settings at every width, checked
before any compute; no TensorFlow), ``measure`` (train each width's model for a few steps and
record every sublayer output's RMS and change RMS; ``scmm.coord_check.measure``, which loads
TensorFlow) and ``main`` (the command line). The model-agnostic maths (slopes, verdict, JSON,
figure) is ``scmm.analysis.coordinates``. A tool on top, like ``scmm.sample``: it builds
models and trains them, and nothing in scmm imports it.
"""

from .cli import EXIT_FLAGGED, main
from .plan import Plan, make_plan, width_settings

__all__ = ["EXIT_FLAGGED", "Plan", "main", "make_plan", "width_settings"]
