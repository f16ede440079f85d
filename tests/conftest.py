"""Shared helpers for the numerics tests: small models, batches and executions."""

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=wrong-import-position
from typing import Any, Optional

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # pylint: disable=no-name-in-module

from scmm.models import (
    AttentionSettings,
    CharLM,
    ConvSettings,
    ModelSettings,
    ResidualSettings,
    RNNSettings,
    SequenceMixerSettings,
)
from scmm.pedal import Execution, ExecutionSettings
from scmm.precision_settings import WeightStorage
from scmm.schemes import UnitScalingSettings


@pytest.fixture(autouse=True)
def undo_op_determinism() -> Any:
    """Each test starts with TensorFlow's op determinism off, whatever ran before it.

    pedal.Execution turns determinism on for the whole process (TensorFlow has no scoped
    form), and under it a random op with no seed anywhere is refused. Without this, a test of
    unseeded randomness passes or fails by which tests ran earlier in the same process (as
    under pytest-xdist, whose workers each run a different share of the suite). The public
    API has no way back, hence the internal ``disable_op_determinism``.
    """
    yield
    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


KINDS = ("attention", "conv", "rnn")
VOCAB = 16

# (sequence mixer kind, residual norm placement): every model variant the suite covers.
MODEL_VARIANTS = [("attention", "pre"), ("attention", "post"), ("conv", "pre"), ("rnn", "pre")]


def sequence_settings(kind: str, hidden_size: int) -> SequenceMixerSettings:
    """Small settings for one sequence-mixer kind."""
    if kind == "attention":
        return AttentionSettings(
            heads=2, head_size=hidden_size // 2, frequencies=8, max_period=64.0
        )
    if kind == "conv":
        return ConvSettings(kernel_size=5, groups=4)
    if kind == "rnn":
        return RNNSettings()
    raise ValueError(f"unknown kind {kind!r}")


def model_settings(
    kind: str = "attention",
    *,
    norm: str = "pre",
    dtype: str = "float32",
    vocab_size: int = VOCAB,
    hidden_size: int = 32,
    depth: int = 2,
    seed: int = 1,
) -> ModelSettings:
    """A small ``ModelSettings`` (default: 2-layer, hidden 32, vocab 16, float32)."""
    return ModelSettings(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        depth=depth,
        residual=ResidualSettings(norm=norm),  # type: ignore[arg-type]
        sequence=sequence_settings(kind, hidden_size),
        dtype=dtype,  # type: ignore[arg-type]
        seed=seed,
    )


def make_model(
    kind: str = "attention", *, weights: WeightStorage = "master", **kwargs: Any
) -> CharLM:
    """A small ``CharLM`` storing its weights as ``weights`` (master | rounded | stochastic);
    other keyword arguments go to ``model_settings``."""
    settings = dataclasses.replace(model_settings(kind, **kwargs), weights=weights)
    return CharLM(settings)


def unit_scaled(settings: ModelSettings, weighting: str = "mean") -> ModelSettings:
    """``settings`` with the unit-scaling scheme (and weighted residuals, which it needs)."""
    residual = dataclasses.replace(settings.residual, weighting=weighting)  # type: ignore[arg-type]
    return dataclasses.replace(settings, scaling=UnitScalingSettings(), residual=residual)


def make_execution(xla: bool = True) -> Execution:
    """CPU execution (the suite runs on CPU; XLA on by default like real runs)."""
    return Execution(ExecutionSettings(device="cpu", xla=xla))


def repeating_batch(
    pattern: np.ndarray, steps: int, sequences: int, seq_len: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Batches for ``Trainer.train``: each sequence is ``pattern`` tiled from a random phase.

    Shapes (steps, sequences, seq_len). The first ``len(pattern)`` positions are masked out:
    with a random phase they cannot be predicted, whereas every later character is determined
    by the preceding period, so a model that learns the pattern can reach zero loss.
    """
    period = len(pattern)
    tiled = np.tile(pattern, seq_len // period + 2)
    phases = rng.integers(0, period, size=(steps, sequences))
    tokens = np.stack([np.stack([tiled[p : p + seq_len] for p in row]) for row in phases]).astype(
        np.int32
    )
    mask = np.broadcast_to(np.arange(seq_len) >= period, tokens.shape).copy()
    return {"tokens": tokens, "mask": mask}


def random_batch(
    steps: int,
    sequences: int,
    seq_len: int,
    rng: np.random.Generator,
    vocab_size: int = VOCAB,
    mask: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Uniform random tokens (steps, sequences, seq_len); all positions scored by default."""
    tokens = rng.integers(0, vocab_size, size=(steps, sequences, seq_len)).astype(np.int32)
    if mask is None:
        mask = np.ones(tokens.shape, bool)
    return {"tokens": tokens, "mask": mask}


def as_float64(x: Any) -> np.ndarray:
    """A tensor / variable / array as float64 numpy (bfloat16 included)."""
    if isinstance(x, (tf.Tensor, tf.Variable)) or hasattr(x, "numpy"):
        x = tf.cast(tf.convert_to_tensor(x), tf.float32).numpy()
    return np.asarray(x, dtype=np.float64)


def present(variable: Optional[Any]) -> Any:
    """A layer's optional weight (a bias, a norm's gain), which the test needs to exist."""
    assert variable is not None
    return variable
