"""``python -m scmm.experiments`` = ``run_experiment.py`` (what sweep trials run)."""

import os
import signal
import sys

from .lifeline import watch_launcher

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A process started in the background by a shell inherits SIGINT ignored; sweeps stop trials
# with SIGINT, so restore Python's KeyboardInterrupt (the run then ends cleanly).
signal.signal(signal.SIGINT, signal.default_int_handler)
# A sweep trial stops when its launcher dies (SIGKILL included) instead of running on unseen.
watch_launcher()

from . import main  # pylint: disable=wrong-import-position

sys.exit(main())
