"""The global batch's split into parts, so unit-scaled parameter gradients count global rows.

Why: a unit-scaled parameter's gradient is scaled by rows^-1/2, rows the batch positions its
entries sum over, and the unit-scaled cross-entropy undoes the mean's 1/count (its gradient is
a *sum* over tokens). A step that splits the global batch into P parts (M micro-batches of
gradient accumulation, times R replicas) sees rows / P positions per part; scaling by the
local (rows / P)^-1/2 and adding the P parts gives sqrt(P) times the full-batch gradient, and
a mean over them 1/sqrt(P) (measured 0.7071 for P = 2). Counting the *global* rows instead,
(rows)^-1/2 = (P * local rows)^-1/2, makes the parts add up to the full-batch gradient exactly,
whatever P: so the trainer sums the parts of a sum-reduced (unit-scaled) loss.

The split is a Python constant read when the step is traced (scales are compile-time
constants), set by whoever splits the batch::

    with batch_split(4):          # e.g. 4 micro-batches
        grads = tape.gradient(...)  # traced inside: every rows^-1/2 counts 4 x the rows

Splits nest by multiplying: the trainer traces each replica's step under batch_split(R) and
accumulation its micro-batches under batch_split(M) inside it, so the parts count R x M. The
value lives in a context variable, which does not cross threads: it must be set inside the
replica function (tf.distribute traces replicas in threads of their own).
"""

import contextlib
import contextvars
from typing import Iterator, Union

import tensorflow as tf

_PARTS: contextvars.ContextVar[int] = contextvars.ContextVar("scmm_batch_parts", default=1)


@contextlib.contextmanager
def batch_split(parts: int) -> Iterator[None]:
    """Ops traced inside count ``parts`` times the batch rows they see (see module)."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"batch_split needs a whole number of parts >= 1, got {parts!r}")
    # Nested splits multiply: replicas (the trainer's outer split) x micro-batches (inner).
    token = _PARTS.set(_PARTS.get() * parts)
    try:
        yield
    finally:
        _PARTS.reset(token)


def batch_parts() -> int:
    """How many parts the global batch is split into where the caller is traced (1: none)."""
    return _PARTS.get()


def global_rows(rows: Union[int, float, tf.Tensor]) -> Union[int, float, tf.Tensor]:
    """``rows`` batch positions seen locally -> the global batch's (times ``batch_parts()``).

    Only counts that grow with the batch go through here (rows a parameter gradient sums,
    the ids of an embedding lookup); per-sequence counts (attention keys) do not.
    """
    parts = _PARTS.get()
    if parts == 1:
        return rows
    if isinstance(rows, (int, float)):
        return rows * parts
    return rows * tf.cast(parts, rows.dtype)
