"""Compiled training and evaluation of any model that follows the language-model protocol.

The trainer knows a protocol, not a class: ``model(tokens, mask)`` returns a mapping with a
scalar ``"loss"`` (what is minimised), ``"n_tokens"`` (how many tokens it averages) and any
other scalars, all of which are recorded per step; ``model.trainable_weights`` are trained,
with multipliers and gradient factors read by path from the per-parameter table (the one
passed in, else the model's ``parameters`` table if it has one, else every multiplier 1).

``Trainer.train(batch)`` runs ``k`` optimiser steps inside one compiled call, where the batch
arrays are shaped (k, sequences, sequence_length): the CPU/GPU counterpart of the IPU's
iterations-per-loop, which removes the per-step Python and dispatch overhead. Under a
replicated backend (``execution.strategy`` mirrored) each step's global batch is split over
the replicas by sequences, consecutively and deterministically (so exact resume holds), and
the replicas' gradients and metrics are combined into the global batch's
(``scmm.training.replicas``): the update does not depend on the split. Per-step
metrics come back as arrays of length k and are checked on the host: a non-finite loss or
weight is divergence, and so is a finite loss above ``training.divergence_loss`` x ln V when the
vocabulary size V is given (a float32 run can explode to 1e13 and stay finite).
"""

import math
from typing import Any, Generic, Iterable, Mapping, Optional, Protocol, Sequence, TypeVar

import numpy as np
import tensorflow as tf

from ..ops.kernels import apply_gradient_factors
from ..parameters import Parameter, ParameterTable
from ..pedal import Execution, split_seed
from ..precision_settings import WeightStorage
from ..sparsity.training import STATE_PREFIX as SPARSITY_STATE
from ..sparsity.training import SparseTraining
from ..uscale.batch_split import batch_split
from .accumulation import accumulated_gradients, loss_reduction
from .clipping import CLIPPING_METRICS, clip_gradients, metric_names
from .loss_scaling import LossScaler
from .optimisers import Optimiser
from .replicas import combine_replicas
from .settings import TrainingSettings

# Recorded by the trainer itself, beside whatever scalars the model returns: these, and those
# clipping metrics that training.clipping.mode gives (scmm/training/clipping.py).
STEP_METRICS = ("learning_rate", "loss_scale", "skipped")
TRAINER_METRICS = (*STEP_METRICS, *CLIPPING_METRICS)


class LanguageModel(Protocol):
    """What the trainer needs of a model."""

    @property
    def trainable_weights(self) -> list[Any]:
        """The variables to train (Keras variables with stable ``.path``)."""

    def __call__(self, tokens: tf.Tensor, mask: tf.Tensor) -> Mapping[str, tf.Tensor]:
        """{"loss": scalar, "n_tokens": scalar, ...other scalars} for one batch.

        A model whose ``stochastic`` attribute is true (dropout) is called in training steps
        as ``model(tokens, mask, training=True, seed=seed)``, ``seed`` a stateless (2,) int32
        seed from the trainer's seed, the optimiser step and the micro-batch (``dropout_seed``):
        the same step replays the same masks, so a resumed run is exact.
        """


def uniform_table(variables: Sequence[Any]) -> ParameterTable:
    """A table for a model that declares no parameter facts: every multiplier and factor 1."""
    return ParameterTable(
        Parameter(path=v.path, shape=tuple(int(d) for d in v.shape), role="weight")
        for v in variables
    )


ModelT = TypeVar("ModelT", bound=LanguageModel)


class NonFiniteError(FloatingPointError):
    """Training diverged: a loss or weight became NaN/inf, or the loss passed the divergence
    limit; ``step`` (1-based) and ``tensor`` say where, ``metrics`` are the last good step's."""

    def __init__(
        self,
        step: int,
        tensor: str,
        metrics: Optional[dict[str, float]] = None,
        message: Optional[str] = None,
    ):
        super().__init__(message or f"non-finite {tensor} at step {step}")
        self.step = step
        self.tensor = tensor
        self.metrics = metrics or {}


def divergence_limit(settings: TrainingSettings, vocab_size: Optional[int]) -> Optional[float]:
    """The training loss above which a run has diverged: ``divergence_loss`` x ln V, the
    uniform-prediction loss. None (no limit) without a vocabulary size or a multiple."""
    if vocab_size is None or settings.divergence_loss is None:
        return None
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return settings.divergence_loss * math.log(vocab_size)


def bits_per_character(loss: float) -> float:
    """Cross-entropy in nats per character -> bits per character."""
    return loss / math.log(2)


class Trainer(Generic[ModelT]):
    """Owns the optimiser and the compiled train/eval functions for one model."""

    def __init__(  # pylint: disable=too-many-arguments
        self,
        model: ModelT,
        settings: TrainingSettings,
        execution: Execution,
        parameters: Optional[ParameterTable] = None,
        weights: WeightStorage = "master",
        seed: int = 0,
        vocab_size: Optional[int] = None,
    ):
        """`vocab_size` (the model's output classes) sets the divergence limit on the loss
        (``divergence_limit``); without it only non-finite values are divergence."""
        settings.validate()
        self.model = model
        self.settings = settings
        self.execution = execution
        self.variables = list(model.trainable_weights)
        loss_reduction(model)  # a bad declaration fails here, before any compute
        if parameters is None:
            own = getattr(model, "parameters", None)
            parameters = own if isinstance(own, ParameterTable) else uniform_table(self.variables)
        self.parameters = parameters
        self.vocab_size = vocab_size
        self._dropout_stream = split_seed(seed, "dropout")
        self.loss_limit = divergence_limit(settings, vocab_size)
        self._check_replicas(settings, execution.replicas)
        with execution.scope():
            self.optimiser: Optimiser = settings.optimiser.build(
                self.variables,
                parameters,
                weights=weights,
                seed=seed,
                weight_decay_mode=settings.weight_decay_mode,
                total_steps=settings.steps,
            )
            self.loss_scaler = LossScaler(settings)
            self.sparse: Optional[SparseTraining] = None
            if settings.sparsity.enabled:
                self.sparse = SparseTraining(
                    model, self.variables, parameters, settings.sparsity, settings.steps
                )
        self._metric_names: Optional[tuple[str, ...]] = None
        # Forward and backward of one (micro-)batch: XLA on its own under replicas (the
        # whole loop is XLA on one device; see scmm.pedal.execution).
        self._part = execution.replica_part(self._part_gradients)
        self._train_loop = execution.compile_replicated(self._train_loop_fn)
        self._gradients: Optional[Any] = None
        self._eval_step = execution.compile(self._eval_step_fn)

    @staticmethod
    def _check_replicas(settings: TrainingSettings, replicas: int) -> None:
        """Refuse, before any compute, what a replicated step cannot do."""
        if replicas == 1:
            return
        if settings.sparsity.enabled:
            raise ValueError(
                f"sparse training (training.sparsity) does not run under {replicas} replicas"
                " yet; use --execution.strategy one"
            )
        if settings.loss_scaling == "dynamic":
            # A skipped step is a tf.cond around the optimiser update, and tf.distribute
            # cannot synchronise mirrored variables inside a replica's control flow.
            raise ValueError(
                f"training.loss_scaling dynamic does not run under {replicas} replicas yet;"
                " use a static training.loss_scale or --execution.strategy one"
            )
        parts = replicas * settings.accumulation_steps
        if settings.batch_sequences % parts:
            raise ValueError(
                f"training.batch_sequences {settings.batch_sequences} does not split into"
                f" {replicas} replicas x {settings.accumulation_steps} micro-batches"
                " (equal parts)"
            )

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return int(self.optimiser.step.numpy())

    # Compiled bodies -------------------------------------------------------------------------

    def dropout_seed(self, part: int = 0) -> tf.Tensor:
        """The stateless seed of micro-batch ``part`` of the coming step in this replica:
        (2,) int32, one counter per (step, replica, micro-batch), so no two parts of the
        global batch share a mask stream."""
        parts = self.settings.accumulation_steps
        replica = tf.distribute.get_replica_context()
        index = 0 if replica is None else replica.replica_id_in_sync_group
        counter = tf.cast(self.optimiser.step, tf.int32) * (self.execution.replicas * parts)
        counter += tf.cast(index, tf.int32) * parts + part
        return tf.stack([tf.constant(self._dropout_stream, tf.int32), counter])

    def _part_gradients(
        self, tokens: tf.Tensor, mask: tf.Tensor, part: int = 0
    ) -> tuple[dict[str, Any], list]:
        """The model's outputs and the gradients of its scaled loss on one (micro-)batch."""
        with tf.GradientTape() as tape:
            if getattr(self.model, "stochastic", False):
                model: Any = self.model  # the protocol's optional stochastic form
                call = model(tokens, mask, training=True, seed=self.dropout_seed(part))
            else:
                call = self.model(tokens, mask)
            outputs = dict(call)
            scaled_loss = self.loss_scaler.scale_loss(outputs["loss"])
        # Gradient factors (a cut edge, e.g. calibration) are read from the table when the step
        # is traced, and applied as the gradients come off the tape, before unscaling.
        grads = apply_gradient_factors(
            self.variables,
            tape.gradient(scaled_loss, self.variables),
            self.parameters.gradient_factors(),
        )
        return outputs, grads

    def _global_gradients(self, tokens: tf.Tensor, mask: tf.Tensor) -> tuple[dict[str, Any], list]:
        """Inside a replica: the global batch's outputs and (loss-scaled) gradients."""
        parts = self.settings.accumulation_steps
        replicas = self.execution.replicas
        reduction = loss_reduction(self.model)
        # Runs inside the replica (its own thread under tf.distribute): every rows^-1/2 of
        # the unit-scaled ops counts the global batch's rows, replicas x micro-batches.
        with batch_split(replicas):
            if parts == 1:
                outputs, grads = self._part(tokens, mask)
            else:
                outputs, grads = accumulated_gradients(
                    self._part, tokens, mask, parts, reduction, self.settings.accumulation_mode
                )
        return combine_replicas(outputs, grads, reduction, self.execution.all_sum, replicas)

    def _train_step_fn(self, tokens: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        scaler = self.loss_scaler
        scale = tf.identity(scaler.scale)  # the scale this step used (before any update)
        outputs, grads = self._global_gradients(tokens, mask)
        # From here every replica holds the same gradients: finiteness, clipping and the
        # update agree across replicas.
        grads, finite = scaler.unscale(grads)
        # Sparse training: the update sees masked gradients; the masks' own update the dense
        # ones (RigL regrows where the dense gradient is large).
        dense = grads
        if self.sparse is not None:
            grads = self.sparse.mask_gradients(grads)
        # Gradient clipping (scmm/training/clipping.py): on the unscaled, factored (and masked)
        # gradients, after the finiteness check above; its metrics (grad_norm, ...) join the
        # outputs.
        grads, clip_metrics = clip_gradients(grads, self.settings.clipping)
        rate = self.optimiser.learning_rate(self.optimiser.step)
        skipped = scaler.step(finite, lambda: self._apply(grads, dense))
        return {
            **outputs,
            "learning_rate": rate,
            "loss_scale": scale,
            "skipped": tf.cast(skipped, tf.float32),
            **clip_metrics,
        }

    def _apply(self, grads: list[Any], dense: list[Any]) -> None:
        """One optimiser update from ``grads``; under sparse training then the masks' own step
        (``scmm.sparsity.training``) from the ``dense`` gradients."""
        self.optimiser.apply(grads, reduced=True)
        if self.sparse is not None:
            self.sparse.after_step(self.optimiser.step, dense, self.optimiser.slots)

    def _replica_step(self, tokens: tf.Tensor, mask: tf.Tensor, index: tf.Tensor) -> Any:
        return self._train_step_fn(tokens[index], mask[index])

    def _train_loop_fn(self, tokens: Any, mask: Any) -> dict[str, tf.Tensor]:
        # tokens, mask: (k, sequences, sequence_length), each replica's part of the sequences
        # (the loop runs outside the replicas: each step is one Execution.run).
        count = tf.shape(self.execution.first_local(tokens))[0]
        names = self._metric_names
        assert names is not None
        arrays = {name: tf.TensorArray(tf.float32, size=count, element_shape=()) for name in names}
        for i in tf.range(count):
            outputs = self.execution.run(self._replica_step, tokens, mask, i)
            arrays = {
                name: arrays[name].write(i, tf.cast(outputs[name], tf.float32)) for name in names
            }
        results = {name: array.stack() for name, array in arrays.items()}  # each (k,)
        results["weights_finite"] = tf.stack(
            [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v))) for v in self.variables]
        )
        return results

    def _replica_gradients(self, tokens: tf.Tensor, mask: tf.Tensor) -> list[tf.Tensor]:
        _, grads = self._global_gradients(tokens, mask)
        return self.loss_scaler.unscale(grads)[0]

    def _gradients_fn(self, tokens: Any, mask: Any) -> list[tf.Tensor]:
        return self.execution.run(self._replica_gradients, tokens, mask)

    def _eval_step_fn(self, tokens: tf.Tensor, mask: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self.model(tokens, mask)
        sums = {"loss_sum": outputs["loss"] * outputs["n_tokens"], "n_tokens": outputs["n_tokens"]}
        # Token means a model may return beside its loss, summed so batches weigh by tokens.
        for name in ("xentropy", "accuracy"):
            if name in outputs:
                sums[f"{name}_sum"] = outputs[name] * outputs["n_tokens"]
        return sums

    # Host API --------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Optimiser state plus the dynamic loss scale (what a checkpoint must hold)."""
        sparse = self.sparse.state_arrays() if self.sparse is not None else {}
        return {**self.optimiser.state_arrays(), **self.loss_scaler.state_arrays(), **sparse}

    def set_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Restore from ``state_arrays()``."""
        own = ("loss_scale/", SPARSITY_STATE)
        scaler_state = {k: v for k, v in state.items() if k.startswith("loss_scale/")}
        sparse_state = {k: v for k, v in state.items() if k.startswith(SPARSITY_STATE)}
        if sparse_state and self.sparse is None:
            raise ValueError(
                f"the state holds sparsity masks ({len(sparse_state)} arrays) but"
                " training.sparsity.sparsity is 0"
            )
        self.optimiser.set_state_arrays({k: v for k, v in state.items() if not k.startswith(own)})
        self.loss_scaler.set_state_arrays(scaler_state)
        if self.sparse is not None:
            self.sparse.set_state_arrays(sparse_state)

    def _discover_metrics(self, tokens: np.ndarray, mask: np.ndarray) -> tuple[str, ...]:
        """The model's scalar outputs (traced once, not run) plus the trainer's own."""
        forward = tf.function(lambda t, m: dict(self.model(t, m)))
        outputs = forward.get_concrete_function(
            tf.TensorSpec(tokens.shape[1:], tf.as_dtype(tokens.dtype)),
            tf.TensorSpec(mask.shape[1:], tf.as_dtype(mask.dtype)),
        ).structured_outputs
        for key in ("loss", "n_tokens"):
            if key not in outputs:
                raise ValueError(f"the model's outputs lack {key!r}; got {sorted(outputs)}")
        for key, value in outputs.items():
            if value.shape.rank != 0:
                raise ValueError(f"model output {key!r} is not a scalar (shape {value.shape})")
        clash = set(outputs) & set(TRAINER_METRICS)
        if clash:
            raise ValueError(f"model outputs {sorted(clash)} clash with the trainer's metrics")
        return (*outputs, *STEP_METRICS, *metric_names(self.settings.clipping))

    def train(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run len(batch["tokens"]) steps; returns per-step metrics (numpy, length k).

        Raises ``NonFiniteError`` naming the first step whose loss is non-finite or above
        ``loss_limit``, or the first weight that is non-finite after the loop.
        """
        first_step = self.step
        host = {"tokens": batch["tokens"].astype(np.int32, copy=False), "mask": batch["mask"]}
        device_batch = self.execution.distribute(host, axis=1)
        if self._metric_names is None:
            with self.execution.scope():
                self._metric_names = self._discover_metrics(host["tokens"], host["mask"])
        results = {k: np.asarray(v) for k, v in self._train_loop(**device_batch).items()}
        finite_weights = results.pop("weights_finite")
        losses = results["loss"]
        exploded = ~np.isfinite(losses)
        if self.loss_limit is not None:
            exploded |= losses > self.loss_limit
        bad = np.flatnonzero(exploded)
        if bad.size:
            index = int(bad[0])
            step = first_step + index + 1
            last = {k: float(v[index - 1]) for k, v in results.items()} if index else {}
            message = None
            if np.isfinite(losses[index]):
                message = (
                    f"loss {float(losses[index]):.4g} at step {step} is above the divergence"
                    f" limit {self.loss_limit:.4g} (training.divergence_loss"
                    f" {self.settings.divergence_loss:g} x ln V, V = {self.vocab_size})"
                )
            raise NonFiniteError(step, "loss", last, message)
        if not finite_weights.all():
            name = self.variables[int(np.flatnonzero(~finite_weights)[0])].path
            raise NonFiniteError(first_step + len(results["loss"]), f"weight {name}")
        return results

    def gradients(self, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The unscaled, factored gradients of one step's global batch (sequences, length),
        computed exactly as a training step does (replicas and micro-batches combined), without
        updating anything: one array per ``variables`` entry."""
        if self._gradients is None:
            self._gradients = self.execution.compile_replicated(self._gradients_fn)
        host = {"tokens": batch["tokens"].astype(np.int32, copy=False), "mask": batch["mask"]}
        grads = self._gradients(**self.execution.distribute(host, axis=0))
        return [np.asarray(g) for g in grads]

    def evaluate(self, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
        """Token-weighted mean loss and BPC over ``batches`` (each (sequences, length)).

        For a model that also returns them: ``xentropy``, the unweighted mean cross-entropy
        (BPC is then of it, not of a weighted loss), ``perplexity`` = exp(xentropy) over all
        the batches (exp of the mean, not a mean of per-batch perplexities) and top-1
        ``accuracy``, both token-weighted like the loss.
        """
        sums: dict[str, float] = {}
        for out in self.execution.stream(self._eval_step, batches):
            for name, value in out.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        n_tokens = sums.get("n_tokens", 0.0)
        if n_tokens == 0:
            raise ValueError("evaluation saw no unmasked tokens")
        loss = sums["loss_sum"] / n_tokens
        result = {"loss": loss, "bpc": bits_per_character(loss), "n_tokens": n_tokens}
        if "xentropy_sum" in sums:
            xentropy = sums["xentropy_sum"] / n_tokens
            result["bpc"] = bits_per_character(xentropy)
            result["xentropy"] = xentropy
            result["perplexity"] = math.inf if xentropy > 709.0 else math.exp(xentropy)
        if "accuracy_sum" in sums:
            result["accuracy"] = sums["accuracy_sum"] / n_tokens
        return result
