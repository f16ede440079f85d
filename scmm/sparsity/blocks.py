"""Block views of a kernel: the 2-D matrix RigL masks, its block grid, pooling and expansion.

Masks live at block resolution: a kernel of any rank is viewed as a matrix whose rows are its
fan-in (the product of its leading ``fan_in_dims`` dims) and whose columns are the rest, and
that matrix is cut into ``block`` x ``block`` tiles. A Keras ``Dense`` kernel (in, out) is
already that matrix (``fan_in_dims=1``); a ``Conv1D`` kernel (k, in, out) and scmm's
attention output (heads, head_size, hidden) need ``fan_in_dims=2``; scmm's fused qkv
(hidden, 3, heads, head_size) uses ``fan_in_dims=1`` (see ``wave2-facts.md`` §1).

Everything here checks shapes in Python, from static shapes, before any op is built: a block
that does not divide a dimension is a configuration error, and saying so at build time beats
an XLA shape error deep inside a compiled training step. The ops themselves are reshapes and
reductions, so they run eagerly and under ``tf.function(jit_compile=True)`` alike.
"""

import math
from typing import Sequence

import tensorflow as tf

# How a (b, b) tile of |gradient| becomes one score (Graphcore's SUM / AVG / MAX pooling).
POOLING_MODES = ("sum", "average", "max")


def matrix_shape(shape: Sequence[int], fan_in_dims: int = 1) -> tuple[int, int]:
    """(rows, columns) of a kernel of ``shape`` viewed as a matrix: rows = fan-in.

    Why a fixed view: the mask, the block grid and the ERK density of a layer must all agree
    on one 2-D layout, and the layer (not a heuristic on the rank) knows its fan-in.
    """
    dims = [int(d) for d in shape]
    if len(dims) < 2:
        raise ValueError(f"a sparse kernel needs rank >= 2, got shape {tuple(dims)}")
    if not 1 <= fan_in_dims < len(dims):
        raise ValueError(
            f"fan_in_dims must be in [1, {len(dims) - 1}] for shape {tuple(dims)}, "
            f"got {fan_in_dims}"
        )
    return math.prod(dims[:fan_in_dims]), math.prod(dims[fan_in_dims:])


def as_matrix(kernel: tf.Tensor, fan_in_dims: int = 1) -> tf.Tensor:
    """``kernel`` (any rank, static shape) reshaped to its (rows, columns) matrix view."""
    kernel = tf.convert_to_tensor(kernel)
    return tf.reshape(kernel, matrix_shape(_static_shape(kernel, "kernel"), fan_in_dims))


def from_matrix(matrix: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
    """Inverse of ``as_matrix``: the (rows, columns) matrix back in the kernel's ``shape``."""
    return tf.reshape(matrix, [int(d) for d in shape])


def block_grid(shape2d: Sequence[int], block: int, *, name: str = "kernel") -> tuple[int, int]:
    """(rows / block, columns / block): the shape of a block mask for a (rows, columns) matrix.

    Raises ``ValueError`` naming the dimension, its size and the block size when the block
    does not divide it (``name`` says which kernel, for messages about a whole model).
    """
    if len(shape2d) != 2:
        raise ValueError(f"{name}: expected a (rows, columns) shape, got {tuple(shape2d)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"{name}: block size must be a positive integer, got {block!r}")
    rows, cols = (int(d) for d in shape2d)
    for label, size in (("rows (fan-in)", rows), ("columns (fan-out)", cols)):
        if size % block:
            raise ValueError(
                f"{name}: block size {block} does not divide its {label} dimension of size "
                f"{size} (matrix view {rows}x{cols}); choose a block size that divides both"
            )
    return rows // block, cols // block


def pool_blocks(matrix: tf.Tensor, block: int, mode: str = "sum") -> tf.Tensor:
    """|matrix| pooled over each (block, block) tile: (R, C) -> (R/block, C/block), float.

    ``sum`` is a block's L1 norm (the prune score), ``average`` is that over block², and
    ``max`` the largest |entry| (Graphcore's default gradient pooling, which favours a block
    holding one strong connection over a block of many weak ones).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
    matrix = tf.convert_to_tensor(matrix)
    rows, cols = _static_shape(matrix, "matrix", rank=2)
    grid = block_grid((rows, cols), block, name="matrix")
    magnitude = tf.abs(matrix)  # (R, C)
    if block == 1:
        return magnitude
    tiles = tf.reshape(magnitude, (grid[0], block, grid[1], block))  # (R/b, b, C/b, b)
    if mode == "max":
        return tf.reduce_max(tiles, axis=(1, 3))
    pooled = tf.reduce_sum(tiles, axis=(1, 3))  # (R/b, C/b)
    return pooled / float(block * block) if mode == "average" else pooled


def block_l1(matrix: tf.Tensor, block: int) -> tf.Tensor:
    """Sum of |w| over each (block, block) tile, (R/b, C/b): the magnitude RigL prunes by.

    L1 rather than L2 because that is what Graphcore's block prune uses; for block 1 it is
    |w|, the RigL paper's score.
    """
    return pool_blocks(matrix, block, "sum")


def expand_blocks(block_mask: tf.Tensor, block: int) -> tf.Tensor:
    """A block mask (R/b, C/b) repeated to element resolution (R, C), same dtype (bool too)."""
    block_mask = tf.convert_to_tensor(block_mask)
    grid_rows, grid_cols = _static_shape(block_mask, "block_mask", rank=2)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block size must be a positive integer, got {block!r}")
    if block == 1:
        return block_mask
    tiles = tf.broadcast_to(
        block_mask[:, None, :, None], (grid_rows, block, grid_cols, block)
    )  # (R/b, b, C/b, b)
    return tf.reshape(tiles, (grid_rows * block, grid_cols * block))


def kernel_mask(
    block_mask: tf.Tensor, block: int, shape: Sequence[int], fan_in_dims: int = 1
) -> tf.Tensor:
    """A block mask (R/b, C/b) as an element mask in the kernel's own ``shape``.

    Checks that the block mask matches the kernel's block grid, so a mask saved for one
    layout cannot silently be applied to another.
    """
    rows, cols = matrix_shape(shape, fan_in_dims)
    grid = block_grid((rows, cols), block)
    block_mask = tf.convert_to_tensor(block_mask)
    if _static_shape(block_mask, "block_mask", rank=2) != grid:
        raise ValueError(
            f"block mask of shape {tuple(block_mask.shape)} does not match the block grid "
            f"{grid} of a kernel {tuple(shape)} (fan_in_dims={fan_in_dims}, block={block})"
        )
    return from_matrix(expand_blocks(block_mask, block), shape)


def _static_shape(tensor: tf.Tensor, what: str, rank: int = 0) -> tuple[int, ...]:
    """The fully known static shape of ``tensor`` (and its rank, when ``rank`` is given)."""
    shape = tensor.shape
    if shape.rank is None or any(d is None for d in shape.as_list()):
        raise ValueError(f"{what} needs a fully static shape, got {shape}")
    dims = tuple(int(d) for d in shape.as_list())
    if rank and len(dims) != rank:
        raise ValueError(f"{what} must have rank {rank}, got shape {dims}")
    return dims
