"""Sweeps: grids of experiments with per-configuration learning-rate searches.

``run_sweep.py`` is a thin wrapper over ``scmm.sweeps.cli.main``. Definitions and expansion
(``definition``), the LR-search rule (``search``), the resumable index (``index``), executors
(local process pool, Ray), the scheduler (``runner``) and the tables/plots (``results``).
Importing this package does not import TensorFlow (trials run in their own processes).
"""

from .definition import Configuration, LrSearch, SweepDefinition, expand, load_definition

__all__ = ["Configuration", "LrSearch", "SweepDefinition", "expand", "load_definition"]
