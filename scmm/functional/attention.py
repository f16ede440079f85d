"""Unit-scaled ``keras.ops.dot_product_attention`` with a mask-aware, per-query output scale.

Layout and semantics are Keras's: query (B, T, N, H), key (B, S, K, H), value (B, S, K, Hv)
with N a multiple of K (grouped-query attention), ``scale`` None meaning 1/sqrt(H), ``bias``
added to the logits, a boolean ``mask`` (True = attend) broadcastable to (B, N, T, S), and
``is_causal`` keeping keys s <= t (top-left aligned, as Keras). A fully masked row attends
uniformly to all S keys, as in Keras. ``mult`` multiplies the temperature (u-muP's
alpha_attn: ``uu.MultiHeadAttention`` under "umup" passes scale 1/H).

Rule: query t mixes its n_t attended values with softmax weights w, so for values iid across
keys its output variance is S_2 = sum_s w_ts^2, and

    alpha(n_t) = E[S_2 | n_t keys]^-1/2

would make it unit, with the expectation for iid logits of variance v = (mult scale)^2 H (unit
q and k), computed exactly (``scmm.functional.softmax.sum_square_weights_tf``). n_t is counted
per query row from the causal mask and the explicit mask together, so a padded batch, a causal
prefix and a sliding window all get their own scales (the PyTorch library uses one constant
from the kv length and the causal flag, its issue 86).

The output is multiplied by alpha(n_t)^OUTPUT_EXPONENT, OUTPUT_EXPONENT = 1/2, not by alpha:
alpha is exact only for values independent across keys, and a value component shared by all
keys passes the average unchanged and needs factor 1. In a model the values of one sequence
share components (the projections of neighbouring, similar inputs; biases), so alpha overshoots
(measured on a 4-block GPT at 128 positions: attention outputs up to 4.7 with alpha, 0.56-1.27
with alpha^1/2) and alpha^1/2, the geometric middle of the two ends, keeps every block within
[0.5, 2]. It is the same choice as scmm's own u-muP attention (``scmm.ops.umup``).

alpha is a constant of the mask (no gradient), so with ``gradient="true"`` the gradients of q,
k and v are the true ones of ``alpha^1/2 * attention(q, k, v)``: v's gradient scales like the
output (the same mean of alpha^(2e - 2) over rows for iid values), but q's and k's pass through
the softmax Jacobian and are far smaller (0.1-0.45 measured in the GPT, less under u-muP's 1/H
temperature). ``gradient="unit"`` (the default) keeps the forward and v's gradient and gives q
and k backward-only factors (``qk_gradient_scales``): row t's logit gradient is
a_t w (d - w.d) with d_s = g_t.v_s, so q's gradient has variance temperature^2 Hv a_t^2 G(n_t),
G = E[S_2 - 2 S_3 + S_2^2] the softmax Jacobian's moment (``gradient_moment_tf``); k's the same
summed over the rows and divided by S. Their inverse square roots make q and k's gradients unit
for iid inputs. This is a deliberate separate backward scale on edges that are not cut edges:
q's and k's gradients become the true ones times per-row (q) and per-head (k) factors, no longer
the gradient of one function. It is what unit scaling does for a matmul's input gradient (its
own rule, not the forward's), applied to the scores' product. Grouped-query
attention sums the gradients of a kv head's query-head copies: k and v get 1/sqrt(group) too.

``bias`` is not counted in v (the rule assumes it does not spread the logits). Both einsums
(scores and mixing) take their operands through ``scmm.precision`` as activations; the
probabilities are rounded times n_t (unit mean) and divided back after the product.
"""

import math
from typing import Any, Optional

import tensorflow as tf

from .. import precision
from ..uscale.scaling import scaling
from .softmax import gradient_moment_tf, sum_square_weights_tf

# Keras's TF backend fills masked logits with 0.7 x the dtype's lowest value (the logits are
# float32 or wider here); any such number gives the same probabilities.
_LARGE_NEGATIVE = 0.7 * float(tf.float32.min)

# The output is multiplied by alpha(n_t)^OUTPUT_EXPONENT (see the module docstring).
OUTPUT_EXPONENT = 0.5
GRADIENTS = ("unit", "true")


def _check_arguments(
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    scale: Optional[float],
    mult: float,
    flash_attention: Optional[bool],
    attn_logits_soft_cap: Optional[float],
    gradient: str,
) -> None:
    if flash_attention:
        raise ValueError(
            "U.dot_product_attention cannot use flash attention (flash_attention=True): its"
            " per-query scale needs the mask; pass flash_attention=None or False"
        )
    if attn_logits_soft_cap is not None:
        raise ValueError(
            f"U.dot_product_attention does not support attn_logits_soft_cap"
            f" (got {attn_logits_soft_cap!r}): a capped logit has another variance"
        )
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if len(tensor.shape) != 4:
            raise ValueError(
                f"U.dot_product_attention: {name} must be 4-D (batch, seq, heads, head_dim),"
                f" got shape {tensor.shape}"
            )
    head_dim, key_dim = query.shape[-1], key.shape[-1]
    if head_dim is None or head_dim != key_dim:
        raise ValueError(
            f"U.dot_product_attention: query and key need the same static head_dim, got"
            f" {query.shape} and {key.shape}"
        )
    if key.shape[1] is not None and value.shape[1] is not None and key.shape[1] != value.shape[1]:
        raise ValueError(f"key {key.shape} and value {value.shape} need the same length")
    heads, kv_heads = query.shape[2], key.shape[2]
    if heads is None or kv_heads is None or heads % kv_heads or value.shape[2] != kv_heads:
        raise ValueError(
            f"U.dot_product_attention: query heads {heads} must be a static multiple of the"
            f" key/value heads {kv_heads} / {value.shape[2]}"
        )
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"U.dot_product_attention: scale must be a number > 0, got {scale!r}")
    if gradient not in GRADIENTS:
        raise ValueError(
            f"U.dot_product_attention: gradient must be one of {GRADIENTS}, got {gradient!r}"
        )
    if not (isinstance(mult, (int, float)) and math.isfinite(mult) and mult > 0):
        raise ValueError(f"U.dot_product_attention: mult must be a finite number > 0, got {mult!r}")


def _combined_mask(
    mask: Any, is_causal: bool, queries: tf.Tensor, keys: tf.Tensor
) -> Optional[tf.Tensor]:
    """The boolean mask (B?, N?, T?, S) of attended keys, or None for full attention."""
    if mask is None and not is_causal:
        return None
    combined = tf.ones([1, 1, 1, keys], tf.bool)
    if mask is not None:
        mask = tf.convert_to_tensor(mask)
        if mask.dtype.is_floating:
            raise ValueError(
                f"U.dot_product_attention: mask must be boolean (True = attend), got"
                f" {mask.dtype.name}; pass an additive mask as bias"
            )
        mask = tf.cast(mask, tf.bool)
        while len(mask.shape) < 4:
            mask = mask[None]
        combined = tf.logical_and(combined, mask)
    if is_causal:
        causal = tf.linalg.band_part(tf.ones([queries, keys], tf.bool), -1, 0)
        combined = tf.logical_and(combined, causal[None, None])
    return combined


def output_scale(
    mask: Optional[tf.Tensor], keys: Any, logit_variance: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """(alpha, n) per query row, each float32 broadcastable to (B, N, T): alpha(n_t) with n_t
    the attended keys of each row (all ``keys`` for a fully masked row, as Keras mixes them)."""
    keys_t = tf.cast(keys, tf.int32)
    if mask is None:
        counts = keys_t[None, None, None]
    else:
        counts = tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)  # (B?, N?, T?)
        counts = tf.where(counts > 0, counts, keys_t)
    # alpha for every possible count 0..S, gathered per row (cheap: S+1 values).
    table = tf.math.rsqrt(sum_square_weights_tf(tf.range(1, keys_t + 1), logit_variance))
    alpha = tf.gather(tf.concat([[1.0], table], 0), counts)
    return tf.stop_gradient(alpha), tf.cast(counts, tf.float32)


def _to_query_layout(per_row: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A per-row factor (B?, N?, T?) as (B?, T?, N?, 1), to multiply (B, T, N, H) tensors."""
    return tf.cast(tf.transpose(per_row, [0, 2, 1])[..., None], dtype)


def qk_gradient_scales(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    out_scale: tf.Tensor,
    counts: tf.Tensor,
    temperature: float,
    head_dim: int,
    value_dim: int,
    queries: tf.Tensor,
    keys: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor]:
    """(beta_q per row (B?, N?, T?), beta_k (B?, N?, 1, 1)): backward-only factors that make
    the q and k gradients unit for iid unit q, k, v and upstream gradient.

    Row t's logit gradient is a_t w (d - w.d) with d_s = g_t.v_s (variance Hv), so the q
    gradient has variance temperature^2 a_t^2 Hv G(n_t), G = E[S_2 - 2 S_3 + S_2^2] the
    softmax Jacobian moment; the k gradient, averaged over keys, the same summed over rows / S.
    A row with one key (G = 0) has a zero q gradient and keeps factor 1.
    """
    variance = temperature**2 * head_dim
    moment = gradient_moment_tf(tf.cast(counts, tf.int32), variance)  # (B?, N?, T?)
    q_variance = temperature**2 * value_dim * tf.square(out_scale) * moment
    beta_q = tf.where(q_variance > 0, tf.math.rsqrt(tf.maximum(q_variance, 1e-30)), 1.0)
    rows_per_key = tf.cast(queries, tf.float32) / tf.cast(keys, tf.float32)
    k_variance = tf.reduce_mean(q_variance, axis=-1, keepdims=True) * rows_per_key
    beta_k = tf.where(k_variance > 0, tf.math.rsqrt(tf.maximum(k_variance, 1e-30)), 1.0)
    # (B?, N?, 1) -> (B?, 1, N?, 1) for key (B, S, N, H)
    return tf.stop_gradient(beta_q), tf.stop_gradient(_to_query_layout(beta_k, tf.float32))


def attention_with_probabilities(  # pylint: disable=too-many-arguments,too-many-locals,too-many-positional-arguments
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    bias: Any = None,
    mask: Any = None,
    scale: Optional[float] = None,
    is_causal: bool = False,
    mult: float = 1.0,
    flash_attention: Optional[bool] = None,
    attn_logits_soft_cap: Optional[float] = None,
    gradient: str = "unit",
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(dot_product_attention(...), probabilities (B, N, T, S))``: the plain softmax
    probabilities, which ``uu.MultiHeadAttention`` returns as its attention scores."""
    query, key, value = (tf.convert_to_tensor(t) for t in (query, key, value))
    _check_arguments(
        query, key, value, scale, mult, flash_attention, attn_logits_soft_cap, gradient
    )
    dtype = query.dtype
    key, value = tf.cast(key, dtype), tf.cast(value, dtype)
    head_dim, heads, kv_heads = int(query.shape[-1]), int(query.shape[2]), int(key.shape[2])
    if kv_heads != heads:  # grouped-query attention: each kv head serves heads/kv_heads queries
        key = tf.repeat(key, heads // kv_heads, axis=2)
        value = tf.repeat(value, heads // kv_heads, axis=2)
    temperature = (head_dim**-0.5 if scale is None else float(scale)) * float(mult)
    queries, keys = tf.shape(query)[1], tf.shape(key)[1]
    combined = _combined_mask(mask, is_causal, queries, keys)

    alpha, counts = output_scale(combined, keys, temperature**2 * head_dim)
    factor = alpha**OUTPUT_EXPONENT  # (B?, N?, T?)
    if gradient == "unit":
        beta_q, beta_k = qk_gradient_scales(
            factor, counts, temperature, head_dim, int(value.shape[-1]), queries, keys
        )
        # A kv head repeated for g query heads sums g gradients: 1/sqrt(g) each.
        group = (kv_heads / heads) ** 0.5
        query = scaling(query, backward=_to_query_layout(beta_q, dtype))
        key = scaling(key, backward=tf.cast(beta_k, dtype) * group)
        value = scaling(value, backward=group)
    q, k = precision.operand(query, "activation"), precision.operand(key, "activation")
    scores = precision.output(tf.einsum("btnh,bsnh->bnts", q, k))  # (B, N, T, S)
    logits = tf.cast(scores, tf.float32) * temperature
    if bias is not None:
        logits = logits + tf.cast(bias, tf.float32)
    if combined is not None:
        logits = tf.where(combined, logits, _LARGE_NEGATIVE)
    probabilities = tf.cast(tf.nn.softmax(logits, axis=-1), dtype)

    weights = probabilities
    if precision.current() is not None:
        # Probabilities average 1/n_t: times n_t they are unit-scale for a low-precision cast.
        weights = probabilities * tf.cast(counts[..., None], dtype)
        factor = factor / counts
    mixed = precision.output(
        tf.einsum(
            "bnts,bsnh->btnh",
            precision.operand(weights, "activation"),
            precision.operand(value, "activation"),
        )
    )  # (B, T, N, Hv)
    return mixed * _to_query_layout(factor, dtype), probabilities


def dot_product_attention(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    query: tf.Tensor,
    key: tf.Tensor,
    value: tf.Tensor,
    bias: Any = None,
    mask: Any = None,
    scale: Optional[float] = None,
    is_causal: bool = False,
    mult: float = 1.0,
    flash_attention: Optional[bool] = None,
    attn_logits_soft_cap: Optional[float] = None,
    gradient: str = "unit",
) -> tf.Tensor:
    """Unit-scaled ``keras.ops.dot_product_attention`` (see the module docstring for the rule):
    Keras's output for query row t times alpha(n_t), n_t its number of attended keys."""
    out, _ = attention_with_probabilities(
        query,
        key,
        value,
        bias,
        mask,
        scale,
        is_causal,
        mult,
        flash_attention,
        attn_logits_soft_cap,
        gradient,
    )
    return out
