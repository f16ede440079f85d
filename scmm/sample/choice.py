"""Picking the next character from the model's logits: temperature, top-k, seeded draws.

Pure numpy on the host (the model runs on the device; one (samples, vocab) row set per step is
all that crosses over), so the rule is easy to test and the same seed always gives the same
text, whatever device computed the logits.
"""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How logits become a character."""

    temperature: float = 1.0
    """Logits are divided by it before sampling; 0 picks the most likely character (greedy)."""
    top_k: Optional[int] = None
    """Sample among the k most likely characters only. None: all of them."""

    def validate(self) -> None:
        """Raise ValueError naming the bad value."""
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"--temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(
                f"--top-k must be >= 1 (omit it to keep every character), got {self.top_k}"
            )

    @property
    def greedy(self) -> bool:
        """Whether the choice is deterministic: temperature 0, or a single candidate."""
        return self.temperature == 0 or self.top_k == 1


def top_k_candidates(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices (rows, min(k, vocab)) of each row's k largest logits, largest first.

    A stable sort breaks ties towards the lower id, as ``argmax`` does, so top-k = 1 is exactly
    greedy decoding even when two characters are equally likely.
    """
    k = min(k, logits.shape[-1])
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k]


def choose(logits: np.ndarray, decoding: Decoding, rng: np.random.Generator) -> np.ndarray:
    """The next id of each row of ``logits`` (rows, vocab) -> (rows,) int64.

    Greedy decoding draws nothing from ``rng``; sampling draws exactly one uniform per row, so
    the stream of draws (and the text) depends only on the seed and the number of rows.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if decoding.greedy:
        return np.argmax(logits, axis=-1)
    candidates = (
        np.broadcast_to(np.arange(logits.shape[-1]), logits.shape)
        if decoding.top_k is None
        else top_k_candidates(logits, decoding.top_k)
    )  # (rows, k)
    scaled = np.take_along_axis(logits, candidates, axis=-1) / decoding.temperature
    scaled -= scaled.max(axis=-1, keepdims=True)  # softmax without overflow
    weights = np.exp(scaled)
    cumulative = np.cumsum(weights, axis=-1)  # (rows, k)
    draws = rng.random(len(logits)) * cumulative[:, -1]  # (rows,)
    # The first candidate whose cumulative weight exceeds the draw; clipped so a draw that
    # rounds onto the total still names a real candidate.
    picked = np.minimum((cumulative <= draws[:, None]).sum(axis=-1), candidates.shape[-1] - 1)
    return candidates[np.arange(len(logits)), picked]
