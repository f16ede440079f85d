"""Experiments: the settings tree, presets, command line, outputs and the run loop."""

import os
import sys
from typing import Optional, Sequence

from ..exit_codes import EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from ..folder_lock import FolderBusyError, holder
from ..quiet_import import import_tensorflow_quietly
from .checkpoints import CheckpointError
from .settings import ExperimentSettings, SettingsError, from_dict, to_dict

__all__ = ["EXIT_USAGE", "ExperimentSettings", "SettingsError", "from_dict", "main", "to_dict"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run_experiment.py``: parse, validate and set up (bad input: one line, exit 2), train."""
    from .. import datasets
    from . import cli
    from .resume import check_new_folder, default_out_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        invocation = cli.parse(argv)
        if invocation is None:
            return 0
        invocation.settings.validate()
        from ..pedal.settings import writes_outputs

        # A multi_worker task that is not the chief neither locks nor checks the folder: the
        # chief does, and it alone writes there.
        writes = writes_outputs(invocation.settings.execution)
        if invocation.settings.execution.strategy == "multi_worker" and not invocation.out:
            raise ValueError(
                "execution.strategy=multi_worker needs --out DIR (or --resume DIR): the same"
                " folder for every worker (the chief writes it; the others read its checkpoints)"
            )
        busy = holder(invocation.out) if invocation.out and writes else None
        if busy is not None:  # refused before TensorFlow starts (the Experiment locks for real)
            raise FolderBusyError(invocation.out or "", busy if busy > 0 else None)
        if invocation.out and not invocation.resume and writes:
            check_new_folder(invocation.out)  # again under the lock; here before TF starts
        # Data problems (e.g. a character outside vocab.json) are found before TensorFlow
        # starts; the load is cached, so the experiment's own load below is instant.
        datasets.load_dataset(invocation.settings.data)
        # TensorFlow loads here (the runner imports it): without its start-up log lines.
        import_tensorflow_quietly()
        from .runner import Experiment

        out_dir = invocation.out or default_out_dir(
            invocation.settings.metadata.name or invocation.settings.preset
        )
        experiment = Experiment(
            invocation.settings,
            out_dir,
            resume=invocation.resume is not None,
            resume_from=invocation.resume_from,
        )
    except FolderBusyError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BUSY
    except CheckpointError as error:
        # Damaged or foreign state, not bad input: a failed run (a sweep retries it afresh).
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError, KeyError) as error:
        # OSError: a missing file or folder, or too little disk space for the checkpoints.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted while setting up (nothing was written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # pylint: disable=broad-except
        from . import failures  # TensorFlow's out-of-memory error is not a MemoryError

        if not failures.is_out_of_memory(error):
            raise
        print(f"error: {failures.one_line(error)} while building the model", file=sys.stderr)
        _leave(EXIT_FAILED)
    code = experiment.run()
    if experiment.out_of_memory:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """Exit now, skipping interpreter teardown: after an allocation failure TensorFlow's
    allocator can abort there ("double free or corruption", exit 134). Everything is written
    and closed by the time this is called."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
