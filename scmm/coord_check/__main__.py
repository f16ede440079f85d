"""``python -m scmm.coord_check [--widths W ...] [--SECTION.FIELD VALUE ...]`` (see ``cli``)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter off

from .cli import main  # pylint: disable=wrong-import-position

sys.exit(main())
