"""A run's checkpoints: what they hold, writing them (room checked, best before last) and
putting a run back to one (``Checkpointer``). The file format is ``checkpoints``'; choosing and
verifying the checkpoint to resume from is ``resume``'.

A checkpoint holds the model's weights, the optimiser and loss-scale state, the data stream's
position, the scheme's state (e.g. calibration factors) and the run's own record (best
validation, throughput, how many log lines belong to it, the last validation result), so that a
resumed run continues exactly and logs nothing twice.
"""

import os
import shutil
from typing import Any, Callable

from ..datasets import TrainBatchStream
from ..io import atomic_path, write_json
from ..models import CharLM
from ..training import Trainer
from . import checkpoints, failures
from .resume import ResumePoint, repair_best
from .settings import ExperimentSettings, to_dict


class Checkpointer:
    """Writes and restores the checkpoints of the run in ``out_dir``."""

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self,
        out_dir: str,
        settings: ExperimentSettings,
        model: CharLM,
        trainer: Trainer,
        stream: TrainBatchStream,
    ):
        self.out_dir = out_dir
        self.settings = settings
        self.model = model
        self.trainer = trainer
        self.stream = stream

    def size_bytes(self) -> int:
        """About how large one checkpoint is."""
        return checkpoints.size_bytes(self.model.get_weight_arrays(), self.trainer.state_arrays())

    def check_disk_space(self) -> None:
        """Room for last.npz, best.npz and one being written, checked before any compute."""
        size = self.size_bytes()
        existing = [checkpoints.path_of(self.out_dir, name) for name in checkpoints.NAMES]
        held = sum(os.path.getsize(path) for path in existing if os.path.isfile(path))
        copies = 3 if self.settings.output.keep_best else 2
        failures.check_free_space(
            self.out_dir,
            max(copies * size - held, size) + 2**20,
            f"checkpointing ({copies} copies of about {failures.megabytes(size)})",
        )

    def save(self, improved: bool, run_state: dict[str, Any]) -> None:
        """``last.npz`` (and first ``best.npz`` when ``improved``) at the trainer's step."""
        folder = checkpoints.checkpoint_dir(self.out_dir)
        write_json(os.path.join(folder, "settings.json"), to_dict(self.settings))
        model_arrays = self.model.get_weight_arrays()
        optimiser_arrays = self.trainer.state_arrays()
        size = checkpoints.size_bytes(model_arrays, optimiser_arrays)
        state = {
            "step": self.trainer.step,
            "stream": self.stream.state(),
            "seed": self.settings.seed,
            "scheme": self.model.scheme.state(self.model.parameters),
            **run_state,
        }
        names = ["best", "last"] if improved and self.settings.output.keep_best else ["last"]
        for name in names:  # best first: see scmm.experiments.checkpoints
            failures.check_free_space(folder, size, f"checkpoints/{name}.npz")
            checkpoints.save(
                checkpoints.path_of(self.out_dir, name), model_arrays, optimiser_arrays, state
            )

    def restore(self, point: ResumePoint) -> dict[str, Any]:
        """Put model, optimiser, data stream and scheme back to ``point``; its state record."""
        state = point.state
        self.model.set_weight_arrays(point.model)
        self.trainer.set_state_arrays(point.optimiser)
        self.stream.set_state(state["stream"])
        if "scheme" in state:
            self.model.scheme.restore(self.model.parameters, state["scheme"])
        elif "weight_gradient_factors" in state:  # a checkpoint written before schemes
            self.model.parameters.set_gradient_factors(state["weight_gradient_factors"])
        return state

    def tidy_for_resume(self, point: ResumePoint, notice: Callable[[str], None]) -> None:
        """Under the folder's lock, before the resumed run writes: make last.npz a copy of
        best.npz for ``--from best`` (keeping the old one aside), and bring a stale best.npz
        up to date."""
        last = checkpoints.path_of(self.out_dir, "last")
        if os.path.basename(point.path) == "best.npz":
            if os.path.exists(last):
                os.replace(last, last + ".before-from-best")
                notice(f"kept the previous last.npz as {last}.before-from-best")
            with atomic_path(last) as temp:
                shutil.copyfile(point.path, temp)
        elif repair_best(self.out_dir, point):
            notice("best.npz was older than the best validation last.npz records: copied it")
