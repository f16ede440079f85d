"""Process exit codes of ``run_experiment.py`` and ``run_sweep.py``, defined once.

A sweep reads its trials' codes to tell a diverged run (a result: infinite loss) from a crashed
one (retried), so both entry points must agree on them. Ground floor: this module imports
nothing, so the command lines can report bad input (``EXIT_USAGE``) before TensorFlow loads.
"""

EXIT_FINISHED = 0
"""An experiment ran to the end (summary.json status "finished")."""
EXIT_FAILED = 1
"""An experiment raised or was interrupted (status "failed"); a sweep had failed trials."""
EXIT_USAGE = 2
"""Bad input (settings, preset, file or option): one ``error:`` line, nothing computed."""
EXIT_DIVERGED = 3
"""An experiment hit a non-finite loss or weight (status "diverged"; last finite metrics kept)."""
EXIT_BUSY = 4
"""The run folder is held by another live process (``scmm.folder_lock``); nothing was touched."""
EXIT_INTERRUPTED = 130
"""Stopped by SIGINT/SIGTERM (128 + SIGINT, the shell's convention). An experiment first writes
a checkpoint at its current step (summary status "interrupted"), so ``--resume DIR`` continues
it exactly; a sweep records its running trials as interrupted and a re-run resumes them."""

EXIT_OK = EXIT_FINISHED
"""A sweep whose every trial finished or diverged (a diverged trial is a result, not a fault)."""
