"""When masks update and how many blocks each update swaps.

Three small functions of the step, written with TensorFlow ops so a compiled training step
can evaluate them from ``optimizer.iterations`` (a Python int works as well):

- ``drop_fraction(t)``: the fraction of a layer's active blocks replaced at step t, either
  ``constant`` (alpha) or ``cosine`` (Graphcore's ``cosine_prune_function``, which with its
  defaults is the RigL paper's α/2·(1 + cos(π t / T_end))):

      f(t) = alpha · ½(1 + cos(phase + period · 2π · (t − zero_steps) / (T − zero_steps)))

  for zero_steps <= t < T, and 0 outside. With phase 0 and period 0.5 this decays from alpha
  at zero_steps to 0 at T. T (``end_step``) is where the pattern freezes: the end of training
  in Graphcore's code, 75% of it in the RigL paper. For t >= T the fraction is 0 for every
  phase and period, so a cyclic schedule (period > 0.5) does not restart past T.
- ``drop_count(f, active_blocks)``: round-half-up of f · active_blocks (see there for why).
- ``is_update_step(t, interval)``: every ``interval`` steps; None or 0 means static sparsity.
"""

import math
from typing import Optional, Union

import tensorflow as tf

SCHEDULES = ("constant", "cosine")

Step = Union[int, tf.Tensor]


def constant_drop_fraction(step: Step, alpha: float) -> tf.Tensor:
    """alpha at every step (Google's default ``drop_fraction_anneal``); float32 scalar."""
    del step
    return tf.constant(float(alpha), tf.float32)


def cosine_drop_fraction(
    step: Step,
    alpha: float,
    end_step: int,
    *,
    zero_steps: int = 0,
    phase: float = 0.0,
    period: float = 0.5,
) -> tf.Tensor:
    """Graphcore's cosine decay of the drop fraction (module docstring); float32 scalar.

    0 before ``zero_steps`` (no updates while the network settles) and from ``end_step`` on
    (the pattern is frozen); when ``zero_steps >= end_step`` it is 0 everywhere.
    """
    if end_step <= 0:
        raise ValueError(f"end_step must be positive, got {end_step}")
    span = end_step - zero_steps
    t = tf.cast(step, tf.float64)
    if span <= 0:
        return tf.zeros((), tf.float32)
    # Evaluated in float64: at t = T with the defaults cos(π) must give exactly 0.
    angle = phase + period * 2.0 * math.pi * (t - zero_steps) / span
    factor = 0.5 * (1.0 + tf.cos(angle))
    live = tf.logical_and(t >= zero_steps, t < end_step)
    return tf.cast(tf.where(live, alpha * factor, tf.zeros_like(factor)), tf.float32)


def drop_fraction(
    step: Step,
    *,
    schedule: str,
    alpha: float,
    end_step: int = 0,
    zero_steps: int = 0,
    phase: float = 0.0,
    period: float = 0.5,
) -> tf.Tensor:
    """The drop fraction at ``step`` for ``schedule`` "constant" or "cosine"; float32 scalar."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the drop fraction alpha must be in [0, 1], got {alpha}")
    if schedule == "constant":
        return constant_drop_fraction(step, alpha)
    if schedule == "cosine":
        return cosine_drop_fraction(
            step, alpha, end_step, zero_steps=zero_steps, phase=phase, period=period
        )
    raise ValueError(f"drop-fraction schedule must be one of {SCHEDULES}, got {schedule!r}")


def drop_count(
    fraction: Union[float, tf.Tensor], active_blocks: Union[int, tf.Tensor]
) -> tf.Tensor:
    """floor(fraction · active_blocks + ½) as an int32 scalar: round to nearest, halves up.

    Why nearest: the swapped count then tracks the schedule to within half a block, without
    a bias either way. Graphcore's ceil(ceil(ratio·N)·f(t)) keeps swapping at least one block
    for as long as f(t) > 0, so deep in the cosine tail the pattern still churns; Google's
    int(N·f) (floor) stops as soon as f < 1/N and undercounts by up to a block throughout.
    Halves go up so that f·N = 0.5 still swaps one block. Computed in float64.
    """
    product = tf.cast(fraction, tf.float64) * tf.cast(active_blocks, tf.float64)
    return tf.cast(tf.floor(product + 0.5), tf.int32)


def is_update_step(step: Step, interval: Optional[int]) -> tf.Tensor:
    """Whether masks update after optimiser step ``step``: bool scalar.

    ``step`` counts completed optimiser steps (``optimizer.iterations`` after the step's
    update), so updates happen at interval, 2·interval, ...; step 0 never updates, because a
    freshly initialised network says nothing about which connections matter. ``interval``
    None or 0 is static sparsity (never updates; ΔT = ∞).
    """
    if interval is None or interval == 0:
        return tf.constant(False)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise ValueError(f"update interval must be None or a non-negative int, got {interval!r}")
    t = tf.cast(step, tf.int64)
    return tf.logical_and(t > 0, tf.equal(tf.math.floormod(t, interval), 0))
