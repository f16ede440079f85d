"""Writing float32 values into 16-bit weights: round-to-nearest or stochastic rounding.

With 16-bit weights an update smaller than half a unit in the last place of the weight is
rounded away entirely; stochastic rounding (round up with probability equal to the distance
from the lower neighbour) keeps the update correct in expectation, as on the IPUs the Unit
Scaling paper trained on.
"""

import tensorflow as tf

_BITS_DTYPE = {tf.float16: tf.int16, tf.bfloat16: tf.int16}


def stochastic_round(x: tf.Tensor, dtype: tf.DType, seed: tf.Tensor) -> tf.Tensor:
    """Round float32 ``x`` to ``dtype`` (float16 or bfloat16), up with probability frac.

    ``seed``: int32/int64 tensor of shape (2,) for a stateless uniform draw, so results are
    reproducible. Exact values stay exact, NaN stays NaN, and values beyond the largest finite
    number round to it or to infinity in proportion (the distance to infinity is infinite, so
    they round down).
    """
    if dtype == tf.float32:
        return x
    if dtype not in _BITS_DTYPE:
        raise ValueError(f"stochastic_round supports float16/bfloat16, got {dtype}")
    x = tf.cast(x, tf.float32)
    magnitude = tf.abs(x)
    nearest = tf.cast(magnitude, dtype)  # round-to-nearest-even, >= 0
    nearest_bits = tf.bitcast(nearest, _BITS_DTYPE[dtype])
    above = tf.cast(nearest, tf.float32) > magnitude
    # The other neighbour is one unit in the last place away, on the other side of |x|.
    step = tf.cast(tf.where(above, -1, 1), nearest_bits.dtype)
    other = tf.bitcast(nearest_bits + step, dtype)
    low = tf.where(above, other, nearest)
    high = tf.where(above, nearest, other)
    low32, high32 = tf.cast(low, tf.float32), tf.cast(high, tf.float32)
    gap = high32 - low32
    probability_up = tf.where(gap > 0, (magnitude - low32) / gap, tf.zeros_like(gap))
    draw = tf.random.stateless_uniform(tf.shape(x), seed=seed, dtype=tf.float32)
    rounded = tf.where(draw < probability_up, high, low)
    rounded = tf.where(tf.math.is_nan(x), tf.cast(x, dtype), rounded)
    return tf.where(x < 0, -rounded, rounded)
