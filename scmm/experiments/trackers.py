"""Where run records go: JSON lines (the source of truth) and, optionally, WandB.

A record is a flat dict with ``kind`` (settings, stats, train_step, eval_valid, eval_train,
eval_test, resume, diverged, error, summary), ``step`` and ``time``. ``JsonlTracker`` appends
one line per record and flushes. ``WandbTracker`` mirrors records to a WandB run; any WandB
failure is reported once on stderr and WandB is then dropped, so it never stops training.
"""

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Optional, Protocol, Sequence

from ..io import atomic_open, scan_jsonl, write_json
from .settings import ExperimentSettings, to_dict

# A record's list field named ``<metric>_per_step`` holds one value per step of its chunk.
PER_STEP_SUFFIX = "_per_step"


def _json_safe(value: Any) -> Any:
    # Non-finite floats become strings so every line is strict JSON ("NaN" is not).
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class Tracker(Protocol):
    """Receives records, a final summary, and is finished exactly once."""

    def log(self, record: dict[str, Any]) -> None:
        """One record (has kind, step)."""

    def summary(self, summary: dict[str, Any]) -> None:
        """Final results of the run."""

    def finish(self, status: str) -> None:
        """Close; ``status`` is finished | diverged | failed."""


class JsonlTracker:
    """Appends records to ``log.jsonl``, one whole line at a time.

    ``lines`` counts the file's lines (those there when it was opened plus every record since),
    so a checkpoint can record exactly how much of the log belongs to it. A write that fails
    part-way (a full disk) is cut back to the previous end of the file: the log never holds a
    torn record, and the error propagates.
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._fd: Optional[int] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with open(path, "rb") as file:
            self.lines = file.read().count(b"\n")

    def log(self, record: dict[str, Any]) -> None:
        """Record one entry."""
        if self._fd is None:
            raise ValueError(f"{self.path}: log already closed")
        data = (json.dumps(_json_safe(record), allow_nan=False) + "\n").encode("utf-8")
        end = os.fstat(self._fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            os.ftruncate(self._fd, end)  # shrinking needs no space, so it works on a full disk
            raise
        self.lines += 1

    def summary(self, summary: dict[str, Any]) -> None:
        """Record the final summary."""
        self.log({"kind": "summary", **summary})

    def finish(self, status: str) -> None:
        """Close the tracker."""
        del status  # the status is in the summary record already
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


DROPPED_SUFFIX = ".dropped"


@dataclasses.dataclass
class LogRepair:
    """What a resume did to ``log.jsonl``: lines kept, moved aside, and unreadable ones."""

    kept: int
    after_checkpoint: int
    unreadable: list[tuple[int, str]]
    archive: str

    def notes(self) -> list[str]:
        """Lines to show the user (nothing when nothing was moved)."""
        notes = []
        if self.after_checkpoint:
            notes.append(
                f"{self.after_checkpoint} log record(s) written after the checkpoint were moved"
                f" to {self.archive} (the resumed run repeats those steps)"
            )
        if self.unreadable:
            where = ", ".join(f"line {n} ({why})" for n, why in self.unreadable)
            notes.append(f"warning: unreadable log line(s) moved to {self.archive}: {where}")
        return notes


def repair_log(path: str, keep_lines: Optional[int], last_step: int) -> LogRepair:
    """Cut ``log.jsonl`` back to what it held when the resumed checkpoint was written.

    ``keep_lines`` is the line count the checkpoint recorded; for a checkpoint written before
    that was recorded, records up to ``last_step`` (and no summary) are kept instead. Nothing
    is deleted: every line taken out (records the resumed run will repeat, torn or malformed
    lines) is appended to ``log.jsonl.dropped`` first, then the log is rewritten atomically.
    """
    scan = scan_jsonl(path)
    good = dict(zip(scan.record_lines, scan.records))
    bad_numbers = {number for number, _ in scan.bad}
    if keep_lines is None:

        def keep(index: int) -> bool:
            record = good.get(index)
            return (
                record is not None
                and int(record.get("step", 0)) <= last_step
                and record.get("kind") != "summary"
            )

    else:

        def keep(index: int) -> bool:
            return index < keep_lines and index in good

    kept = [index for index in range(len(scan.lines)) if keep(index)]
    moved = [index for index in range(len(scan.lines)) if not keep(index)]
    archive = path + DROPPED_SUFFIX
    repair = LogRepair(
        kept=len(kept),
        after_checkpoint=sum(1 for index in moved if index + 1 not in bad_numbers),
        unreadable=list(scan.bad),
        archive=archive,
    )
    if not moved:
        return repair
    with open(archive, "a", encoding="utf-8") as file:
        file.write(
            f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} resume from step {last_step}:"
            f" {len(moved)} line(s) taken out of {os.path.basename(path)}\n"
        )
        for index in moved:
            line = scan.lines[index]
            file.write(line if line.endswith("\n") else line + "\n")
        file.flush()
        os.fsync(file.fileno())
    with atomic_open(path) as log:
        for index in kept:
            log.write(scan.lines[index])
    return repair


def write_outcome(out_dir: str, tracker: Tracker, summary: dict[str, Any]) -> None:
    """``summary.json``, the summary record and the trackers' end, each attempted even if
    another fails (a full disk may refuse one; whatever fits still says how the run ended)."""
    status = summary["status"]
    for what, action in (
        ("summary.json", lambda: write_json(os.path.join(out_dir, "summary.json"), summary)),
        ("the summary record", lambda: tracker.summary(summary)),
        ("the trackers' end", lambda: tracker.finish(status)),
    ):
        try:
            action()
        except OSError as failure:
            reason = failure.strerror or str(failure)
            print(f"error: could not write {what}: {reason}", file=sys.stderr)


def wandb_logged_in() -> bool:
    """Whether WandB has credentials (environment, netrc or its settings file), without
    touching the network or the terminal."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import wandb

        # wandb.login(prompt=False) is WandB's own credentials check (``wandb.api.api_key``,
        # used before, is deprecated and printed a warning on every auto run). verify=False
        # keeps it off the network; a silent setup stops it looking up and printing the user.
        wandb.setup(wandb.Settings(silent=True))
        return bool(wandb.login(prompt=False, verify=False))
    except Exception:  # pylint: disable=broad-except
        return False


class WandbTracker:
    """Mirrors records to a WandB run (online or offline)."""

    def __init__(
        self,
        mode: str,
        out_dir: str,
        config: dict[str, Any],
        project: str,
        entity: Optional[str],
        name: str,
        tags: Sequence[str],
        group: str,
        notes: str,
        run_id: Optional[str] = None,
    ):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            mode=mode,  # type: ignore[arg-type]
            dir=out_dir,
            project=project,
            entity=entity,
            name=name or None,
            tags=list(tags) or None,
            group=group or None,
            notes=notes or None,
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.mode = mode

    def log(self, record: dict[str, Any]) -> None:
        """Record one entry; a list field ``<name>_per_step`` of n values is logged as
        ``<kind>/<name>`` at the n steps ending at the record's step, one value each."""
        kind = record.get("kind", "record")
        step = int(record.get("step", 0))
        for key, values in record.items():
            if key.endswith(PER_STEP_SUFFIX) and isinstance(values, list):
                name = f"{kind}/{key[: -len(PER_STEP_SUFFIX)]}"
                for offset, value in enumerate(values, start=step - len(values) + 1):
                    self.run.log({name: value}, step=offset)
        metrics = {
            f"{kind}/{k}": v
            for k, v in record.items()
            if k not in ("kind", "step", "time") and isinstance(v, (int, float))
        }
        if metrics:
            self.run.log(metrics, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        """Record the final summary."""
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)):
                self.run.summary[key] = value

    def finish(self, status: str) -> None:
        """Close the tracker."""
        self.run.finish(exit_code=0 if status == "finished" else 1)


class SafeTracker:
    """Wraps a tracker that may fail (WandB): the first error is reported, then it is dropped."""

    def __init__(self, inner: Optional[Tracker], name: str):
        self.inner = inner
        self.name = name

    def _call(self, method: str, *args: Any) -> None:
        if self.inner is None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as error:  # pylint: disable=broad-except
            print(
                f"warning: {self.name} failed ({type(error).__name__}: {error});"
                " continuing with JSONL logging only",
                file=sys.stderr,
            )
            self.inner = None

    def log(self, record: dict[str, Any]) -> None:
        """Record one entry."""
        self._call("log", record)

    def summary(self, summary: dict[str, Any]) -> None:
        """Record the final summary."""
        self._call("summary", summary)

    def finish(self, status: str) -> None:
        """Close the tracker."""
        self._call("finish", status)


class CompositeTracker:
    """Fans records out to several trackers; stamps ``time`` on each record."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    @property
    def log_lines(self) -> Optional[int]:
        """Lines in ``log.jsonl`` so far (None without a JSONL tracker)."""
        for tracker in self.trackers:
            if isinstance(tracker, JsonlTracker):
                return tracker.lines
        return None

    def log(self, record: dict[str, Any]) -> None:
        """Record one entry."""
        record = {"time": time.time(), **record}
        for tracker in self.trackers:
            tracker.log(record)

    def summary(self, summary: dict[str, Any]) -> None:
        """Record the final summary."""
        for tracker in self.trackers:
            tracker.summary(summary)

    def finish(self, status: str) -> None:
        """Close the tracker."""
        for tracker in self.trackers:
            tracker.finish(status)


def open_trackers(settings: ExperimentSettings, out_dir: str, resume: bool) -> "CompositeTracker":
    """The run's trackers: ``log.jsonl`` always, WandB unless ``output.wandb=off``.

    WandB that cannot start is reported once on stderr and left out; a resumed run continues
    the WandB run whose id ``wandb_id.txt`` in the run folder holds.
    """
    trackers: list[Tracker] = [JsonlTracker(os.path.join(out_dir, "log.jsonl"))]
    mode = settings.output.wandb
    if mode == "off":
        return CompositeTracker(trackers)
    if mode == "auto":
        mode = "online" if wandb_logged_in() else "offline"
    meta = settings.metadata
    id_path = os.path.join(out_dir, "wandb_id.txt")
    run_id = None
    if resume and os.path.exists(id_path):
        with open(id_path, encoding="utf-8") as file:
            run_id = file.read().strip()
    wandb_tracker = SafeTracker(None, f"WandB ({mode})")
    try:
        inner = WandbTracker(
            mode,
            out_dir,
            to_dict(settings),
            settings.output.wandb_project,
            settings.output.wandb_entity,
            meta.name or os.path.basename(os.path.abspath(out_dir)),
            meta.tags,
            meta.group,
            meta.notes,
            run_id=run_id,
        )
        wandb_tracker.inner = inner
        with open(id_path, "w", encoding="utf-8") as file:
            file.write(inner.run.id)
    except Exception as error:  # pylint: disable=broad-except
        print(
            f"warning: WandB ({mode}) could not start ({type(error).__name__}: {error});"
            " logging to JSONL only",
            file=sys.stderr,
        )
    trackers.append(wandb_tracker)
    return CompositeTracker(trackers)
