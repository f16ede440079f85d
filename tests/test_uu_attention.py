"""scmm.U.dot_product_attention and scmm.uu.MultiHeadAttention: the mask-aware per-query
output scale, Keras references with folded weights, causality, Keras contract, errors."""

import pathlib
from typing import Any, Callable, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.functional.attention import output_scale

RNG = np.random.default_rng(0)
B, T, N, H = 4, 128, 4, 32


def _qkv(
    batch: int = B, seq: int = T, heads: int = N, head_dim: int = H, kv_heads: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape_kv = (batch, seq, kv_heads or heads, head_dim)
    return (
        RNG.normal(size=(batch, seq, heads, head_dim)).astype("float32"),
        RNG.normal(size=shape_kv).astype("float32"),
        RNG.normal(size=shape_kv).astype("float32"),
    )


def _row_alpha(mask: Any, keys: int, variance: float = 1.0) -> np.ndarray:
    """alpha per (B?, T?, N?, 1), to multiply an attention output by."""
    alpha, _ = output_scale(mask, keys, variance)
    return np.transpose(alpha.numpy(), [0, 2, 1])[..., None]


def _padding_mask(lengths: list[int], seq: int = T) -> np.ndarray:
    return (np.arange(seq)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]


def _with_grads(
    fn: Callable, arrays: Any, upstream_seed: int = 5, upstream_scale: Any = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    tensors = [tf.constant(t) for t in arrays]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = fn(*tensors)
        upstream = tf.random.stateless_normal(tf.shape(out), seed=[upstream_seed, 0])
        if upstream_scale is not None:
            upstream = upstream * upstream_scale
        loss = tf.reduce_sum(out * upstream)
    return out.numpy(), [g.numpy() for g in tape.gradient(loss, tensors)]


CASES: dict[str, dict[str, Any]] = {
    "full": {},
    "causal": {"is_causal": True},
    "mask": {"mask": _padding_mask([5, 40, 128, 77])},
    "mask+causal": {"mask": _padding_mask([5, 40, 128, 77]), "is_causal": True},
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_keras_times_per_query_alpha_with_gradients(case: str) -> None:
    kwargs = CASES[case]
    q, k, v = _qkv()
    mask = kwargs.get("mask")
    combined = None if mask is None else tf.constant(mask)
    if kwargs.get("is_causal"):
        causal = np.tril(np.ones((T, T), bool))[None, None]
        combined = tf.constant(causal if mask is None else mask & causal)
    alpha = _row_alpha(combined, T)
    out, grads = _with_grads(lambda a, b, c: U.dot_product_attention(a, b, c, **kwargs), [q, k, v])
    ref, ref_grads = _with_grads(
        lambda a, b, c: keras.ops.dot_product_attention(a, b, c, **kwargs),
        [q, k, v],
        upstream_scale=alpha,
    )
    np.testing.assert_allclose(out, ref * alpha, rtol=1e-5, atol=1e-6)
    # alpha is a constant of the mask, so the gradients are the true ones of alpha * attention.
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_grouped_query_attention_and_umup_temperature() -> None:
    q, k, v = _qkv(kv_heads=2)
    out = U.dot_product_attention(q, k, v, scale=1.0 / H, mult=2.0)
    ref = keras.ops.dot_product_attention(q, k, v, scale=2.0 / H)
    variance = (2.0 / H) ** 2 * H
    np.testing.assert_allclose(out, ref * _row_alpha(None, T, variance), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_output_and_gradients_are_unit(causal: bool) -> None:
    out, (gq, gk, gv) = _with_grads(
        lambda a, b, c: U.dot_product_attention(a, b, c, is_causal=causal), _qkv(seq=256)
    )
    # Output and v-gradient are the rule's claim (iid values); measured q/k: 0.94-1.0.
    assert np.std(out) == pytest.approx(1.0, rel=0.1)
    assert np.std(gv) == pytest.approx(1.0, rel=0.1)
    assert np.std(gq) == pytest.approx(1.0, rel=0.15)
    assert np.std(gk) == pytest.approx(1.0, rel=0.15)


def test_short_and_long_rows_are_both_unit() -> None:
    lengths = [2, 6, 24, 128]
    q, k, v = _qkv()
    out = U.dot_product_attention(q, k, v, mask=_padding_mask(lengths)).numpy()
    for b, length in enumerate(lengths):
        assert np.std(out[b]) == pytest.approx(1.0, rel=0.1), length
    # The scales differ by > 3x: one constant from the kv length could not serve both ends.
    alpha = _row_alpha(tf.constant(_padding_mask(lengths)), T)[:, 0, 0, 0]
    assert alpha[3] / alpha[0] > 3.0
    # Causal: the first queries (1..8 keys) and the last ones are both unit.
    causal = U.dot_product_attention(q, k, v, is_causal=True).numpy()
    assert np.std(causal[:, :8]) == pytest.approx(1.0, rel=0.1)
    assert np.std(causal[:, -32:]) == pytest.approx(1.0, rel=0.1)


def test_causality_by_perturbation() -> None:
    q, k, v = _qkv(batch=2, seq=32)
    base = U.dot_product_attention(q, k, v, is_causal=True).numpy()
    k2, v2 = k.copy(), v.copy()
    k2[:, 20:] += 5.0
    v2[:, 20:] -= 3.0
    moved = U.dot_product_attention(q, k2, v2, is_causal=True).numpy()
    np.testing.assert_array_equal(moved[:, :20], base[:, :20])
    assert not np.allclose(moved[:, 20:], base[:, 20:])


def test_dynamic_sequence_matches_static() -> None:
    q, k, v = _qkv(batch=2, seq=16)
    spec = tf.TensorSpec([None, None, N, H], tf.float32)
    dynamic = tf.function(
        lambda a, b, c: U.dot_product_attention(a, b, c, is_causal=True),
        input_signature=[spec, spec, spec],
    )
    np.testing.assert_allclose(
        dynamic(q, k, v), U.dot_product_attention(q, k, v, is_causal=True), rtol=1e-6
    )


def test_attention_errors() -> None:
    q, k, v = _qkv(batch=1, seq=4)
    with pytest.raises(ValueError, match="flash attention"):
        U.dot_product_attention(q, k, v, flash_attention=True)
    with pytest.raises(ValueError, match="attn_logits_soft_cap"):
        U.dot_product_attention(q, k, v, attn_logits_soft_cap=30.0)
    with pytest.raises(ValueError, match="must be 4-D"):
        U.dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="mask must be boolean"):
        U.dot_product_attention(q, k, v, mask=np.ones((1, 1, 4, 4), "float32"))
    with pytest.raises(ValueError, match="static multiple"):
        U.dot_product_attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match="mult must be a finite number > 0"):
        U.dot_product_attention(q, k, v, mult=0.0)


# MultiHeadAttention -------------------------------------------------------------------------

D = 64
X = RNG.normal(size=(4, 32, D)).astype("float32")


def _keras_twin(
    layer: keras.layers.Layer, x: np.ndarray, scheme: str = "unit", mult: float = 1.0
) -> keras.layers.MultiHeadAttention:
    """keras MHA holding ``layer``'s weights times the scales the rule applies (the four
    projections' forward scales: 64^-1/2 each here; u-muP's temperature folded into query)."""
    plain = keras.layers.MultiHeadAttention(N, D // N)
    plain(x, x)
    weights = [w.numpy() for w in layer.weights]
    scales = [D**-0.5, 1.0] * 4  # kernels scaled, biases as they are
    folded = [w * s for w, s in zip(weights, scales)]
    # Keras's logits are q.k / sqrt(hd); the rule's are q.k mult / sqrt(hd) (unit) or
    # q.k mult / hd (umup): fold the difference into the query projection.
    extra = mult / np.sqrt(D // N) if scheme == "umup" else mult
    folded[0], folded[1] = folded[0] * extra, folded[1] * extra
    plain.set_weights(folded)
    return plain


def _randomise_biases(layer: keras.layers.Layer) -> None:
    for w in layer.weights:
        if w.path.endswith("bias"):
            w.assign(RNG.normal(size=w.shape) * 0.3)


@pytest.mark.parametrize("scheme", ["unit", "umup"])
@pytest.mark.parametrize("case", ["full", "causal", "mask"])
def test_mha_equals_keras_with_folded_weights(scheme: str, case: str) -> None:
    layer = uu.MultiHeadAttention(N, D // N, scheme=scheme, mult=1.5)
    layer(X, X)
    _randomise_biases(layer)
    plain = _keras_twin(layer, X, scheme, 1.5)
    kwargs: dict = {}
    mask4 = None
    if case == "causal":
        kwargs = {"use_causal_mask": True}
        mask4 = np.tril(np.ones((32, 32), bool))[None, None]
    if case == "mask":
        mask3 = np.broadcast_to(_padding_mask([3, 9, 32, 20], 32)[:, 0], (4, 32, 32))
        kwargs = {"attention_mask": mask3}
        mask4 = mask3[:, None]
    temperature = (1.5 / (D // N)) if scheme == "umup" else 1.5 / np.sqrt(D // N)
    alpha = _row_alpha(None if mask4 is None else tf.constant(mask4), 32, temperature**2 * (D // N))
    alpha = alpha[..., 0]  # (B?, T?, 1): one scale per query, shared by the heads
    out_bias = layer.weights[-1].numpy()
    expected = alpha * (plain(X, X, **kwargs).numpy() - out_bias) + out_bias
    np.testing.assert_allclose(layer(X, X, **kwargs), expected, rtol=1e-5, atol=2e-6)


def test_mha_scales_and_masked_rows() -> None:
    # Query and key/value inputs distinct: the query feeds q (unit grad), the other k and v
    # (two unit gradients: sqrt 2). The output is ~1 + O(d^-1/2): k_s and v_s are projections
    # of the same x_s, so for fixed weights they correlate and the attended values share a
    # component the softmax average does not shrink (measured 1.26 at d = 64, 1.06 at 256).
    keras.utils.set_random_seed(0)
    x = RNG.normal(size=(4, 128, 256)).astype("float32")
    stats = uu_checks.scale_stats(
        uu.MultiHeadAttention(4, 64), [x, x], positional=True, use_causal_mask=True
    )
    assert stats["output"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_1"] == pytest.approx(np.sqrt(2.0), rel=0.1)
    layer = uu.MultiHeadAttention(N, D // N)
    # Propagated masks: a value padding mask equals the same attention_mask.
    valid = np.arange(32)[None, :] < np.array([4, 12, 32, 7])[:, None]
    inputs = keras.Input(shape=(32, D))
    masked = keras.layers.Masking()(inputs)
    model = keras.Model(inputs, layer(masked, masked))
    xm = X * valid[..., None]
    explicit = layer(xm, xm, attention_mask=valid[:, None, :] & valid[:, :, None])
    np.testing.assert_allclose(model(xm), explicit, rtol=1e-5, atol=1e-6)


def test_mha_causality() -> None:
    layer = uu.MultiHeadAttention(N, D // N, scheme="umup")
    base = layer(X, X, use_causal_mask=True).numpy()
    x2 = X.copy()
    x2[:, 20:] += 2.0
    moved = layer(x2, x2, use_causal_mask=True).numpy()
    np.testing.assert_array_equal(moved[:, :20], base[:, :20])


def test_mha_parameter_info_and_keras_config() -> None:
    plain = keras.layers.MultiHeadAttention(N, 8, value_dim=12, name="mha")
    plain(X, X)
    config = {k: v for k, v in plain.get_config().items() if k != "kernel_initializer"}
    layer = uu.MultiHeadAttention.from_config({**config, "scheme": "umup", "precision": None})
    layer(X, X)
    assert [(w.path, w.shape) for w in layer.weights] == [(w.path, w.shape) for w in plain.weights]
    info = layer.parameter_info()
    assert list(info) == [
        f"{p}_dense.{w}" for p in ("query", "key", "value", "output") for w in ("kernel", "bias")
    ]
    assert info["query_dense.kernel"].fan_in == D
    assert info["output_dense.kernel"].fan_in == N * 12
    assert (
        layer.query_dense.__class__ is uu.EinsumDense and layer.query_dense.constraint == "forward"
    )
    assert np.std(layer.weights[0].numpy()) == pytest.approx(1.0, rel=0.05)  # N(0, 1) init


def test_mha_keras_contract(tmp_path: pathlib.Path) -> None:
    layer = uu.MultiHeadAttention(N, D // N, mult=0.5)
    layer(X, X)
    uu_checks.check_config_round_trip(layer)

    def make() -> keras.layers.Layer:
        return uu.MultiHeadAttention(2, 16, scheme="umup")

    uu_checks.check_keras_file_round_trip(make, [X[:2], X[:2]], tmp_path, positional=True)
    for policy in ("float32", "mixed_bfloat16"):
        uu_checks.check_fit_step(
            make, [X[:2], X[:2]], policy, positional=True, use_causal_mask=True
        )


def test_mha_errors() -> None:
    with pytest.raises(ValueError, match="dropout"):
        uu.MultiHeadAttention(2, 8, dropout=0.1)
    with pytest.raises(ValueError, match="attention_axes"):
        uu.MultiHeadAttention(2, 8, attention_axes=(1, 2))
    with pytest.raises(ValueError, match="use_gate"):
        uu.MultiHeadAttention(2, 8, use_gate=True)
    with pytest.raises(ValueError, match="flash attention"):
        uu.MultiHeadAttention(2, 8, flash_attention=True)
    with pytest.raises(ValueError, match="unknown unit-scaling scheme 'mup'"):
        uu.MultiHeadAttention(2, 8, scheme="mup")
    image = np.ones((1, 4, 4, 8), "float32")
    with pytest.raises(ValueError, match=r"\(batch, seq, features\)"):
        uu.MultiHeadAttention(2, 8)(image, image)
