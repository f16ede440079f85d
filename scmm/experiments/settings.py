"""The experiment settings tree: everything that defines one run, as nested dataclasses.

The whole tree is written to ``settings.json`` beside every run and checkpoint, logged as the
WandB config, and can be set field by field from the command line by dotted path.
"""

import dataclasses
import os
from typing import Any, Literal, Optional

import draccus

from ..datasets.settings import DataSettings
from ..models.settings import ModelSettings
from ..pedal.settings import ExecutionSettings
from ..training.settings import TrainingSettings
from .decoding import SettingsError, decode

__all__ = [
    "ExperimentSettings",
    "MetadataSettings",
    "OutputSettings",
    "SettingsError",
    "check_data_folder",
    "from_dict",
    "to_dict",
]


@dataclasses.dataclass
class OutputSettings:
    """Where and how results are reported."""

    wandb: Literal["auto", "online", "offline", "off"] = "auto"
    """auto: online when logged in to WandB, offline otherwise; off: JSONL only."""
    wandb_project: str = "scmm"
    """WandB project the run is logged to."""
    wandb_entity: Optional[str] = None
    """WandB user or team. None: the logged-in default."""
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    """auto: a live bar when stderr is a terminal, plain periodic lines otherwise."""
    progress_interval: float = 30.0
    """Seconds between plain progress lines."""
    train_eval_chars: int = 2**17
    """Characters from the start of the training split evaluated for train_bpc."""
    keep_best: bool = True
    """Keep checkpoints/best.npz (lowest validation loss) beside checkpoints/last.npz."""
    analyse: Literal["off", "init", "validation"] = "off"
    """Scale analysis (scales.json, scales.png): off; at initialisation (init; also --analyse);
    or at initialisation and every validation (validation)."""


@dataclasses.dataclass
class MetadataSettings:
    """Free-form labels for finding runs later (also sent to WandB)."""

    name: str = ""
    """Run name (also the default output folder's suffix)."""
    tags: list[str] = dataclasses.field(default_factory=list)
    """Labels, e.g. --metadata.tags "[fp16, baseline]"."""
    notes: str = ""
    """Free text stored with the run."""
    group: str = ""
    """WandB group (sweeps put their trials in one group)."""


@dataclasses.dataclass
class ExperimentSettings:
    """One experiment: data, model, training, execution, outputs, labels and seed."""

    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    training: TrainingSettings = dataclasses.field(default_factory=TrainingSettings)
    unit_scale: bool = False
    """Use the unit-scaled twin of every layer (scmm.uscale)."""
    calibrate_weight_gradients: bool = True
    """Unit-scaled models: before step 0, measure every parameter's gradient RMS on one
    training batch and fix a per-parameter factor making it 1 (scmm.uscale.calibration).
    A cut edge: the model, its activation gradients and Adam's updates are unchanged. False
    keeps the analytic rows^-1/2 scales. Ignored for regular models."""
    execution: ExecutionSettings = dataclasses.field(default_factory=ExecutionSettings)
    output: OutputSettings = dataclasses.field(default_factory=OutputSettings)
    metadata: MetadataSettings = dataclasses.field(default_factory=MetadataSettings)
    seed: Optional[int] = None
    """Master seed; model init, data order and rounding seeds derive from it. None: drawn."""
    preset: str = ""
    """Name of the preset this run started from (recorded; set by --preset)."""

    def validate(self) -> None:
        """Raise ValueError/FileNotFoundError naming the first bad value, before any compute."""
        self.data.validate()
        self.model.validate()
        self.training.validate()
        if self.unit_scale and self.model.residual.weighting == "plain":
            raise ValueError(
                "unit_scale=true needs model.residual.weighting fixed or mean, got 'plain'"
                " (x + f(x) grows the residual stream, so it has no unit-scaled form)"
            )
        if self.seed is not None and not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2^31), got {self.seed}")
        if self.output.train_eval_chars < self.data.sequence_length:
            raise ValueError(
                f"output.train_eval_chars={self.output.train_eval_chars} must be >="
                f" data.sequence_length={self.data.sequence_length}"
            )
        if self.data.path is not None:
            check_data_folder(self.data.path)


def check_data_folder(path: str) -> None:
    """The folder exists and holds train/valid/test.txt (cheap, before loading anything)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"data.path={path!r} is not a folder (expected a folder with train.txt,"
            " valid.txt, test.txt)"
        )
    missing = [
        n
        for n in ("train.txt", "valid.txt", "test.txt")
        if not os.path.isfile(os.path.join(path, n))
    ]
    if missing:
        raise FileNotFoundError(f"data.path={path!r} lacks {', '.join(missing)}")


def to_dict(settings: ExperimentSettings) -> dict[str, Any]:
    """The settings tree as plain JSON-able data (choice nodes carry their ``type``)."""
    encoded = draccus.encode(settings)
    assert isinstance(encoded, dict)
    return encoded


def from_dict(data: dict[str, Any]) -> ExperimentSettings:
    """Strict decode: unknown keys, wrong types and unknown choices raise ``SettingsError``."""
    return decode(ExperimentSettings, data)
