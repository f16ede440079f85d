"""The algorithmic core of RigL dynamic sparse training (Evci et al. 2020), in TensorFlow ops.

Pure functions, no Keras and no state: the training loop owns the masks (non-trainable
variables), calls these inside its compiled step, and applies what they return.

- ``blocks``: a kernel's (fan-in, rest) matrix view, its block grid, block pooling and
  expansion.
- ``update``: one prune-and-regrow step on a block mask (RigL by gradient, SET at random;
  Graphcore's or Google's exclusion rule).
- ``schedule``: the drop fraction (constant / cosine), the drop count, the update steps.
- ``distribution``: per-layer densities (uniform / ERK), block counts, the initial mask.
- ``ranking``: exact k-selection with flat-index tie-breaking and random draws that are
  the same bits eagerly and under XLA, shared by the above.
"""

from .blocks import (
    POOLING_MODES,
    as_matrix,
    block_grid,
    block_l1,
    expand_blocks,
    from_matrix,
    kernel_mask,
    matrix_shape,
    pool_blocks,
)
from .distribution import (
    DISTRIBUTIONS,
    active_blocks,
    erk_densities,
    initial_mask,
    layer_densities,
    uniform_densities,
)
from .schedule import (
    SCHEDULES,
    constant_drop_fraction,
    cosine_drop_fraction,
    drop_count,
    drop_fraction,
    is_update_step,
)
from .update import EXCLUDE_RULES, REGROW_METHODS, RigLUpdate, rigl_update

__all__ = [
    "DISTRIBUTIONS",
    "EXCLUDE_RULES",
    "POOLING_MODES",
    "REGROW_METHODS",
    "SCHEDULES",
    "RigLUpdate",
    "active_blocks",
    "as_matrix",
    "block_grid",
    "block_l1",
    "constant_drop_fraction",
    "cosine_drop_fraction",
    "drop_count",
    "drop_fraction",
    "erk_densities",
    "expand_blocks",
    "from_matrix",
    "initial_mask",
    "is_update_step",
    "kernel_mask",
    "layer_densities",
    "matrix_shape",
    "pool_blocks",
    "rigl_update",
    "uniform_densities",
]
