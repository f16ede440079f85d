"""Arithmetic shared by every op set: each piece of the char-LM's maths written once.

The plain and the unit-scaled op sets differ only in the scales they wrap around these
kernels and in where they round operands for simulated low precision; the attention chunk
loop, the causal mask and relative shift, the grouped-conv taps, the layer-norm moments, the
sequence shift and the highway recurrence live here. Callers pass the contraction they want
(``contract``), so the rounding stays in the op set that owns it.
"""

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from .. import formats, precision

# Large enough to zero a softmax term, small enough to stay finite in float16 (max 65504).
MASK_VALUE = -3.0e4
# Periods of 2 or less alias (sin(pi r) = 0 for every integer r).
MIN_PERIOD = 4.0

Contract = Callable[[str, tf.Tensor, tf.Tensor], tf.Tensor]
Mix = Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]


def as_compute(value: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A variable or tensor read as a tensor of ``dtype`` (no-op cast when equal)."""
    value = tf.convert_to_tensor(value)
    return value if value.dtype == dtype else tf.cast(value, dtype)


def scale_gradient(
    grad: Union[tf.Tensor, tf.IndexedSlices], factor: Union[float, tf.Tensor]
) -> Union[tf.Tensor, tf.IndexedSlices]:
    """grad * factor in grad's dtype; sparse stays sparse (gathers give IndexedSlices).

    A Python factor of exactly 1 returns ``grad`` itself (no multiply in the graph).
    """
    if isinstance(factor, (int, float)) and float(factor) == 1.0:
        return grad
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(
            values=grad.values * tf.cast(factor, grad.values.dtype),
            indices=grad.indices,
            dense_shape=grad.dense_shape,
        )
    return grad * tf.cast(factor, grad.dtype)


def apply_gradient_factors(
    variables: Sequence[Any],
    grads: Sequence[Union[tf.Tensor, tf.IndexedSlices]],
    factors: Mapping[str, float],
) -> list[Union[tf.Tensor, tf.IndexedSlices]]:
    """Each gradient times its variable's factor (by ``.path``, 1 if absent); sparse stays
    sparse. The trainer, calibration and scale analysis apply factors through this."""
    return [scale_gradient(g, factors.get(v.path, 1.0)) for v, g in zip(variables, grads)]


def materialised_gradient(x: tf.Tensor) -> tf.Tensor:
    """Identity; under XLA the gradient arriving at ``x`` is computed once and stored.

    XLA's CPU fusion copies cheap elementwise producers into every consumer. A weighted
    residual stream's gradient is such a chain (block l's is sqrt(1 - tau) times block
    l+1's plus its branch's), and with its branch reading it only through the sqrt(tau)
    multiply no matmul reads it directly, so nothing stored it: every branch-gradient fusion
    recomputed the chain down from the loss (see ``scmm.bench``). XLA's CPU pipeline drops
    optimisation barriers before fusion, and folds constant multiplies and divides, so the
    gradient is divided by a 1.0 computed at run time (x & ~x of an integer, which XLA does
    not fold): a division is "expensive" and XLA never duplicates one. x / 1 is x exactly
    (NaN and infinities included), so values are bit-identical. Outside XLA (TF's own
    kernels store every op's output) this is ``x`` itself.
    """
    if not formats.in_xla_context():
        return x

    @tf.custom_gradient
    def identity(value: tf.Tensor) -> Any:
        def grad(upstream: tf.Tensor) -> tf.Tensor:
            flat = tf.reshape(upstream, [-1])[:1]
            bits = tf.bitcast(tf.cast(flat, tf.float32), tf.int32)
            zero = tf.bitwise.bitwise_and(bits, tf.bitwise.invert(bits))  # 0 at run time
            return upstream / tf.cast(zero + 1, upstream.dtype)

        return tf.identity(value), grad

    return identity(x)


def sinusoid_embedding(length: int, frequencies: int, max_period: float) -> np.ndarray:
    """Sin/cos features of distances 0..length-1: (length, 2 * frequencies), float32.

    Periods are geometric from 4 characters to ``max_period``.
    """
    if max_period < MIN_PERIOD or frequencies < 1:
        raise ValueError(
            f"expected max_period >= {MIN_PERIOD} and frequencies >= 1,"
            f" got {max_period} and {frequencies}"
        )
    exponent = np.arange(frequencies, dtype=np.float64) / max(frequencies - 1, 1)
    periods = MIN_PERIOD * (max_period / MIN_PERIOD) ** exponent  # (frequencies,)
    angles = np.arange(length, dtype=np.float64)[:, None] * (2 * np.pi / periods)[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def relative_shift(scores: tf.Tensor) -> tf.Tensor:
    """Move relative-position scores to (query, key) layout.

    scores: (..., queries, keys) for the last ``queries`` of ``keys`` positions, where
    scores[..., i, m] is for distance d = keys - 1 - m. Returns (..., queries, keys) with
    out[..., i, j] = scores[..., i, queries - 1 - i + j], the score for distance
    (keys - queries + i) - j. Entries with j beyond the causal limit are meaningless (masked by
    the caller). Padding one zero column on the left makes this a flat slice: the wanted
    element of row i sits at flat offset i * keys + j + queries.
    """
    shape = tf.shape(scores)
    queries, keys = scores.shape[-2], scores.shape[-1]
    lead = shape[:-2]
    padded = tf.pad(scores, [[0, 0]] * (len(scores.shape) - 1) + [[1, 0]])  # (..., q, k+1)
    flat = tf.reshape(padded, tf.concat([lead, [queries * (keys + 1)]], axis=0))
    return tf.reshape(flat[..., queries : queries + queries * keys], shape)


def chunk_bounds(length: int, chunk: int) -> Sequence[tuple[int, int]]:
    """[(start, stop)] covering range(length) in pieces of at most ``chunk``."""
    return [(start, min(start + chunk, length)) for start in range(0, length, max(chunk, 1))]


def causal_relative_attention(
    q: tf.Tensor,
    k: tf.Tensor,
    v: tf.Tensor,
    pos_keys: tf.Tensor,
    query_chunk: int,
    contract: Contract,
    mix: Mix,
    temperature: Optional[float] = None,
) -> tf.Tensor:
    """softmax((q k^T + rel(q p^T)) t + causal mask) mixed into v: (b, s, heads, hs).

    t is ``temperature``, by default 1 / sqrt(hs) (u-mup uses mult / hs).

    q, k, v: (b, heads, s, hs); pos_keys: (heads, s, hs) for distances s-1 ... 0.
    ``contract(equation, a, b)`` computes the two score matmuls and ``mix(weights, v, stop)``
    the mixing, so each op set rounds and scales them its own way. Queries are processed in
    chunks that attend to keys up to the chunk's end, which skips most upper-triangle blocks
    (37.5% of the score FLOPs with 4 chunks of 64); results equal the unchunked ones up to
    float rounding.
    """
    seq, head_size = q.shape[2], q.shape[3]
    if seq is None or head_size is None:
        raise ValueError(f"attention needs static shapes, got {q.shape}")
    if temperature is None:
        temperature = head_size**-0.5
    scale = tf.cast(temperature, q.dtype)
    mixed = []
    for start, stop in chunk_bounds(seq, query_chunk):
        q_c = q[:, :, start:stop]  # (b, heads, chunk, hs)
        content = contract("bnia,bnja->bnij", q_c, k[:, :, :stop])  # (b, heads, chunk, stop)
        position = relative_shift(
            contract("bnia,nra->bnir", q_c, pos_keys[:, seq - stop :])
        )  # (b, heads, chunk, stop)
        scores = (content + position) * scale
        causal = np.arange(stop)[None, :] <= np.arange(start, stop)[:, None]
        scores = tf.where(tf.constant(causal), scores, tf.cast(MASK_VALUE, q.dtype))
        weights = tf.nn.softmax(scores, axis=-1)
        mixed.append(mix(weights, v[:, :, :stop], stop))  # (b, chunk, heads, hs)
    return mixed[0] if len(mixed) == 1 else tf.concat(mixed, axis=1)  # (b, s, heads, hs)


def causal_conv_taps(x: tf.Tensor, kernel: tf.Tensor, groups: int, contract: Contract) -> tf.Tensor:
    """Causal grouped 1-D convolution as K shifted per-group matmuls: (b, s, c_out).

    x (b, s, c_in); kernel (K, c_in/groups, c_out), TF's grouped-conv layout with output
    channels group-major. Causality comes from padding K-1 zeros on the left only. XLA on CPU
    lowers ``tf.nn.conv1d`` with groups ~30x slower than these einsums.
    """
    taps, group_in, c_out = kernel.shape
    seq, c_in = x.shape[1], x.shape[-1]
    if taps is None or group_in is None or c_out is None or c_in is None or seq is None:
        raise ValueError(f"causal conv needs static shapes, got {x.shape} and {kernel.shape}")
    if c_in != group_in * groups or c_out % groups:
        raise ValueError(f"causal conv: {groups} groups do not fit {x.shape} / {kernel.shape}")
    group_out = c_out // groups
    padded = tf.pad(x, [[0, 0], [taps - 1, 0], [0, 0]])  # (b, s+K-1, c_in)
    grouped = tf.reshape(padded, [-1, seq + taps - 1, groups, group_in])
    w = tf.reshape(kernel, [taps, group_in, groups, group_out])  # (K, c_in/g, g, c_out/g)
    y = contract("bsgc,cgo->bsgo", grouped[:, 0:seq], w[0])
    for tap in range(1, taps):
        y += contract("bsgc,cgo->bsgo", grouped[:, tap : tap + seq], w[tap])
    return tf.reshape(y, [-1, seq, c_out])  # (b, s, c_out)


def normalise(x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """(x - mean) / sqrt(var + epsilon) over the last axis, statistics in float32.

    In float16 a squared activation of 1e4 already overflows (max 65504), so the moments are
    always taken in float32 and only the normalised result is cast back.
    """
    x32 = tf.cast(x, tf.float32)
    mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
    return tf.cast((x32 - mean) * tf.math.rsqrt(variance + epsilon), x.dtype)


def shift_right(x: tf.Tensor, padding: tf.Tensor) -> tf.Tensor:
    """x (b, s, h) moved one step right, position 0 filled with ``padding`` (h,)."""
    hidden = x.shape[-1]
    pad = tf.broadcast_to(padding, tf.stack([tf.shape(x)[0], 1, hidden]))
    return tf.concat([pad, x[:, :-1, :]], axis=1)


def highway_scan(gates_in: tf.Tensor, recurrent: tf.Tensor) -> tf.Tensor:
    """The recurrent highway recurrence over time -> states (b, s, h).

    gates_in: (s, b, 2, h), the input halves of the candidate and transform pre-activations
    (bias and rebias included); recurrent: the (h, 2, h) kernel applied to the state. Each step
    (a matmul inside the scan) goes through ``precision.einsum``, so simulated formats round
    the state and the kernel there.
    """

    def step(state: tf.Tensor, gate_in: tf.Tensor) -> tf.Tensor:
        # state: (b, h), gate_in: (b, 2, h)
        pre = gate_in + precision.einsum("bh,hgk->bgk", state, recurrent)
        candidate = tf.tanh(pre[:, 0])
        transform = tf.sigmoid(pre[:, 1])
        return state + transform * (candidate - state)

    initial = tf.zeros_like(gates_in[0, :, 0])  # (b, h)
    states = tf.scan(step, gates_in, initializer=initial)  # (s, b, h)
    return tf.transpose(states, [1, 0, 2])  # (b, s, h)


def cross_entropy_sum(
    logits: tf.Tensor,
    targets: tf.Tensor,
    mask: tf.Tensor,
    token_weights: Optional[tf.Tensor] = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(sum of masked per-token cross-entropies, token count), both float32.

    Computed in float32 whatever the logits' dtype: a 16-bit log-softmax loses most of its
    precision exactly where the loss is small. ``token_weights`` (float32, the targets' shape)
    multiplies each scored token's term; the count stays the number of scored tokens.
    """
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=targets, logits=tf.cast(logits, tf.float32)
    )  # (b, s)
    weights = tf.cast(mask, tf.float32)
    if token_weights is None:
        return tf.reduce_sum(per_token * weights), tf.reduce_sum(weights)
    weighted = per_token * weights * tf.stop_gradient(tf.cast(token_weights, tf.float32))
    return tf.reduce_sum(weighted), tf.reduce_sum(weights)


def scored_positions(mask: tf.Tensor, offset: int) -> tf.Tensor:
    """``mask`` (..., s) with its first ``offset`` positions along the last axis cleared."""
    if offset == 0:
        return mask
    mask = tf.cast(mask, tf.bool)
    length = mask.shape[-1]
    if length is None:
        raise ValueError(f"an offset needs a static sequence length, got mask {mask.shape}")
    if not 0 <= offset < length:
        raise ValueError(f"offset {offset} must be in [0, sequence length {length})")
    return tf.logical_and(mask, tf.range(length) >= offset)


def inverse_frequency_weights(targets: tf.Tensor, scored: tf.Tensor, classes: int) -> tf.Tensor:
    """Graphcore's target weights: 1 / n, n = how often this target occurs among the scored
    targets of its own sequence (the last axis; itself included), 0 where not scored.

    targets: int (..., s) in [0, classes); scored: bool (..., s). Float32, no gradient. Counts
    are exact (sums of ones in float32, far below 2^24).
    """
    length = targets.shape[-1]
    ids = tf.reshape(tf.cast(targets, tf.int32), [-1, length])  # (rows, s)
    keep = tf.cast(tf.reshape(scored, [-1, length]), tf.float32)
    rows = tf.shape(ids)[0]
    segments = tf.range(rows)[:, tf.newaxis] * classes + ids  # (rows, s): one bin per row, class
    counts = tf.math.unsorted_segment_sum(keep, segments, rows * classes)  # (rows * classes,)
    weights = keep / tf.maximum(tf.gather(counts, segments), 1.0)
    return tf.stop_gradient(tf.reshape(weights, tf.shape(targets)))


def correct_count(logits: tf.Tensor, targets: tf.Tensor, scored: tf.Tensor) -> tf.Tensor:
    """How many scored targets are the logits' top-1 class (float32; the first of tied maxima,
    as numpy's argmax)."""
    top = tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)
    hits = tf.logical_and(tf.equal(top, tf.cast(targets, tf.int32)), tf.cast(scored, tf.bool))
    return tf.reduce_sum(tf.cast(hits, tf.float32))
