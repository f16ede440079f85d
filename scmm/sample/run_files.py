"""What sampling needs from a run folder, read and checked before TensorFlow loads.

A run folder (``run_experiment.py --out DIR``) holds ``settings.json`` (the resolved settings
tree, possibly written by an older scmm: it is migrated like ``--resume`` does) and
``checkpoints/{last,best}.npz``. The vocabulary is the run's data vocabulary: ``DIR/vocab.json``
when the run wrote one, else the data folder (or embedded corpus) named by ``data.path``,
loaded through the data cache exactly as training loaded it.
"""

import dataclasses
import json
import os
from typing import Any

import numpy as np

from .. import datasets
from ..datasets.vocab import VOCAB_FILENAME
from ..experiments import checkpoints
from ..experiments.settings import ExperimentSettings, from_dict, migrate

CHECKPOINTS = ("last", "best")


@dataclasses.dataclass
class RunFiles:
    """A run's settings (``model.vocab_size`` set), vocabulary and checkpoint path."""

    settings: ExperimentSettings
    vocab: datasets.Vocab
    checkpoint: str


def checkpoint_path(run_dir: str, which: str) -> str:
    """``RUN_DIR/checkpoints/<which>.npz``."""
    if which not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be one of {'|'.join(CHECKPOINTS)}, got {which!r}")
    return os.path.join(checkpoints.checkpoint_dir(run_dir), f"{which}.npz")


def read_settings(run_dir: str) -> ExperimentSettings:
    """The run's ``settings.json``, migrated to the current spelling and strictly decoded."""
    path = os.path.join(run_dir, "settings.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} does not exist; expected a run folder written by run_experiment.py --out"
        )
    try:
        with open(path, encoding="utf-8") as file:
            tree: Any = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is not valid UTF-8 JSON: {error}") from error
    if not isinstance(tree, dict):
        raise ValueError(f"{path!r} must hold a JSON object, got {type(tree).__name__}")
    return from_dict(migrate(tree))


def read_vocab(run_dir: str, settings: ExperimentSettings) -> datasets.Vocab:
    """The vocabulary the run was trained with (see the module docstring)."""
    stored = os.path.join(run_dir, VOCAB_FILENAME)
    if os.path.isfile(stored):
        return datasets.Vocab.load(stored)
    path = settings.data.path
    if path is not None and not os.path.isdir(path):
        raise FileNotFoundError(
            f"data.path={path!r} of the run is not a folder; the vocabulary is read from the"
            " run's data (expected the folder it was trained on)"
        )
    return datasets.load_dataset(settings.data).vocab


def read_run(run_dir: str, which: str = "last") -> RunFiles:
    """Settings, vocabulary and checkpoint path of a run; ValueError/FileNotFoundError naming
    the bad value otherwise (nothing is computed, TensorFlow is not imported)."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run folder {run_dir!r} does not exist")
    path = checkpoint_path(run_dir, which)
    settings = read_settings(run_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path!r} (a run writes checkpoints at each validation;"
            f" expected one of {', '.join(f'{c}.npz' for c in CHECKPOINTS)})"
        )
    vocab = read_vocab(run_dir, settings)
    wanted = settings.model.vocab_size
    if wanted not in (0, vocab.size):
        raise ValueError(
            f"model.vocab_size={wanted} in {run_dir!r}/settings.json but the run's data"
            f" vocabulary has {vocab.size} characters (expected them equal)"
        )
    model = dataclasses.replace(settings.model, vocab_size=vocab.size)
    return RunFiles(dataclasses.replace(settings, model=model), vocab, path)


def encode_prompt(prompt: str, vocab: datasets.Vocab) -> np.ndarray:
    """Ids (len(prompt),) int32 of the prompt; ValueError naming the first unknown character."""
    known = set(vocab.chars)
    for offset, char in enumerate(prompt):
        if char not in known:
            raise ValueError(
                f"--prompt character {char!r} (U+{ord(char):04X}) at offset {offset} is not in"
                f" the run's vocabulary ({vocab.size} characters); expected only characters"
                " the model was trained on"
            )
    return vocab.encode(prompt).astype(np.int32)
