"""Setting a run up: settings -> data -> model and its scheme -> trainer -> data stream, and,
for a resume, the checkpoint to continue from. Everything that can be wrong with the input is
found here, before any compute (``Experiment`` turns it into one ``error:`` line).
"""

import dataclasses
import secrets
from typing import Any, Optional

from .. import datasets
from ..models import CharLM
from ..pedal import Execution, split_seed
from ..training import Trainer
from .checkpointing import Checkpointer
from .resume import ResumePoint, check_new_folder, ended_run, load_point
from .settings import ExperimentSettings


def resolve_seeds(settings: ExperimentSettings) -> ExperimentSettings:
    """Draw the master seed if unset and derive the model seed, so the run can be repeated."""
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    model_seed = settings.model.seed
    if model_seed is None:
        model_seed = split_seed(seed, "model")
    return dataclasses.replace(
        settings, seed=seed, model=dataclasses.replace(settings.model, seed=model_seed)
    )


def with_vocab_size(settings: ExperimentSettings, vocab: int) -> ExperimentSettings:
    """``model.vocab_size`` taken from the data (0) or checked against it."""
    wanted = settings.model.vocab_size
    if wanted not in (0, vocab):
        raise ValueError(
            f"model.vocab_size={wanted} but the data's vocabulary has {vocab} characters"
            " (expected 0 to take it from the data, or equal)"
        )
    return dataclasses.replace(
        settings, model=dataclasses.replace(settings.model, vocab_size=vocab)
    )


def model_and_trainer(
    settings: ExperimentSettings, execution: Execution, loss_limit: bool = True
) -> tuple[CharLM, Trainer]:
    """The model (its scheme's learning-rate rules set for the run's optimiser: u-mup's differ
    for SGD) and its trainer; call inside ``execution.scope()``. ``loss_limit`` False turns
    the loss-explosion limit (a multiple of ln V) off."""
    assert settings.seed is not None
    model = CharLM(settings.model)  # the scheme comes with the model
    model.scheme.assign_multipliers(model.parameters, settings.training.optimiser.kind)
    trainer = Trainer(
        model,
        settings.training,
        execution,
        model.parameters,
        weights=settings.model.weights,
        seed=split_seed(settings.seed, "rounding"),
        vocab_size=settings.model.vocab_size if loss_limit else None,
    )
    return model, trainer


@dataclasses.dataclass
class RunParts:  # pylint: disable=too-many-instance-attributes
    """What a run is made of. ``ended``: the summary of a run that already finished or
    diverged (nothing to resume); ``start``: the verified checkpoint a resume continues from
    (None: from step 0)."""

    settings: ExperimentSettings
    dataset: datasets.Dataset
    execution: Execution
    model: CharLM
    trainer: Trainer
    stream: datasets.TrainBatchStream
    checkpointer: Checkpointer
    start: Optional[ResumePoint]
    ended: Optional[dict[str, Any]]


def build(
    settings: ExperimentSettings,
    out_dir: str,
    resume: bool,
    resume_from: str,
    writes: bool = True,
) -> RunParts:
    """Every part of the run in ``out_dir`` (call while holding the folder's lock).
    ``writes`` False: a multi_worker task that is not the chief (no lock; the chief's folder
    is read, its checks of a new folder are the chief's)."""
    if not resume and writes:  # under the lock: two runs started together cannot both pass
        check_new_folder(out_dir)
    ended = ended_run(out_dir, settings.training.steps) if resume else None
    dataset = datasets.load_dataset(settings.data)
    settings = with_vocab_size(resolve_seeds(settings), dataset.vocab.size)
    assert settings.seed is not None
    execution = Execution(settings.execution)
    with execution.scope():
        model, trainer = model_and_trainer(settings, execution)
    stream = datasets.TrainBatchStream(
        dataset.splits["train"],
        settings.training.batch_sequences,
        settings.data.sequence_length,
        settings.data.overlap_length,
        seed=split_seed(settings.seed, "data"),
    )
    checkpointer = Checkpointer(out_dir, settings, model, trainer, stream)
    start = None
    if ended is None:
        if resume:
            start = load_point(
                out_dir,
                resume_from,
                model.get_weight_arrays(),
                trainer.state_arrays(),
                settings.training.steps,
            )
        if writes:
            checkpointer.check_disk_space()
    return RunParts(
        settings, dataset, execution, model, trainer, stream, checkpointer, start, ended
    )
