"""``sweep.jsonl``: one line per trial with its latest state, rewritten atomically.

States: ``pending`` (never submitted), ``running`` (submitted; a driver killed with SIGKILL
leaves these behind, and the re-run finds out from the trial's folder what became of them),
``finished``, ``diverged`` (a result: the run's loss became non-finite), ``interrupted``
(stopped by a signal or by the sweep stopping; resumed with ``--resume``, never a failure),
``failed`` (crashed, exit 1: ``crashes`` counts these against ``--retries``) and ``invalid``
(the trial exited 2, a configuration error: never retried, its configuration stops).
``attempts`` counts the processes launched for the trial (resumes included); only ``crashes``
uses up retries, so a trial that was queued, interrupted or adopted costs none.
The file is replaced through a temporary file and a rename, so a kill at any moment leaves
either the old or the new index, never a torn one.
"""

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Optional

from ..io import atomic_open

DONE_STATES = ("finished", "diverged")


@dataclasses.dataclass
class TrialRecord:  # pylint: disable=too-many-instance-attributes  # a row of sweep.jsonl
    """What the sweep knows of one trial."""

    trial: str
    config: str
    labels: dict[str, str]
    learning_rate: float
    point: int
    repeat: int
    seed: int
    out_dir: str
    state: str = "pending"
    attempts: int = 0
    crashes: int = 0
    """Exits with code 1 (or an unexpected signal); what ``--retries`` limits."""
    step: Optional[int] = None
    """The step the trial's summary reports (its training length when it finished)."""
    valid_bpc: Optional[float] = None
    test_bpc: Optional[float] = None
    train_bpc: Optional[float] = None
    tokens_per_second: Optional[float] = None
    wall_seconds: Optional[float] = None
    error: str = ""

    @property
    def done(self) -> bool:
        """Finished or diverged: a result that is never re-run."""
        return self.state in DONE_STATES


class SweepIndex:
    """The trials of one sweep folder, keyed by trial id, persisted to ``sweep.jsonl``."""

    def __init__(self, path: str):
        self.path = path
        self.records: dict[str, TrialRecord] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, 1):
                    if not line.strip():
                        continue
                    try:
                        record = TrialRecord(**_from_json(json.loads(line)))
                    except (json.JSONDecodeError, TypeError) as error:
                        raise ValueError(f"{path}:{number}: not a trial record ({error})") from None
                    self.records[record.trial] = record

    def get(self, trial: str) -> Optional[TrialRecord]:
        """The record of ``trial`` if known."""
        return self.records.get(trial)

    def put(self, record: TrialRecord) -> None:
        """Insert or replace a record and rewrite the file."""
        self.records[record.trial] = record
        self.save()

    def save(self) -> None:
        """Atomically rewrite ``sweep.jsonl``."""
        with atomic_open(self.path) as file:
            for record in self.records.values():
                file.write(json.dumps(_jsonable(dataclasses.asdict(record)), allow_nan=False))
                file.write("\n")

    def __iter__(self) -> Iterator[TrialRecord]:
        return iter(self.records.values())


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Strict JSON: non-finite floats (a diverged loss) become the string "inf"/"nan"."""
    out = {}
    for key, value in data.items():
        if isinstance(value, float) and math.isnan(value):
            value = "nan"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            value = "inf" if value > 0 else "-inf"
        out[key] = value
    return out


_NUMERIC = ("valid_bpc", "test_bpc", "train_bpc", "tokens_per_second", "wall_seconds")


def _from_json(data: dict[str, Any]) -> dict[str, Any]:
    if "crashes" not in data:
        # An index written before crashes were counted apart: its attempts of a failed trial
        # were all crashes (interrupted and queued ones then counted too, which we cannot undo).
        data = {**data, "crashes": data.get("attempts", 0) if data.get("state") == "failed" else 0}
    return {
        key: float(value) if key in _NUMERIC and isinstance(value, str) else value
        for key, value in data.items()
    }
