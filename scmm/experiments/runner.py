"""One experiment: wiring (settings -> data -> model and its scheme -> trainer -> trackers)
plus a list of periodic hooks (``scmm.experiments.hooks``) run between compiled chunks.

Outputs in the run folder: ``settings.json`` (the full resolved tree), ``parameters.json``
(every parameter's path, shape, role, fan-in, multipliers and effective learning rate),
``log.jsonl`` (one record per line), ``summary.json`` (final metrics and status),
``checkpoints/{last,best}.npz`` and, unless ``output.wandb=off``, a ``wandb/`` folder. Exit
codes: 0 finished, 1 failed, 2 bad input (nothing computed), 3 diverged (a non-finite loss or
weight).
"""

import dataclasses
import os
import secrets
import time
import traceback
from typing import Any, Optional


from .. import datasets
from ..exit_codes import EXIT_DIVERGED, EXIT_FAILED, EXIT_FINISHED
from ..io import write_json
from ..models import CharLM
from ..parameters import ParameterTable
from ..pedal import Execution, split_seed
from ..training import NonFiniteError, Trainer, bits_per_character
from . import checkpoints, diagnostics
from .hooks import Hook, chunk_length, run_due
from .progress import Progress
from .reporting import Throughput, chunk_metrics, parameters_record, print_summary
from .settings import ExperimentSettings, to_dict
from .trackers import Tracker, open_trackers, truncate_log


def default_out_dir(settings: ExperimentSettings) -> str:
    """``out/<YYYYmmdd-HHMMSS>-<preset or name>``."""
    label = settings.metadata.name or settings.preset or "run"
    return os.path.join("out", f"{time.strftime('%Y%m%d-%H%M%S')}-{label}")


def resolve_seeds(settings: ExperimentSettings) -> ExperimentSettings:
    """Draw the master seed if unset and derive the model seed, so the run can be repeated."""
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    model_seed = settings.model.seed
    if model_seed is None:
        model_seed = split_seed(seed, "model")
    return dataclasses.replace(
        settings, seed=seed, model=dataclasses.replace(settings.model, seed=model_seed)
    )


class Experiment:  # pylint: disable=too-many-instance-attributes
    """Set up in ``__init__`` (errors there are bad input); ``run()`` trains."""

    def __init__(self, settings: ExperimentSettings, out_dir: str, resume: bool = False):
        settings.validate()
        self.out_dir = out_dir
        self.resume = resume
        if not resume and os.path.exists(os.path.join(out_dir, "settings.json")):
            raise FileExistsError(
                f"--out {out_dir!r} already holds a run; use --resume {out_dir} to continue it"
                " or choose another folder"
            )
        self.settings = resolve_seeds(settings)
        self.dataset = datasets.load_dataset(self.settings.data)
        self._set_vocab_size()
        self.execution = Execution(self.settings.execution)
        assert self.settings.seed is not None
        with self.execution.scope():
            self.model = CharLM(self.settings.model)  # the scheme comes with the model
            self.trainer = Trainer(
                self.model,
                self.settings.training,
                self.execution,
                self.model.parameters,
                weights=self.settings.model.weights,
                seed=split_seed(self.settings.seed, "rounding"),
                vocab_size=self.settings.model.vocab_size,
            )
        self.stream = datasets.TrainBatchStream(
            self.dataset.splits["train"],
            self.settings.training.batch_sequences,
            self.settings.data.sequence_length,
            self.settings.data.overlap_length,
            seed=split_seed(self.settings.seed, "data"),
        )
        self.best_valid_loss = float("inf")
        self.throughput = Throughput()
        self.last_metrics: dict[str, float] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.divergence: dict[str, Any] = {}
        self.started = time.time()
        self.tracker: Optional[Tracker] = None
        self.progress: Optional[Progress] = None
        self.hooks = self._hooks()

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

    def _set_vocab_size(self) -> None:
        vocab = self.dataset.vocab.size
        wanted = self.settings.model.vocab_size
        if wanted not in (0, vocab):
            raise ValueError(
                f"model.vocab_size={wanted} but the data's vocabulary has {vocab} characters"
                " (expected 0 to take it from the data, or equal)"
            )
        model = dataclasses.replace(self.settings.model, vocab_size=vocab)
        self.settings = dataclasses.replace(self.settings, model=model)

    # Outputs ---------------------------------------------------------------------------------

    def _log(self, kind: str, step: int, **metrics: Any) -> None:
        assert self.tracker is not None
        self.tracker.log({"kind": kind, "step": step, **metrics})

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "step": self.trainer.step,
            "stream": self.stream.state(),
            "best_valid_loss": self.best_valid_loss,
            "seed": self.settings.seed,
            "throughput": dataclasses.asdict(self.throughput),
            "scheme": self.model.scheme.state(self.parameters),
        }

    def _save_checkpoint(self, improved: bool) -> None:
        folder = checkpoints.checkpoint_dir(self.out_dir)
        write_json(os.path.join(folder, "settings.json"), to_dict(self.settings))
        model_arrays = self.model.get_weight_arrays()
        optimiser_arrays = self.trainer.state_arrays()
        state = self._checkpoint_state()
        checkpoints.save(os.path.join(folder, "last.npz"), model_arrays, optimiser_arrays, state)
        if improved and self.settings.output.keep_best:
            checkpoints.save(
                os.path.join(folder, "best.npz"), model_arrays, optimiser_arrays, state
            )

    def _restore(self) -> int:
        path = checkpoints.latest(self.out_dir)
        if path is None:
            return 0  # killed before the first checkpoint: start again from step 0
        model_arrays, optimiser_arrays, state = checkpoints.load(path)
        self.model.set_weight_arrays(model_arrays)
        self.trainer.set_state_arrays(optimiser_arrays)
        self.stream.set_state(state["stream"])
        self.best_valid_loss = float(state["best_valid_loss"])
        self.throughput = Throughput(**state["throughput"])
        if "scheme" in state:
            self.model.scheme.restore(self.parameters, state["scheme"])
        elif "weight_gradient_factors" in state:  # a checkpoint written before schemes
            self.parameters.set_gradient_factors(state["weight_gradient_factors"])
        return int(state["step"])

    def _write_parameters(self) -> None:
        record = parameters_record(
            self.parameters, self.settings.training.optimiser, self.model.scheme.name
        )
        write_json(os.path.join(self.out_dir, "parameters.json"), record)

    # Training --------------------------------------------------------------------------------

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
        kind = "eval_train" if split == "train" else f"eval_{split}"
        self._log(kind, step, **result)
        return result

    def _calibrate(self) -> None:
        """The scheme's init-time calibration on a batch of its own (before anything traces)."""
        batch = diagnostics.fixed_batch(self.dataset, self.settings, "calibration")
        with self.execution.scope():
            metrics = self.model.scheme.calibrate(self.model, batch, self.parameters)
        self._log("calibration", 0, **metrics)

    def _analyse(self, step: int) -> None:
        """Scale statistics on a fixed training batch -> scales.json (all steps) and scales.png."""
        batch = diagnostics.fixed_batch(self.dataset, self.settings, "analysis")
        title = f"{self.settings.metadata.name or os.path.basename(self.out_dir)}: tensor scales"
        with self.execution.scope():
            metrics = diagnostics.analyse(
                self.model, batch, step, self.out_dir, title, self.parameters.gradient_factors()
            )
        self._log("analysis", step, **metrics)

    def _train_chunk(self, count: int, seen_counts: set[int]) -> dict[str, float]:
        batch = self.stream.next(count)
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
        metrics = self.last_metrics
        return {
            "loss": metrics["loss"],
            "bpc": metrics["bpc"],
            "tok/s": metrics["tokens_per_second"],
        }

    def _show_progress(self, step: int) -> None:
        assert self.progress is not None
        self.progress.update(step, self._shown())

    def _validate(self, step: int) -> None:
        """Validation loss, then the checkpoint (best.npz when it improved)."""
        valid = self._evaluate("valid", step)
        improved = valid["loss"] < self.best_valid_loss
        self.best_valid_loss = min(self.best_valid_loss, valid["loss"])
        self._save_checkpoint(improved)
        assert self.progress is not None
        self.progress.message(f"step {step}: valid bpc {valid['bpc']:.4f}")
        self.progress.update(step, {**self._shown(), "valid_bpc": valid["bpc"]}, force=True)

    def _loop(self) -> None:
        training = self.settings.training
        seen_counts: set[int] = set()
        step = self.trainer.step
        while step < training.steps:
            count = chunk_length(step, training.steps, training.iterations_per_loop, self.hooks)
            self._train_chunk(count, seen_counts)
            step = self.trainer.step
            run_due(self.hooks, step, training.steps)

    def _summary(self, status: str) -> dict[str, Any]:
        step = self.divergence["step"] - 1 if self.divergence else self.trainer.step
        summary: dict[str, Any] = {"status": status, "step": step}
        for split in ("train", "valid", "test"):
            if split in self.results:
                summary[f"{split}_loss"] = self.results[split]["loss"]
                summary[f"{split}_bpc"] = self.results[split]["bpc"]
        summary.update(
            tokens_per_second=self.throughput.tokens_per_second,
            compile_seconds=self.throughput.compile_seconds,
            wall_seconds=time.time() - self.started,
            parameters=self.model.parameter_count(),
            best_valid_loss=self.best_valid_loss,
            best_valid_bpc=bits_per_character(self.best_valid_loss),
            last_train=self.last_metrics,
            **({"diverged": self.divergence} if self.divergence else {}),
            out_dir=os.path.abspath(self.out_dir),
        )
        return summary

    def _finish(self, status: str) -> dict[str, Any]:
        summary = self._summary(status)
        write_json(os.path.join(self.out_dir, "summary.json"), summary)
        assert self.tracker is not None
        self.tracker.summary(summary)
        self.tracker.finish(status)
        return summary

    def run(self) -> int:
        """Train, evaluate, write outputs; returns the process exit code."""
        os.makedirs(self.out_dir, exist_ok=True)
        start_step = 0
        if self.resume:
            start_step = self._restore()
            truncate_log(os.path.join(self.out_dir, "log.jsonl"), start_step)
        write_json(os.path.join(self.out_dir, "settings.json"), to_dict(self.settings))
        self.tracker = open_trackers(self.settings, self.out_dir, self.resume)
        if self.resume:
            self._log("resume", start_step)
        else:
            self._log("settings", 0, settings=to_dict(self.settings))
            self._log("stats", 0, **self._stats())
        self.progress = progress = Progress(
            self.settings.output.progress,
            self.settings.training.steps,
            start_step,
            self.settings.output.progress_interval,
        )
        status, code = "finished", EXIT_FINISHED
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
            self._evaluate("train", step, limit=self.settings.output.train_eval_chars)
            self._evaluate("test", step)
        except NonFiniteError as error:
            status, code = "diverged", EXIT_DIVERGED
            # The trainer reports the last finite step inside the failing call: keep it (when
            # the first call diverges, last_train is empty and this is all there is).
            last_finite = {"step": error.step - 1, **error.metrics} if error.metrics else {}
            self.divergence = {
                "step": error.step,
                "tensor": error.tensor,
                "last_finite": last_finite,
            }
            self._log(
                "diverged",
                error.step,
                tensor=error.tensor,
                message=str(error),
                last_finite=last_finite,
            )
            progress.message(f"diverged: {error}")
        except KeyboardInterrupt:
            status, code = "failed", EXIT_FAILED
            self._log("error", self.trainer.step, message="interrupted (KeyboardInterrupt)")
        except Exception as error:  # pylint: disable=broad-except
            status, code = "failed", EXIT_FAILED
            self._log("error", self.trainer.step, message=f"{type(error).__name__}: {error}")
            traceback.print_exc()
        finally:
            progress.close()
        summary = self._finish(status)
        print_summary(summary)
        return code

    def _stats(self) -> dict[str, Any]:
        return {
            "parameters": self.model.parameter_count(),
            "vocab_size": self.dataset.vocab.size,
            "data": self.dataset.description,
            **{f"{k}_chars": int(len(v)) for k, v in self.dataset.splits.items()},
            "device": self.execution.description,
            "seed": self.settings.seed,
        }
