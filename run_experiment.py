#!/usr/bin/env python
"""Train one character language model.

    python run_experiment.py                      # the default preset, ~5 min on 2 CPU cores
    python run_experiment.py --preset smoke --out out/smoke
    python run_experiment.py --preset paper-attention --data.path data/wikitext-103
    python run_experiment.py --resume out/smoke   # continue a killed run
    python run_experiment.py --help               # every option

All the work happens in ``scmm.experiments``.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off

from scmm.experiments import main  # pylint: disable=wrong-import-position

if __name__ == "__main__":
    sys.exit(main())
