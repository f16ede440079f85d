"""Settings for the data pipeline (one branch of the experiment settings tree)."""

import dataclasses
from typing import Optional


@dataclasses.dataclass
class DataSettings:
    """Where the text comes from and how it is cut into sequences."""

    path: Optional[str] = None
    """Folder with train.txt, valid.txt, test.txt (vocab.json optional). null (the default):
    the embedded corpus (standard-library docstrings; nothing downloaded)."""

    sequence_length: int = 256
    """Characters per sequence (model context)."""

    overlap_length: int = 32
    """Leading positions of each sequence that are context only (targets masked out)."""

    cache_dir: Optional[str] = None
    """Where id arrays are cached. null: $SCMM_CACHE or ~/.cache/scmm."""

    def validate(self) -> None:
        """Raise ValueError naming the bad value (cheap checks; no file access)."""
        if self.sequence_length < 2:
            raise ValueError(f"data.sequence_length must be >= 2, got {self.sequence_length}")
        if not 0 <= self.overlap_length < self.sequence_length:
            raise ValueError(
                f"data.overlap_length must be in [0, sequence_length={self.sequence_length}),"
                f" got {self.overlap_length}"
            )
