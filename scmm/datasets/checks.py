"""Whether every split is long enough for what a run does with it, checked as the data loads.

A run samples training windows from ``train`` and walks ``valid`` and ``test`` in order
(:mod:`scmm.datasets.batching`), so the true minimums are:

- train: ``sequence_length + 1`` characters, the least :class:`TrainBatchStream` samples from
  (one window plus the character after it);
- valid, test: 1 character. Evaluation pads its last window, and the first window counts every
  position (the model's shift predicts position 0 from learned padding), so any non-empty split
  gives a loss; an empty one gives no tokens at all and would only fail at the first validation,
  after a whole interval of training.

Checking here, rather than where a split is first used, turns a late failure into bad input
(exit 2) before anything is computed.
"""

from typing import Mapping

from .settings import DataSettings
from .storage import DataError

EVAL_SPLITS = ("valid", "test")


def minimum_chars(split: str, settings: DataSettings) -> tuple[int, str]:
    """(least number of characters `split` needs, why) under `settings`."""
    if split == "train":
        return settings.sequence_length + 1, "data.sequence_length + 1, for one training window"
    if split in EVAL_SPLITS:
        return 1, "evaluation needs at least one character to predict"
    raise DataError(f"unknown split {split!r}; expected train, {', '.join(EVAL_SPLITS)}")


def check_split_length(split: str, source: str, n_chars: int, settings: DataSettings) -> None:
    """Raise DataError naming the split and its file when it is shorter than it must be."""
    need, why = minimum_chars(split, settings)
    if n_chars < need:
        raise DataError(
            f"{split} split ({source}) has {n_chars} characters; need at least {need} ({why})"
        )


def check_split_lengths(
    lengths: Mapping[str, int], sources: Mapping[str, str], settings: DataSettings
) -> None:
    """``check_split_length`` for every split in `lengths` (first failure raises)."""
    for split, n_chars in lengths.items():
        check_split_length(split, sources[split], n_chars, settings)
