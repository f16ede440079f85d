#!/usr/bin/env python
"""Run a sweep of experiments (grid x learning-rate search x repeats), resumably.

    python run_sweep.py paper-table --dry-run            # the paper's 20 configurations
    python run_sweep.py smoke --out out/sweeps/smoke     # a tiny sweep, about a minute
    python run_sweep.py uscale-small --workers 2         # regular vs unit-scaled, 2-core CPU
    python run_sweep.py my_sweep.yaml --executor ray --ray-address auto
    python run_sweep.py --help

All the work happens in ``scmm.sweeps``.
"""

import sys

from scmm.sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main())
