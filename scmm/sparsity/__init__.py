"""The algorithmic core of RigL dynamic sparse training (Evci et al. 2020), in TensorFlow ops.

Pure functions, no Keras and no state: the training loop owns the masks (non-trainable
variables), calls these inside its compiled step, and applies what they return.

- ``blocks``: a kernel's (fan-in, rest) matrix view, its block grid, block pooling and
  expansion.
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

__all__ = [
    "POOLING_MODES",
    "as_matrix",
    "block_grid",
    "block_l1",
    "expand_blocks",
    "from_matrix",
    "kernel_mask",
    "matrix_shape",
    "pool_blocks",
]
