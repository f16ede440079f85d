"""One experiment: wiring (settings -> data -> model and its scheme -> trainer -> trackers)
plus a list of periodic hooks (``scmm.experiments.hooks``) run between compiled chunks.

Outputs in the run folder (README, "Outputs"): ``settings.json``, ``parameters.json``,
``log.jsonl``, ``summary.json``, ``training_curves.png``, ``checkpoints/{last,best}.npz`` and,
unless ``output.wandb=off``, a ``wandb/`` folder. Exit
codes (``scmm.exit_codes``): 0 finished, 1 failed, 2 bad input (nothing computed), 3 diverged
(a non-finite loss or weight, or a loss above the divergence limit), 4 folder in use, 130
interrupted (checkpoint written at the step it stopped).
"""

import dataclasses
import os
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Optional

from .. import datasets
from ..folder_lock import FolderLock
from ..io import write_json
from ..parameters import ParameterTable
from ..pedal.settings import writes_outputs
from ..training import NonFiniteError
from . import checkpoints, diagnostics, failures
from .checkpoints import CheckpointError
from .hooks import Hook, chunk_length, run_due
from .interrupts import Interrupts, StopRequested
from .progress import Progress
from .resume import ResumePoint, record_refusal
from .setup import build
from .reporting import (
    Throughput,
    chunk_metrics,
    header_line,
    parameters_record,
    print_summary,
    run_exit_code,
    stats_record,
    summary_record,
    write_training_curves,
)
from .settings import ExperimentSettings, to_dict
from .trackers import CompositeTracker, open_trackers, repair_log, write_outcome


class Experiment:  # pylint: disable=too-many-instance-attributes
    """Set up in ``__init__`` (errors there are bad input, nothing computed); ``run()`` trains.

    The run folder is locked (``scmm.folder_lock``) from the start of ``__init__`` until
    ``run()`` returns (or the process dies): a second run or resume on it is refused.

    Under ``execution.strategy multi_worker`` only the chief (TF_CONFIG) locks and writes the
    folder (log, checkpoints, summary, plots, WandB); the other workers train alongside it,
    write nothing, and on ``--resume`` read the chief's checkpoint from the same folder (one
    machine, or a file system every worker shares).
    """

    def __init__(
        self,
        settings: ExperimentSettings,
        out_dir: str,
        resume: bool = False,
        resume_from: str = "last",
    ):
        settings.validate()
        self.out_dir = out_dir
        self.resume = resume
        self.writes = writes_outputs(settings.execution)
        created = not os.path.exists(out_dir)
        self.lock: Optional[FolderLock] = FolderLock(out_dir).acquire() if self.writes else None
        try:
            self._set_up(settings, resume_from)
        except CheckpointError as error:  # damaged or foreign: say so in the folder too
            if self.writes:
                record_refusal(self.out_dir, str(error))
            self._release(remove_if_empty=created)
            raise
        except BaseException:
            self._release(remove_if_empty=created)
            raise

    def _set_up(self, settings: ExperimentSettings, resume_from: str) -> None:
        parts = build(settings, self.out_dir, self.resume, resume_from, self.writes)
        self.settings, self.dataset, self.execution = parts.settings, parts.dataset, parts.execution
        self.model, self.trainer, self.stream = parts.model, parts.trainer, parts.stream
        self.checkpointer, self.start, self.ended = parts.checkpointer, parts.start, parts.ended
        self.best_valid_loss = float("inf")
        self.best_step: Optional[int] = None
        self.throughput = Throughput()
        self.last_metrics: dict[str, float] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.divergence: dict[str, Any] = {}
        self.started = time.time()
        self.tracker: Optional[CompositeTracker] = None
        self.progress: Optional[Progress] = None
        self.interrupts = Interrupts(notice=self._notice)
        self.out_of_memory = False
        self.hooks = self._hooks()

    def _release(self, remove_if_empty: bool = False) -> None:
        if self.lock is None:
            return  # a multi_worker task that is not the chief: it holds and wrote nothing
        self.lock.release()
        if remove_if_empty and os.listdir(self.out_dir) == [".lock"]:
            shutil.rmtree(self.out_dir, ignore_errors=True)  # a refused new run leaves nothing

    def _hooks(self) -> list[Hook]:
        """The periodic actions, in the order they run after a chunk."""
        interval = self.settings.training.valid_interval
        hooks = [
            Hook("progress", 1, self._show_progress, ends_chunk=False),
            Hook("validation", interval, self._validate, at_end=True),
        ]
        if self.settings.output.analyse == "validation":
            hooks.append(Hook("analysis", interval, self._analyse, at_end=True))
        return hooks

    @property
    def parameters(self) -> ParameterTable:
        """The model's per-parameter table (multipliers, gradient factors)."""
        return self.model.parameters

    # Outputs ---------------------------------------------------------------------------------

    def _notice(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def _log(self, kind: str, step: int, **metrics: Any) -> None:
        assert self.tracker is not None
        self.tracker.log({"kind": kind, "step": step, **metrics})

    def _run_state(self) -> dict[str, Any]:
        """The run's own part of a checkpoint (the checkpointer adds model, optimiser, data)."""
        assert self.tracker is not None
        valid = self.results.get("valid")
        return {
            "best_valid_loss": self.best_valid_loss,
            "best_step": self.best_step,
            "throughput": dataclasses.asdict(self.throughput),
            # How much of log.jsonl belongs to this checkpoint: a resume cuts it back to that.
            "log_lines": self.tracker.log_lines,
            "valid": {"step": self.valid_step, **valid} if valid else None,
        }

    def _save_checkpoint(self, improved: bool) -> None:
        if not self.writes:
            return
        self.checkpointer.save(improved, self._run_state())

    def _restore(self, point: ResumePoint) -> int:
        state = self.checkpointer.restore(point)
        self.best_valid_loss = float(state["best_valid_loss"])
        self.best_step = state.get("best_step")
        self.throughput = Throughput(**state["throughput"])
        valid = state.get("valid")
        if valid and valid.get("step") == point.step:  # validated at the checkpoint's step
            self.valid_step = point.step
            self.results["valid"] = {k: v for k, v in valid.items() if k != "step"}
        return point.step

    def _write_parameters(self) -> None:
        if not self.writes:
            return
        training = self.settings.training
        record = parameters_record(
            self.parameters, training.optimiser, self.model.scheme.name, training.weight_decay_mode
        )
        write_json(os.path.join(self.out_dir, "parameters.json"), record)

    # Training --------------------------------------------------------------------------------

    valid_step: Optional[int] = None

    def _evaluate(self, split: str, step: int, limit: Optional[int] = None) -> dict[str, float]:
        ids = self.dataset.splits[split]
        if limit is not None:
            ids = ids[:limit]
        batches = datasets.eval_batches(
            ids,
            self.settings.training.batch_sequences,
            self.settings.data.sequence_length,
            self.settings.data.overlap_length,
        )
        result = self.trainer.evaluate(batches)
        self.results[split] = result
        if split == "valid":
            self.valid_step = step
        kind = "eval_train" if split == "train" else f"eval_{split}"
        self._log(kind, step, **result)
        return result

    def _calibrate(self) -> None:
        """The scheme's init-time calibration on a batch of its own (before anything traces)."""
        batch = diagnostics.fixed_batch(self.dataset, self.settings, "calibration")
        with self.execution.scope():  # measured on the whole (global) batch, not split
            metrics = self.execution.once(
                self.model.scheme.calibrate, self.model, batch, self.parameters
            )
        self._log("calibration", 0, **metrics)

    def _analyse(self, step: int) -> None:
        """Scale statistics on a fixed training batch -> scales.json (all steps) and scales.png
        (the chief's alone: local arithmetic, no collectives, so the others skip it)."""
        if not self.writes:
            return
        batch = diagnostics.fixed_batch(self.dataset, self.settings, "analysis")
        title = f"{self.settings.metadata.name or os.path.basename(self.out_dir)}: tensor scales"
        with self.execution.scope():
            metrics = self.execution.once(
                diagnostics.analyse,
                self.model,
                batch,
                step,
                self.out_dir,
                title,
                self.parameters.gradient_factors(),
            )
        self._log("analysis", step, **metrics)

    def _train_chunk(self, count: int, seen_counts: set[int]) -> dict[str, float]:
        batch = self.stream.next(count)
        if count not in seen_counts:
            xla = " with XLA" if self.settings.execution.xla else ""
            self._notice(f"compiling the training step{xla} ({count} steps per call)…")
        start = time.time()
        results = self.trainer.train(batch)
        elapsed = time.time() - start
        metrics = chunk_metrics(results, elapsed)
        if count in seen_counts:
            self.throughput.tokens += metrics["tokens"]
            self.throughput.seconds += elapsed
        else:  # this call traced and compiled the loop for a new count
            seen_counts.add(count)
            self.throughput.compile_seconds += elapsed
        self.last_metrics = metrics
        self._log("train_step", self.trainer.step, **metrics)
        return metrics

    def _shown(self) -> dict[str, float]:
        """The last chunk's metrics a progress line shows."""
        names = {"loss": "loss", "bpc": "bpc", "tok/s": "tokens_per_second"}
        return {
            shown: self.last_metrics[key]
            for shown, key in names.items()
            if key in self.last_metrics
        }

    def _show_progress(self, step: int) -> None:
        assert self.progress is not None
        self.progress.update(step, self._shown())

    def _validate(self, step: int) -> None:
        """Validation loss, then the checkpoint (best.npz when it improved)."""
        valid = self._evaluate("valid", step)
        # The best is by the unweighted cross-entropy (BPC's), the loss itself under weighting
        # none: best_valid_loss and best_valid_bpc stay comparable across loss weightings.
        score = valid.get("xentropy", valid["loss"])
        improved = score < self.best_valid_loss
        if improved:
            self.best_valid_loss, self.best_step = score, step
        self._save_checkpoint(improved)
        assert self.progress is not None
        self.progress.message(f"step {step}: valid bpc {valid['bpc']:.4f}")
        self.progress.update(step, {**self._shown(), "valid_bpc": valid["bpc"]}, force=True)

    def _loop(self) -> None:
        training = self.settings.training
        seen_counts: set[int] = set()
        step = self.trainer.step
        self.interrupts.check()
        while step < training.steps:
            count = chunk_length(step, training.steps, training.iterations_per_loop, self.hooks)
            self._train_chunk(count, seen_counts)
            step = self.trainer.step
            run_due(self.hooks, step, training.steps)
            self.interrupts.check()  # weights, optimiser, stream and step agree here

    def _summary(self, status: str) -> dict[str, Any]:
        step = self.divergence["step"] - 1 if self.divergence else self.trainer.step
        return summary_record(
            status,
            step,
            self.results,
            self.throughput,
            wall_seconds=time.time() - self.started,
            parameters=self.model.parameter_count(),
            best_valid_loss=self.best_valid_loss,
            last_train=self.last_metrics,
            **({"diverged": self.divergence} if self.divergence else {}),
            out_dir=os.path.abspath(self.out_dir),
        )

    def _finish(self, status: str, error: Optional[str] = None) -> dict[str, Any]:
        summary = self._summary(status)
        if self.trainer.sparse is not None:
            # Per sparse kernel: density, active blocks, fraction of blocks ever active.
            summary["sparsity"] = self.trainer.sparse.summary()
        if error:
            summary["error"] = error
        assert self.tracker is not None
        if self.writes:
            write_outcome(self.out_dir, self.tracker, summary)
            write_training_curves(self.out_dir, self.settings.metadata.name)
        return summary

    def _begin(self) -> int:
        """Open the folder for writing: restore, cut the log back, settings and header."""
        start_step = 0
        log_path = os.path.join(self.out_dir, "log.jsonl")
        if not self.writes:  # a multi_worker task that is not the chief: read, never write
            if self.start is not None:
                start_step = self._restore(self.start)
            self.tracker = CompositeTracker([])
            task = self.execution.description
            print(f"{task}: training with the chief; it alone writes {self.out_dir}")
            return start_step
        if self.resume:
            for path in checkpoints.remove_temporaries(self.out_dir):  # we hold the lock
                self._notice(f"removed {path} (left by an interrupted write)")
            if self.start is not None:
                self.checkpointer.tidy_for_resume(self.start, self._notice)
                start_step = self._restore(self.start)
            keep = self.start.state.get("log_lines") if self.start is not None else 0
            for note in repair_log(log_path, keep, start_step).notes():
                self._notice(note)
        write_json(os.path.join(self.out_dir, "settings.json"), to_dict(self.settings))
        self.dataset.vocab.save(os.path.join(self.out_dir, "vocab.json"))  # sampling needs it
        self.tracker = open_trackers(self.settings, self.out_dir, self.resume)
        print(header_line(self.settings, self.model.parameter_count(), self.dataset, self.out_dir))
        if self.start is not None:
            self._notice(f"resuming from step {start_step} ({self.start.path})")
            self._log("resume", start_step)
        else:  # a new run, or one killed before its first checkpoint: it starts over
            if self.resume:
                self._notice("no checkpoint yet: starting again from step 0")
            self._log("settings", 0, settings=to_dict(self.settings))
            parameters, device = self.model.parameter_count(), self.execution.description
            self._log("stats", 0, **stats_record(parameters, self.dataset, self.settings, device))
        return start_step

    def run(self) -> int:
        """Train, evaluate, write outputs; returns the process exit code."""
        try:
            if self.ended is not None:
                status = self.ended["status"]
                print(
                    f"{self.out_dir}: the run already {status} at step {self.ended.get('step')}"
                    " (summary.json); nothing to resume"
                )
                return run_exit_code(status)
            if threading.current_thread() is threading.main_thread():
                with self.interrupts:
                    return self._run()
            return self._run()
        finally:
            self._release()

    def _run(self) -> int:
        start_step = self._begin()
        self.progress = progress = Progress(
            self.settings.output.progress,
            self.settings.training.steps,
            start_step,
            self.settings.output.progress_interval,
        )
        status, error_line = "finished", None
        try:
            if self.model.scheme.calibrates and start_step == 0:
                self._calibrate()
            self._write_parameters()
            if self.settings.output.analyse != "off" and start_step == 0:
                self._analyse(0)
            self._loop()
            step = self.trainer.step
            if "valid" not in self.results:
                self._evaluate("valid", step)
            self.interrupts.check()
            self._evaluate("train", step, limit=self.settings.output.train_eval_chars)
            self.interrupts.check()
            self._evaluate("test", step)
        except NonFiniteError as error:
            status = "diverged"
            self._record_divergence(error)
        except StopRequested as stop:
            status = "interrupted"
            self._save_checkpoint(improved=False)
            self._log("interrupted", self.trainer.step, signal=str(stop), checkpoint=True)
        except KeyboardInterrupt:
            status = "interrupted"
            self._log("interrupted", self.trainer.step, signal="second signal", checkpoint=False)
        except Exception as error:  # pylint: disable=broad-except
            status, error_line = "failed", self._record_failure(error)
        finally:
            progress.close()
        summary = self._finish(status, error_line)
        print_summary(summary)
        if status == "interrupted":
            print(f"resume with: python run_experiment.py --resume {self.out_dir}")
        if error_line:
            print(f"error: {error_line}", file=sys.stderr)
        return run_exit_code(status)

    def _record_divergence(self, error: NonFiniteError) -> None:
        # The trainer reports the last finite step inside the failing call: keep it (when the
        # first call diverges, last_train is empty and this is all there is).
        last_finite = {"step": error.step - 1, **error.metrics} if error.metrics else {}
        self.divergence = {"step": error.step, "tensor": error.tensor, "last_finite": last_finite}
        self._log(
            "diverged", error.step, tensor=error.tensor, message=str(error), last_finite=last_finite
        )
        assert self.progress is not None
        self.progress.message(f"diverged: {error}")

    def _record_failure(self, error: Exception) -> str:
        """Log an ``error`` record; a traceback only for what is not a known resource limit."""
        training = self.settings.training
        batch = f"batch {training.batch_sequences} x {self.settings.data.sequence_length}"
        line = failures.one_line(error, batch)
        lost = self.settings.execution.strategy == "multi_worker" and failures.is_worker_lost(error)
        if lost:
            line = failures.worker_lost_line(error, self.out_dir)
        self.out_of_memory = failures.is_out_of_memory(error)
        if not (self.out_of_memory or failures.is_disk_full(error) or lost):
            traceback.print_exc()
        try:
            self._log("error", self.trainer.step, message=line)
        except OSError:
            pass  # a full disk: the summary (if it fits) and the error line still say it
        return line
