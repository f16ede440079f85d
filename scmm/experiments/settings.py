"""The experiment settings tree: everything that defines one run, as nested dataclasses.

The whole tree is written to ``settings.json`` beside every run and checkpoint, logged as the
WandB config, and can be set field by field from the command line by dotted path.
"""

import copy
import dataclasses
import os
from typing import Any, Literal, Optional

import draccus

from ..datasets.settings import DataSettings
from ..models.settings import ModelSettings
from ..pedal.settings import ExecutionSettings
from ..training.settings import TrainingSettings
from .decoding import SettingsError, check_finite, decode

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
    """WandB user or team. null: the logged-in default."""
    progress: Literal["auto", "bar", "lines", "off"] = "auto"
    """auto: a live bar when stderr is a terminal, plain periodic lines otherwise."""
    progress_interval: float = 30.0
    """Seconds between plain progress lines."""
    train_eval_chars: int = 2**17
    """Characters from the start of the training split evaluated for train_bpc."""
    keep_best: bool = True
    """Keep checkpoints/best.npz (lowest validation cross-entropy, unweighted) beside
    checkpoints/last.npz."""
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
    execution: ExecutionSettings = dataclasses.field(default_factory=ExecutionSettings)
    output: OutputSettings = dataclasses.field(default_factory=OutputSettings)
    metadata: MetadataSettings = dataclasses.field(default_factory=MetadataSettings)
    seed: Optional[int] = None
    """Master seed; model init, data order and rounding seeds derive from it. null: one is
    drawn and recorded in settings.json."""
    preset: str = ""
    """Name of the preset this run started from (recorded; set by --preset)."""

    def validate(self) -> None:
        """Raise ValueError/FileNotFoundError naming the first bad value, before any compute."""
        # Decoding rejects non-finite numbers already; settings built in Python meet it here.
        check_finite(self)
        self.data.validate()
        self.model.validate()
        self.training.validate()
        self.execution.validate()
        offset = self.model.loss.autoregression_offset
        if offset >= self.data.sequence_length:
            raise ValueError(
                f"model.loss.autoregression_offset={offset} must be <"
                f" data.sequence_length={self.data.sequence_length} (the first offset positions"
                " of every sequence are not scored; at least one must be)"
            )
        if self.seed is not None and not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2^31), got {self.seed}")
        if not self.output.progress_interval >= 0:
            raise ValueError(
                "output.progress_interval must be >= 0 seconds,"
                f" got {self.output.progress_interval}"
            )
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


# Settings that moved (old dotted path -> its new spelling). Given anew they are an error that
# names the new spelling; a stored settings tree of an older run is migrated (``migrate``).
MOVED = {
    "unit_scale": "--model.scaling.type unit (or regular)",
    "calibrate_weight_gradients": "--model.scaling.calibrate (with --model.scaling.type unit)",
    "training.weights": "--model.weights",
}


def _pop_path(tree: dict[str, Any], path: str) -> Any:
    *parents, leaf = path.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return _MISSING
    return node.pop(leaf, _MISSING)


_MISSING = object()


def check_moved(tree: dict[str, Any]) -> None:
    """Raise ``SettingsError`` naming the new spelling of any moved setting in ``tree``."""
    for path, spelling in MOVED.items():
        probe: Any = tree
        for part in path.split("."):
            probe = probe.get(part, _MISSING) if isinstance(probe, dict) else _MISSING
        if probe is not _MISSING:
            raise SettingsError(f"setting {path!r} was replaced; use {spelling}")


def migrate(tree: dict[str, Any]) -> dict[str, Any]:
    """A settings tree written by an older scmm (e.g. a run folder's settings.json) in the
    current spelling: unit_scale/calibrate_weight_gradients become model.scaling, and
    training.weights becomes model.weights."""
    tree = copy.deepcopy(tree)
    unit = _pop_path(tree, "unit_scale")
    calibrate = _pop_path(tree, "calibrate_weight_gradients")
    weights = _pop_path(tree, "training.weights")
    model = tree.setdefault("model", {})
    if unit is True:
        model["scaling"] = {"type": "unit"}
        if calibrate is not _MISSING:
            model["scaling"]["calibrate"] = calibrate
    elif unit is False:
        model["scaling"] = {"type": "regular"}
    if weights is not _MISSING:
        model["weights"] = weights
    return tree


def from_dict(data: dict[str, Any]) -> ExperimentSettings:
    """Strict decode: unknown keys, wrong types and unknown choices raise ``SettingsError``."""
    check_moved(data)
    return decode(ExperimentSettings, data)
