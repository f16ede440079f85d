"""How a sparsity budget is spread over layers, and the random pattern each layer starts from.

A target sparsity s fixes the *total* number of active parameters, (1 − s) · Σ_l n_l; the
distribution decides each layer's share:

- ``uniform``: every layer has density 1 − s (Graphcore's only option).
- ``erk`` (Erdős–Rényi-Kernel, Evci et al. 2020): density_l ∝ (R_l + C_l) / (R_l · C_l), so
  small and narrow layers, whose parameters each carry more of the signal, stay denser.
  Scaling to the budget can push a layer past density 1; such layers are made dense and the
  others rescaled, repeating until none exceeds 1 (the RigL paper's / Google's algorithm).

Shapes are the kernels' (rows, columns) matrix views (``blocks.matrix_shape``), so a conv
kernel (k, in, out) scores as (k·in + out)/(k·in·out), not RigL's (k + in + out)/(k·in·out):
the 2-D view is what scmm masks.

Densities are exact real numbers (the ERK ones meet the budget to float precision); a layer
then gets ``active_blocks = round(density · blocks)`` blocks (halves up, at least 1), so each
layer is within one block of its share and the total within one block per layer.

Everything here is configuration-time Python except ``initial_mask``, which is a TensorFlow
op (stateless, so the same seed gives the same pattern on every run and device).
"""

import math
from typing import Sequence, Union

import tensorflow as tf

from . import ranking
from .blocks import block_grid

DISTRIBUTIONS = ("uniform", "erk")

Shape2D = Sequence[int]


def uniform_densities(shapes: Sequence[Shape2D], sparsity: float) -> list[float]:
    """Density 1 − ``sparsity`` for every layer."""
    _check_sparsity(sparsity)
    return [1.0 - sparsity for _ in shapes]


def erk_densities(shapes: Sequence[Shape2D], sparsity: float) -> list[float]:
    """Erdős–Rényi-Kernel densities for (rows, columns) ``shapes`` at total ``sparsity``.

    Σ density_l · n_l = (1 − sparsity) · Σ n_l and every density is in (0, 1].
    """
    _check_sparsity(sparsity)
    sizes = [_size(shape) for shape in shapes]
    raw = [sum(int(d) for d in shape) / size for shape, size in zip(shapes, sizes)]
    budget = (1.0 - sparsity) * sum(sizes)
    dense: set[int] = set()
    eps = 0.0
    while True:
        # Non-dense layers share what the dense ones leave: eps · Σ raw_l · n_l = rest.
        rest = budget - sum(sizes[i] for i in dense)
        weight = sum(raw[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        if weight == 0.0:
            break  # every layer is dense (sparsity 0)
        eps = rest / weight
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        # The layer with the largest score is the first to overflow (ties together).
        top = max(raw[i] for i in over)
        dense.update(i for i in over if raw[i] == top)
    return [1.0 if i in dense else min(1.0, eps * raw[i]) for i in range(len(shapes))]


def layer_densities(
    shapes: Sequence[Shape2D], sparsity: float, distribution: str = "uniform"
) -> list[float]:
    """Per-layer densities for ``distribution`` "uniform" or "erk"."""
    if distribution == "uniform":
        return uniform_densities(shapes, sparsity)
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def active_blocks(shape2d: Shape2D, density: float, block: int, *, name: str = "kernel") -> int:
    """round(density · blocks) for a (rows, columns) kernel: halves up, clamped to [1, blocks].

    Why at least 1: a layer with no active block has a zero output and a zero drop count, so
    RigL could never bring it back. Densities are rounded to 9 decimals first so that float
    noise (1 − 0.9 = 0.09999999999999998) does not turn a half into a round-down.
    """
    rows, cols = block_grid(shape2d, block, name=name)
    blocks = rows * cols
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"{name}: density must be in [0, 1], got {density}")
    return min(blocks, max(1, math.floor(round(density * blocks, 9) + 0.5)))


def initial_mask(
    grid: Sequence[int], active: Union[int, tf.Tensor], seed: Union[int, Sequence[int]]
) -> tf.Tensor:
    """A uniformly random bool block mask of shape ``grid`` with exactly ``active`` blocks.

    Stateless: the same ``seed`` (an int, or two ints) gives the same pattern on every run,
    device and execution mode: the ``active`` positions with the largest hashed draws
    (``ranking.random_bits``, distinct per position) are chosen.
    """
    shape = tuple(int(d) for d in grid)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"grid must be a positive (rows, columns) pair, got {tuple(grid)}")
    pair = [int(seed), 0] if isinstance(seed, int) else [int(s) for s in seed]
    if len(pair) != 2:
        raise ValueError(f"seed must be an int or two ints, got {seed!r}")
    draws = ranking.random_bits(shape, tf.constant(pair, tf.int64))  # (R/b, C/b) int64
    return ranking.select_by_order(draws, tf.ones(shape, tf.bool), active)


def _size(shape: Shape2D) -> int:
    """Number of entries of a (rows, columns) shape, checked."""
    if len(shape) != 2 or min(int(d) for d in shape) < 1:
        raise ValueError(f"expected a positive (rows, columns) shape, got {tuple(shape)}")
    return math.prod(int(d) for d in shape)


def _check_sparsity(sparsity: float) -> None:
    """Sparsity is the fraction of zero weights: 0 (dense) up to, not including, 1."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
