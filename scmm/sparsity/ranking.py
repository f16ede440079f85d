"""Exact, backend-independent choices: top-k / bottom-k selection and random draws.

RigL must remove and add *exactly* k blocks, k is a tensor (it follows a schedule), and the
choice must be reproducible: the same inputs must give the same mask eagerly, under XLA, on
CPU and on GPU, or kill-and-resume stops being exact and an eager reference cannot check a
compiled step. Two things are not reproducible across those modes, so neither is used:

- **Sort stability.** Instead each position gets a *unique* int64 key that orders it
  (1) allowed positions before all others, (2) then by score, (3) then by flat index, lower
  first; one ``tf.math.top_k`` over all n keys (k = n is static; the dynamic k only picks a
  threshold) gives the selection as ``key >= key_of_the_k-th``. No scatter, no
  data-dependent Python control flow, static shapes.
- **``tf.random.stateless_*`` under XLA.** With a seed *tensor* XLA lowers them to its own
  generator, whose draws differ from TensorFlow's kernels (measured on TF 2.21, philox).
  SET's random regrowth and the initial masks instead rank positions by an integer hash of
  (seed, flat index): murmur3's 32-bit finaliser, written with int64 ops that never
  overflow, so every backend computes the same bits. For a fixed seed the hash is a
  bijection of the index, so there are no ties either.

Key layout (63 bits, a non-negative int64): ``allowed · 2^62 + order · 2^30 +
(2^30 − 1 − index)``, where ``order`` is in [0, 2^32): the hash, or a float32 score mapped
monotonically to an integer (the usual sign-magnitude flip of its bits). Hence at most 2^30
positions per call.
"""

from typing import Union

import tensorflow as tf

MAX_POSITIONS = 2**30
_ORDER_LEVELS = 2**32
_LOW32 = 0xFFFFFFFF


def ordered_bits(score: tf.Tensor, *, nan_as: float) -> tf.Tensor:
    """int64 in [0, 2^32), strictly monotone in the float32 value of ``score`` (same shape).

    -0.0 is read as +0.0 (they compare equal, so they must tie and fall back to the index),
    and NaN as ``nan_as`` (callers choose ±inf so a NaN score is never preferred).
    """
    x = tf.cast(score, tf.float32)
    x = tf.where(tf.math.is_nan(x), tf.fill(tf.shape(x), tf.constant(nan_as, tf.float32)), x)
    x = tf.where(tf.equal(x, 0.0), tf.zeros_like(x), x)
    bits = tf.bitcast(x, tf.int32)
    # Negative floats: flip the magnitude bits so that larger magnitudes sort lower.
    flip = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 0x7FFFFFFF)
    signed = tf.bitwise.bitwise_xor(bits, flip)  # int32, monotone in x
    return tf.cast(signed, tf.int64) + 2**31


def random_bits(shape: tuple[int, ...], seed: tf.Tensor) -> tf.Tensor:
    """int64 in [0, 2^32) of ``shape``: a keyed hash of each flat index, distinct per index.

    ``seed`` is a shape-(2,) integer tensor (the low 32 bits of each entry are used).
    """
    n = 1
    for d in shape:
        n *= int(d)
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _LOW32)  # (2,)
    key = _fmix32(tf.bitwise.bitwise_xor(_fmix32(seed[0]), seed[1]))  # scalar
    index = tf.bitwise.bitwise_and(tf.range(n, dtype=tf.int64) + 0x9E3779B9, _LOW32)  # (n,)
    return tf.reshape(_fmix32(tf.bitwise.bitwise_xor(_fmix32(index), key)), shape)


def select(
    score: tf.Tensor,
    allowed: tf.Tensor,
    k: Union[int, tf.Tensor],
    *,
    largest: bool,
) -> tf.Tensor:
    """Bool mask (shape of ``score``) of the k allowed positions with the largest (or, with
    ``largest=False``, smallest) float score; ties go to the lower flat (row-major) index.

    k is clipped to [0, number allowed], so a disallowed position is never selected. Shapes
    must be static; ``allowed`` is bool with the shape of ``score``.
    """
    score = tf.convert_to_tensor(score)
    order = ordered_bits(score, nan_as=float("-inf") if largest else float("inf"))
    if not largest:
        order = (_ORDER_LEVELS - 1) - order
    return select_by_order(order, allowed, k)


def select_by_order(order: tf.Tensor, allowed: tf.Tensor, k: Union[int, tf.Tensor]) -> tf.Tensor:
    """Bool mask of the k allowed positions with the largest int64 ``order`` (in [0, 2^32),
    e.g. ``random_bits``); ties go to the lower flat index; k clipped to [0, allowed]."""
    allowed = tf.convert_to_tensor(allowed)
    if order.shape != allowed.shape or not order.shape.is_fully_defined():
        raise ValueError(f"score {order.shape} and allowed {allowed.shape} need one static shape")
    n = order.shape.num_elements()
    if n > MAX_POSITIONS:
        raise ValueError(f"at most {MAX_POSITIONS} positions per selection, got {n}")
    if n == 0:
        return tf.zeros(order.shape, tf.bool)
    flat_allowed = tf.reshape(tf.cast(allowed, tf.bool), (n,))  # (n,)
    index = tf.range(n, dtype=tf.int64)  # (n,)
    key = (
        tf.cast(flat_allowed, tf.int64) * 2**62
        + tf.reshape(order, (n,)) * MAX_POSITIONS
        + (MAX_POSITIONS - 1 - index)
    )  # (n,) unique, non-negative
    ranked = tf.math.top_k(key, k=n, sorted=True).values  # (n,) descending
    count = tf.minimum(
        tf.maximum(tf.cast(k, tf.int32), 0), tf.reduce_sum(tf.cast(flat_allowed, tf.int32))
    )
    threshold = tf.gather(ranked, tf.maximum(count - 1, 0))  # the k-th largest key
    chosen = tf.logical_and(key >= threshold, count > 0)  # (n,)
    return tf.reshape(chosen, order.shape)


def _fmix32(h: tf.Tensor) -> tf.Tensor:
    """murmur3's finaliser on int64 values in [0, 2^32): a bijection with good avalanche."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    h = _mul32(h, 0x85EBCA6B)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
    h = _mul32(h, 0xC2B2AE35)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def _mul32(h: tf.Tensor, factor: int) -> tf.Tensor:
    """h · factor mod 2^32 for h in [0, 2^32), in int64 without overflow: split the factor
    into 16-bit halves, so no product exceeds 2^48."""
    low = h * (factor & 0xFFFF)
    high = tf.bitwise.bitwise_and(h * (factor >> 16), 0xFFFF)
    return tf.bitwise.bitwise_and(low + tf.bitwise.left_shift(high, 16), _LOW32)
