"""Runs a sweep: schedules trials (with per-configuration LR searches), records every state
change in ``sweep.jsonl``, resumes, and writes ``results.csv``, ``table.md``, ``lr_sweep.png``
(and the rest of ``report.write_outputs``).
"""

import concurrent.futures
import copy
import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Optional, Protocol

from ..exit_codes import (
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_FINISHED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from ..experiments.settings import SettingsError
from ..folder_lock import FolderLock
from ..io import write_json
from .definition import Configuration, LrSearch, SweepDefinition
from .executors import TrialOutcome, TrialSpec
from .index import SweepIndex, TrialRecord
from .report import write_outputs
from .trial_folder import move_aside
from .search import learning_rate, point_score, points_to_run


class Executor(Protocol):
    """What the scheduler needs from an executor."""

    def submit(self, spec: TrialSpec) -> "concurrent.futures.Future[TrialOutcome]":
        """Run ``spec`` eventually."""

    def shutdown(self) -> None:
        """Stop everything still running."""


@dataclasses.dataclass
class SweepOptions:
    """How to run (not what): folder, parallelism, retries."""

    out_dir: str
    threads: int = 1
    retries: int = 1
    """Extra attempts for a crashed trial (exit 1). Diverged trials are results, configuration
    errors (exit 2) are never retried, and interrupted, queued or adopted trials cost none."""


# Exits of a trial that was stopped rather than broken: resumed, never counted as a crash.
_STOPPED_EXITS = (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)


class Sweep:
    """Drives the configurations of one sweep definition to completion."""

    def __init__(
        self,
        definition: SweepDefinition,
        configurations: list[Configuration],
        options: SweepOptions,
        extra: Optional[dict[str, Any]] = None,
    ):
        self.definition = definition
        self.configurations = {c.key: c for c in configurations}
        self.options = options
        os.makedirs(options.out_dir, exist_ok=True)
        self._check_same_sweep(extra or {})
        self.index = SweepIndex(os.path.join(options.out_dir, "sweep.jsonl"))
        self.failed_configs: set[str] = set()
        """Configurations stopped because a trial kept crashing."""
        self.invalid_configs: dict[str, str] = {}
        """Configurations stopped by a configuration error (exit 2): config -> its error."""

    # -- identity ------------------------------------------------------------------------------

    def _check_same_sweep(self, extra: dict[str, Any]) -> None:
        """A folder holds one sweep: re-running must name the same definition and overrides."""
        path = os.path.join(self.options.out_dir, "sweep.json")
        description = {
            "definition": _plain(dataclasses.asdict(self.definition)),
            "extra_overrides": extra,
            "configurations": sorted(self.configurations),
        }
        if os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                previous = json.load(file)
            if previous != json.loads(json.dumps(description)):
                raise SettingsError(
                    f"{self.options.out_dir} holds a different sweep (its sweep.json differs"
                    " from this definition and overrides); use another --out"
                )
        else:
            write_json(path, description)

    # -- trials --------------------------------------------------------------------------------

    def _record(self, config: Configuration, point: int, repeat: int) -> TrialRecord:
        rate = self._learning_rate(config, point)
        log2_rate = math.log2(rate)
        trial = f"{config.key}/lr{log2_rate:+.2f}-r{repeat}"
        existing = self.index.get(trial)
        if existing is not None:
            return existing
        seed = int(config.settings.get("seed") or 0) + repeat
        return TrialRecord(
            trial=trial,
            config=config.key,
            labels=config.labels,
            learning_rate=rate,
            point=point,
            repeat=repeat,
            seed=seed,
            out_dir=os.path.join(self.options.out_dir, "trials", trial),
        )

    @staticmethod
    def _learning_rate(config: Configuration, point: int) -> float:
        if config.lr_search is None:
            return float(config.settings["training"]["optimiser"]["learning_rate"])
        return learning_rate(config.lr_search, point)

    def _spec(self, config: Configuration, record: TrialRecord) -> TrialSpec:
        settings = copy.deepcopy(config.settings)
        settings["training"]["optimiser"]["learning_rate"] = record.learning_rate
        settings["seed"] = record.seed
        metadata = settings.setdefault("metadata", {})
        metadata["name"] = record.trial
        metadata["group"] = metadata.get("group") or self.definition.name
        labels = [f"{axis}={label}" for axis, label in config.labels.items()]
        metadata["tags"] = [*metadata.get("tags", []), self.definition.name, *labels]
        # The trial's folder is left alone: the worker adopts or resumes what it holds once no
        # other process is in it (a trial of a killed driver may still be).
        settings_path = f"{record.out_dir}.settings.json"
        write_json(settings_path, settings)
        return TrialSpec(
            trial=record.trial,
            settings_path=settings_path,
            out_dir=record.out_dir,
            log_path=f"{record.out_dir}.log",
            threads=self.options.threads,
        )

    # -- scheduling ----------------------------------------------------------------------------

    def _config_state(self, config: Configuration) -> tuple[list[TrialRecord], bool]:
        """(trials to run now, finished?) for one configuration."""
        if config.key in self.failed_configs or config.key in self.invalid_configs:
            return [], True
        repeats = self.definition.repeats
        scores: dict[int, float] = {}
        search = config.lr_search or LrSearch(max_points=1)
        points = points_to_run(search, scores)
        while points:
            todo: list[TrialRecord] = []
            for point in points:
                records = [self._record(config, point, r) for r in range(repeats)]
                if all(r.done for r in records):
                    scores[point] = point_score([_value(r.valid_bpc) for r in records])
                else:
                    todo.extend(r for r in records if not r.done)
            if todo:
                return todo, False
            points = points_to_run(search, scores)
        return [], True

    def run(self, executor: Executor, progress: bool = True) -> int:
        """Run until every configuration is done; returns the exit code.

        Holds the sweep folder's lock throughout (a second driver on it is refused with
        ``FolderBusyError``), and reads the index afresh under it.
        """
        lock = FolderLock(self.options.out_dir)
        try:
            lock.acquire()
        except Exception:
            executor.shutdown()
            raise
        try:
            self.index = SweepIndex(self.index.path)
            return self._run(executor, progress)
        finally:
            lock.release()

    def _run(self, executor: Executor, progress: bool) -> int:
        running: dict[concurrent.futures.Future[TrialOutcome], TrialRecord] = {}
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        start = time.perf_counter()
        try:
            while True:
                busy = {r.trial for r in running.values()}
                finished = True
                for config in self.configurations.values():
                    todo, done = self._config_state(config)
                    finished = finished and done
                    for record in todo:
                        if record.trial in busy or not self._may_run(record):
                            continue
                        spec = self._spec(config, record)
                        record.state = "running"
                        self.index.put(record)
                        running[executor.submit(spec)] = record
                        busy.add(record.trial)
                if not running:
                    break
                completed, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in completed:
                    record = running.pop(future)
                    self._complete(record, future)
                    if progress:
                        print(
                            _progress_line(record, self.index, time.perf_counter() - start),
                            flush=True,
                        )
                    if record.state == "invalid":
                        # Shown whatever ``progress`` says: nothing else tells the user why
                        # the configuration stopped.
                        print(
                            f"configuration error in {record.trial}: {record.error}"
                            f" (its configuration {record.config} stops; see"
                            f" {record.out_dir}.log)",
                            flush=True,
                        )
        except KeyboardInterrupt:
            executor.shutdown()
            stopped = [r for r in self.index if r.state == "running"]
            for record in stopped:
                record.state = "interrupted"
            self.index.save()
            self.write_results()
            print(f"interrupted: {len(stopped)} running trial(s) recorded as interrupted")
            return EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
        executor.shutdown()
        self.write_results()
        if self.invalid_configs:
            return EXIT_USAGE
        failed = [r for r in self.index if r.state == "failed"]
        return EXIT_FAILED if failed else EXIT_OK

    def _may_run(self, record: TrialRecord) -> bool:
        """False for a configuration error, and once a crashing trial used up its retries
        (its configuration then stops)."""
        if record.state == "invalid":
            self.invalid_configs[record.config] = record.error
            return False
        if record.state == "failed" and record.crashes > self.options.retries:
            self.failed_configs.add(record.config)
            return False
        return True

    def _complete(
        self, record: TrialRecord, future: "concurrent.futures.Future[TrialOutcome]"
    ) -> None:
        try:
            outcome = future.result()
        except Exception as error:  # pylint: disable=broad-except
            # The executor itself broke (e.g. a Ray worker died): a crash of the trial.
            outcome = TrialOutcome(exit_code=EXIT_FAILED, summary=None, wall_seconds=0.0)
            outcome.error = repr(error)
        if outcome.exit_code is None:  # never started: as if it had never been submitted
            record.state = "pending" if record.attempts == 0 else "interrupted"
            self.index.put(record)
            return
        if outcome.launched:
            record.attempts += 1
        summary = outcome.summary or {}
        # An adopted run's time is its own record of it: this driver did not watch it run.
        record.wall_seconds = (
            outcome.wall_seconds if outcome.launched else summary.get("wall_seconds")
        )
        # The run's own figure excludes the compile call; a one-call run only has last_train's.
        record.tokens_per_second = summary.get("tokens_per_second") or (
            summary.get("last_train") or {}
        ).get("tokens_per_second")
        record.train_bpc = summary.get("train_bpc")
        record.test_bpc = summary.get("test_bpc")
        record.step = summary.get("step")
        record.error = outcome.error
        code = outcome.exit_code
        if code == EXIT_FINISHED and summary.get("status") == "finished":
            record.state = "finished"
            record.valid_bpc = summary.get("valid_bpc")
        elif code == EXIT_DIVERGED:
            record.state = "diverged"
            record.valid_bpc = record.test_bpc = math.inf
        elif code == EXIT_USAGE:
            record.state = "invalid"
            self.invalid_configs[record.config] = record.error
        elif code in _STOPPED_EXITS:
            record.state = "interrupted"  # resumed from its checkpoint by the next submission
        else:
            # A crash. Its folder moves aside first, so that if the driver dies right after,
            # the next attempt starts afresh rather than finding (and counting) it again.
            move_aside(record.out_dir)
            record.state = "failed"
            record.crashes += 1
            if record.crashes > self.options.retries:
                self.failed_configs.add(record.config)
        self.index.put(record)

    # -- outputs -------------------------------------------------------------------------------

    def write_results(self) -> None:
        """results.csv, table.md, the figures (and a transfer report) from every trial
        recorded so far (``report.write_outputs``)."""
        write_outputs(
            self.options.out_dir,
            self.definition,
            list(self.index),
            sorted(self.failed_configs),
            self.invalid_configs,
        )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _value(value: Optional[float]) -> float:
    return math.inf if value is None else float(value)


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data))


def _progress_line(record: TrialRecord, index: SweepIndex, elapsed: float) -> str:
    done = sum(1 for r in index if r.done)
    value = record.valid_bpc
    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else "-"
    wall = f"{record.wall_seconds:.0f}s" if record.wall_seconds is not None else "-"
    return (
        f"[{elapsed / 60:5.1f} min] {record.state:9s} {record.trial}  valid bpc {shown}"
        f"  ({wall}; {done} done)"
    )
