"""Autoregressive generation with a run's model, one compiled step per character.

The model is causal: the logits at position ``t`` depend on ``tokens[:t]`` only (its ``Shift``
layer moves embeddings one step right). So each step writes the context into a fixed-size
window, puts anything at the next position and reads that position's logits; what lies after
it cannot change them. A fixed window means one trace and one XLA compilation for the whole
generation. The window is the model's training sequence length: a training window shows the
model at most ``sequence_length - 1`` characters before a prediction, so that is the most
context a step keeps (older characters drop off the front).
"""

from typing import Callable

import numpy as np
import tensorflow as tf

from ..models import CharLM
from ..pedal import Execution
from .choice import Decoding, choose
from .run_files import RunFiles


class Generator:
    """A run's model with its checkpoint weights, generating ids from prompt ids."""

    def __init__(self, run: RunFiles, weights: dict[str, np.ndarray]):
        self.settings = run.settings
        self.execution = Execution(run.settings.execution)
        with self.execution.scope():
            self.model = CharLM(run.settings.model)
        try:
            self.model.set_weight_arrays(weights)
        except ValueError as error:
            raise ValueError(
                f"checkpoint {run.checkpoint!r} does not fit the run's model: {error}"
            ) from error
        self.sequence_length = run.settings.data.sequence_length
        # One compiled step per (samples, window) shape: the model's attention needs static
        # shapes, and Execution.compile's functions relax to unknown ones on a second shape.
        self._steps: dict[tuple[int, int], Callable[..., tf.Tensor]] = {}

    @property
    def max_context(self) -> int:
        """Characters of context a prediction sees at most (see the module docstring)."""
        return self.sequence_length - 1

    def _next_logits(self, tokens: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
        """Logits (rows, vocab) float32 at ``position`` of ``tokens`` (rows, window)."""
        logits = self.model.logits(tokens)  # (rows, window, vocab)
        return tf.cast(tf.gather(logits, position, axis=1), tf.float32)

    def generate(
        self,
        prompt: np.ndarray,
        length: int,
        decoding: Decoding,
        seed: int = 0,
        samples: int = 1,
    ) -> np.ndarray:
        """``length`` new ids after ``prompt`` (n,) for each of ``samples`` rows: (samples, length).

        Rows start from the same prompt and differ by their draws from one
        ``numpy.random.Generator(seed)``. Each step sees the last ``max_context`` ids.
        """
        decoding.validate()
        prompt = np.asarray(prompt, dtype=np.int32)
        # Just long enough for this generation (less to compute for a short one), and never
        # more than a training window: the result is the same as with a full-length window.
        window = max(1, min(self.sequence_length, len(prompt) + length))
        keep = window - 1  # context the window holds beside the position predicted
        rng = np.random.default_rng(seed)
        history = np.tile(prompt, (samples, 1))  # (samples, n + generated)
        out = np.empty((samples, length), dtype=np.int32)
        tokens = np.zeros((samples, window), dtype=np.int32)
        if (samples, window) not in self._steps:
            self._steps[samples, window] = self.execution.compile(self._next_logits)
        step = self._steps[samples, window]
        for index in range(length):
            context = history[:, max(0, history.shape[1] - keep) :]  # (samples, <= keep)
            tokens[:, : context.shape[1]] = context
            logits = step(tf.convert_to_tensor(tokens), tf.constant(context.shape[1], tf.int32))
            out[:, index] = choose(logits.numpy(), decoding, rng)
            history = np.concatenate([history, out[:, index : index + 1]], axis=1)
        return out
