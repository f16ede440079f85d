"""One RigL / SET mask update on a block mask: prune the weakest blocks, regrow as many.

Evci et al. (2020), as Graphcore's block-sparse LM and Google's reference code do it
(``sparse-lm-rigl.md`` §2, ``wave2-facts.md`` §6):

1. **Prune** the k active blocks with the smallest weight score (block L1, ``block_l1``).
2. **Regrow** k blocks among the *allowed* positions: those with the largest pooled |dense
   gradient| (RigL), or at random (SET: ranked by a keyed hash of the position, so the draw
   is the same eagerly and under XLA; see ``ranking``). Which positions are allowed is the
   one point where the anchors differ:

   - ``exclude="dropped"`` (Graphcore): every position active *before* pruning is excluded,
     so a block pruned now cannot come straight back;
   - ``exclude="kept"`` (Google): only the kept positions are excluded; a just-pruned block
     may be regrown at once (it then stays active with its weight and optimiser slots, as in
     Google's code with ``reinit_when_same=False``).

The number of active blocks is unchanged. **Capacity**: under ``exclude="dropped"`` only the
empty positions can receive blocks, so when there are fewer of them than ``drop_count`` only
as many blocks are pruned as can be regrown, k = min(drop_count, active, empty); under
``exclude="kept"`` k = min(drop_count, active), which can always be regrown. A negative
drop_count is treated as 0.

Ties (equal scores) go to the lower flat index (row-major over the block grid) in both
steps, so an update is a deterministic function of its inputs; see ``ranking``. NaN scores
are never preferred (a NaN weight score is never pruned, a NaN gradient score is regrown
last).

The function is pure: it reads tensors and returns tensors. Applying the result (masking
the kernel, zeroing the weights and optimiser slots of ``grown`` blocks, keeping everything
else bit for bit) is the caller's job.
"""

from typing import NamedTuple, Optional, Sequence, Union

import tensorflow as tf

from . import ranking

EXCLUDE_RULES = ("dropped", "kept")
REGROW_METHODS = ("gradient", "random")

Seed = Union[int, Sequence[int], tf.Tensor]


class RigLUpdate(NamedTuple):
    """What one update did; every field has the block grid's shape (R/b, C/b) but ``count``.

    ``dropped`` and ``grown`` are the *net* changes the caller acts on (disjoint, equal in
    size); ``pruned`` and ``regrown`` are the two selections before netting, which differ
    from them only under ``exclude="kept"`` when a pruned block is regrown at once.
    """

    mask: tf.Tensor  # the new pattern, in the input mask's dtype
    dropped: tf.Tensor  # bool: active before, inactive after (weights become masked)
    grown: tf.Tensor  # bool: inactive before, active after (zero weights and slots)
    pruned: tf.Tensor  # bool: the k bottom blocks by weight score among the active ones
    regrown: tf.Tensor  # bool: the k top blocks by gradient (or random) among allowed ones
    count: tf.Tensor  # int32 scalar: k, the number pruned and the number regrown


def rigl_update(
    mask: tf.Tensor,
    weight_score: tf.Tensor,
    grad_score: Optional[tf.Tensor],
    drop_count: Union[int, tf.Tensor],
    *,
    exclude: str = "dropped",
    regrow: str = "gradient",
    seed: Optional[Seed] = None,
) -> RigLUpdate:
    """Prune ``drop_count`` blocks and regrow as many (see the module docstring).

    Args:
        mask: (R/b, C/b) bool, or float with 0/1 entries (nonzero = active).
        weight_score: (R/b, C/b) prune score, e.g. ``block_l1(kernel_matrix, b)``; only the
            active positions are read.
        grad_score: (R/b, C/b) regrow score, e.g. ``pool_blocks(dense_grad, b, "max")``;
            ignored (may be None) for ``regrow="random"``.
        drop_count: int or int tensor, the number of blocks to swap (``schedule.drop_count``).
        exclude: "dropped" (Graphcore) or "kept" (Google), the positions regrowth may not use.
        regrow: "gradient" (RigL) or "random" (SET: pseudo-random among the allowed ones).
        seed: for ``regrow="random"``: an int or a shape-(2,) int tensor (e.g.
            ``tf.stack([seed, step])`` in a training loop, so every update draws afresh yet
            resumes identically); the draw is the same eagerly and under XLA.

    Entries of ``mask`` that do not change keep their exact bits.
    """
    if exclude not in EXCLUDE_RULES:
        raise ValueError(f"exclude must be one of {EXCLUDE_RULES}, got {exclude!r}")
    if regrow not in REGROW_METHODS:
        raise ValueError(f"regrow must be one of {REGROW_METHODS}, got {regrow!r}")
    mask = tf.convert_to_tensor(mask)
    if not mask.shape.is_fully_defined() or mask.shape.rank != 2:
        raise ValueError(f"mask must be a static (R/b, C/b) matrix, got shape {mask.shape}")
    weight_score = _score(weight_score, mask.shape, "weight_score")
    if regrow == "gradient":
        if grad_score is None:
            raise ValueError('regrow="gradient" needs grad_score')
        grow_order = ranking.ordered_bits(
            _score(grad_score, mask.shape, "grad_score"), nan_as=float("-inf")
        )
    else:
        if seed is None:
            raise ValueError('regrow="random" needs a seed')
        # A hash of (seed, position), not tf.random: identical bits eagerly and under XLA.
        grow_order = ranking.random_bits(tuple(mask.shape.as_list()), _seed(seed))

    active = tf.not_equal(mask, tf.zeros_like(mask)) if mask.dtype != tf.bool else mask
    n_active = tf.reduce_sum(tf.cast(active, tf.int32))
    k = tf.clip_by_value(tf.cast(drop_count, tf.int32), 0, n_active)
    if exclude == "dropped":
        n_empty = tf.cast(mask.shape.num_elements(), tf.int32) - n_active
        k = tf.minimum(k, n_empty)

    pruned = ranking.select(weight_score, active, k, largest=False)  # (R/b, C/b)
    kept = tf.logical_and(active, tf.logical_not(pruned))
    allowed = tf.logical_not(active if exclude == "dropped" else kept)
    regrown = ranking.select_by_order(grow_order, allowed, k)  # (R/b, C/b)

    new_active = tf.logical_or(kept, regrown)
    dropped = tf.logical_and(active, tf.logical_not(new_active))
    grown = tf.logical_and(new_active, tf.logical_not(active))
    new_mask = tf.where(
        tf.logical_or(dropped, grown), tf.cast(new_active, mask.dtype), mask
    )  # unchanged entries keep their bits
    return RigLUpdate(new_mask, dropped, grown, pruned, regrown, k)


def _score(score: tf.Tensor, shape: tf.TensorShape, name: str) -> tf.Tensor:
    """``score`` as a tensor, checked to have the block grid's ``shape``."""
    score = tf.convert_to_tensor(score)
    if score.shape != shape:
        raise ValueError(f"{name} has shape {score.shape}, expected the mask's {shape}")
    return score


def _seed(seed: Seed) -> tf.Tensor:
    """A shape-(2,) int64 seed: an int ``s`` becomes (s, 0)."""
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int64)
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    if seed.shape != (2,):
        raise ValueError(f"seed must be an int or a shape-(2,) tensor, got shape {seed.shape}")
    return seed
