"""Cut id arrays into batches of fixed-length windows.

A batch is ``{"tokens": int32 array, "mask": bool array}`` of one shape. The model predicts
``tokens[..., t]`` from ``tokens[..., :t]`` (it shifts internally), and ``mask[..., t]`` says
whether the prediction at position t counts towards the loss/metrics.

Training windows are sampled uniformly with replacement; their first ``overlap_length`` positions
are context only. Evaluation walks a split in order so every character is predicted exactly once:
window 0 starts at 0 and counts every position (nothing precedes it); window k >= 1 starts at
``k * stride`` with ``stride = sequence_length - overlap_length`` and counts only its positions
from ``overlap_length`` on, which are exactly the characters after window k - 1's last one.
"""

import copy
from typing import Any, Iterator

import numpy as np

from .storage import DataError

Batch = dict[str, np.ndarray]


def _check_shape_args(sequences: int, sequence_length: int, overlap_length: int) -> None:
    if sequences < 1:
        raise DataError(f"sequences must be >= 1, got {sequences}")
    if sequence_length < 1:
        raise DataError(f"sequence_length must be >= 1, got {sequence_length}")
    if not 0 <= overlap_length < sequence_length:
        raise DataError(
            f"overlap_length must be in [0, sequence_length={sequence_length}),"
            f" got {overlap_length}"
        )


def _check_ids(ids: np.ndarray) -> None:
    if ids.ndim != 1:
        raise DataError(f"ids must be a 1-D array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"ids must have an integer dtype, got {ids.dtype}")


class TrainBatchStream:
    """Endless, seeded, resumable stream of random training windows from one split."""

    def __init__(
        self,
        ids: np.ndarray,
        sequences: int,
        sequence_length: int,
        overlap_length: int,
        seed: int,
    ):
        _check_ids(ids)
        _check_shape_args(sequences, sequence_length, overlap_length)
        if len(ids) < sequence_length + 1:
            raise DataError(
                f"split has {len(ids)} characters; expected at least sequence_length + 1 ="
                f" {sequence_length + 1} to sample training windows"
            )
        self.ids = ids
        self.sequences = sequences
        self.sequence_length = sequence_length
        self.overlap_length = overlap_length
        self.seed = seed
        # Every start in [0, n - L] gives a full window inside the split.
        self.n_starts = len(ids) - sequence_length + 1
        self._rng = np.random.Generator(np.random.PCG64(seed))
        # shape (L,): context-only positions are False
        self._mask_row = np.arange(sequence_length) >= overlap_length

    def next(self, count: int = 1) -> Batch:
        """The next `count` training steps: arrays of shape (count, sequences, sequence_length)."""
        if count < 1:
            raise DataError(f"count must be >= 1, got {count}")
        starts = self._rng.integers(0, self.n_starts, size=(count, self.sequences))  # (C, S)
        # (C, S, L) indices; one fancy-index gathers the whole block (also from a memmap).
        positions = starts[..., np.newaxis] + np.arange(self.sequence_length)
        tokens = np.asarray(self.ids[positions], dtype=np.int32)
        mask = np.broadcast_to(self._mask_row, tokens.shape).copy()
        return {"tokens": tokens, "mask": mask}

    def state(self) -> dict[str, Any]:
        """JSON-serialisable generator state; `set_state` of it resumes the stream exactly."""
        return copy.deepcopy(dict(self._rng.bit_generator.state))

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from `state()` (of a stream over any split; only the RNG is restored)."""
        if state.get("bit_generator") != "PCG64":
            raise DataError(
                f"stream state is for bit generator {state.get('bit_generator')!r};"
                " expected 'PCG64'"
            )
        self._rng.bit_generator.state = copy.deepcopy(state)


def count_eval_windows(n_chars: int, sequence_length: int, overlap_length: int) -> int:
    """Windows needed so that every one of `n_chars` characters is predicted exactly once."""
    _check_shape_args(1, sequence_length, overlap_length)
    if n_chars < 0:
        raise DataError(f"n_chars must be >= 0, got {n_chars}")
    if n_chars == 0:
        return 0
    stride = sequence_length - overlap_length
    # Window 0 covers L characters; each further one covers `stride` new characters.
    return 1 + max(0, -(-(n_chars - sequence_length) // stride))


def count_eval_batches(
    n_chars: int, sequences: int, sequence_length: int, overlap_length: int
) -> int:
    """Number of batches `eval_batches` yields for a split of `n_chars` characters."""
    _check_shape_args(sequences, sequence_length, overlap_length)
    windows = count_eval_windows(n_chars, sequence_length, overlap_length)
    return -(-windows // sequences)


def eval_batches(
    ids: np.ndarray, sequences: int, sequence_length: int, overlap_length: int
) -> Iterator[Batch]:
    """Batches of shape (sequences, sequence_length) covering `ids` in order; see module doc.

    The last batch is padded (token 0, mask False) inside its last window and with whole rows.
    """
    _check_ids(ids)
    n_chars = len(ids)
    n_windows = count_eval_windows(n_chars, sequence_length, overlap_length)
    stride = sequence_length - overlap_length
    offsets = np.arange(sequence_length)  # (L,)
    for first in range(0, n_windows, sequences):
        window = first + np.arange(sequences)  # (S,), may run past n_windows in the last batch
        positions = (window * stride)[:, np.newaxis] + offsets  # (S, L)
        real = (positions < n_chars) & (window < n_windows)[:, np.newaxis]  # (S, L)
        counted = real & ((offsets >= overlap_length) | (window == 0)[:, np.newaxis])
        # Clip so padding positions index a valid element; they are zeroed below.
        tokens = np.asarray(ids[np.minimum(positions, n_chars - 1)], dtype=np.int32)
        tokens[~real] = 0
        yield {"tokens": tokens, "mask": counted}
