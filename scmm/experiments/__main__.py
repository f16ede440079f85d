"""``python -m scmm.experiments`` = ``run_experiment.py`` (what sweep trials run)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import main  # pylint: disable=wrong-import-position

sys.exit(main())
