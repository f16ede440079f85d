"""Experiments: the settings tree, presets, command line, outputs and the run loop."""

import sys
from typing import Optional, Sequence

from ..exit_codes import EXIT_USAGE
from ..quiet_import import import_tensorflow_quietly
from .settings import ExperimentSettings, SettingsError, from_dict, to_dict

__all__ = ["EXIT_USAGE", "ExperimentSettings", "SettingsError", "from_dict", "main", "to_dict"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run_experiment.py``: parse, validate and set up (bad input: one line, exit 2), train."""
    from .. import datasets
    from . import cli

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        invocation = cli.parse(argv)
        if invocation is None:
            return 0
        invocation.settings.validate()
        # Data problems (e.g. a character outside vocab.json) are found before TensorFlow
        # starts; the load is cached, so the experiment's own load below is instant.
        datasets.load_dataset(invocation.settings.data)
        # TensorFlow loads here (the runner imports it): without its start-up log lines.
        import_tensorflow_quietly()
        from .runner import Experiment, default_out_dir

        out_dir = invocation.out or default_out_dir(invocation.settings)
        experiment = Experiment(invocation.settings, out_dir, resume=invocation.resume is not None)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return experiment.run()
