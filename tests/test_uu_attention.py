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
from scmm import precision, uu
from scmm.formats import quantise
from scmm.precision_settings import PrecisionSettings
from scmm.functional.attention import OUTPUT_EXPONENT, output_scale, qk_gradient_scales

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
    """The rule's output factor alpha^OUTPUT_EXPONENT per (B?, T?, N?, 1)."""
    alpha, _ = output_scale(mask, keys, variance)
    return np.transpose(alpha.numpy() ** OUTPUT_EXPONENT, [0, 2, 1])[..., None]


def _iid_output_std(mask: Any, keys: int, shape: tuple[int, ...], variance: float = 1.0) -> float:
    """What the rule predicts for iid unit values: row t's plain output has variance
    E[sum_s w_ts^2] = alpha_t^-2, times the factor alpha_t^(2 e): sqrt(mean alpha^(2 e - 2))."""
    alpha, _ = output_scale(mask, keys, variance)
    per_row = np.broadcast_to(alpha.numpy() ** (2 * OUTPUT_EXPONENT - 2), shape)
    return float(np.sqrt(per_row.mean()))


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
    out, grads = _with_grads(
        lambda a, b, c: U.dot_product_attention(a, b, c, gradient="true", **kwargs), [q, k, v]
    )
    ref, ref_grads = _with_grads(
        lambda a, b, c: keras.ops.dot_product_attention(a, b, c, **kwargs),
        [q, k, v],
        upstream_scale=alpha,
    )
    np.testing.assert_allclose(out, ref * alpha, rtol=1e-5, atol=1e-6)
    # alpha is a constant of the mask, so the gradients are the true ones of alpha * attention.
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # gradient="unit" (the default): the same forward and value gradient; the q and k
    # gradients are the true ones times the backward-only factors beta_q (per row), beta_k.
    unit_out, (gq, gk, gv) = _with_grads(
        lambda a, b, c: U.dot_product_attention(a, b, c, **kwargs), [q, k, v]
    )
    np.testing.assert_array_equal(unit_out, out)
    np.testing.assert_array_equal(gv, grads[2])
    raw_alpha, counts = output_scale(combined, T, 1.0)
    beta_q, beta_k = qk_gradient_scales(raw_alpha**OUTPUT_EXPONENT, counts, H**-0.5, H, H, T, T)
    beta_q = np.transpose(beta_q.numpy(), [0, 2, 1])[..., None]  # (B?, T?, N?, 1)
    np.testing.assert_allclose(gq, grads[0] * beta_q, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, grads[1] * beta_k.numpy(), rtol=1e-4, atol=1e-5)


def test_grouped_query_attention_and_umup_temperature() -> None:
    q, k, v = _qkv(kv_heads=2)
    out = U.dot_product_attention(q, k, v, scale=1.0 / H, mult=2.0)
    ref = keras.ops.dot_product_attention(q, k, v, scale=2.0 / H)
    variance = (2.0 / H) ** 2 * H
    np.testing.assert_allclose(out, ref * _row_alpha(None, T, variance), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_output_and_gradients_follow_the_rule(causal: bool) -> None:
    seq = 256
    out, (gq, gk, gv) = _with_grads(
        lambda a, b, c: U.dot_product_attention(a, b, c, is_causal=causal), _qkv(seq=seq)
    )
    mask = tf.constant(np.tril(np.ones((seq, seq), bool))[None, None]) if causal else None
    predicted = _iid_output_std(mask, seq, (B, N, seq))
    assert np.std(out) == pytest.approx(predicted, rel=0.1)
    # The value gradient is the true one: key s's sums alpha_t^(2e) w_ts^2 over the rows that
    # attend it, on average over keys the same mean of alpha^(2e - 2) as the output. The q/k
    # backward factors make those unit.
    assert np.std(gv) == pytest.approx(predicted, rel=0.1)
    assert np.std(gq) == pytest.approx(1.0, rel=0.1)
    assert np.std(gk) == pytest.approx(1.0, rel=0.1)
    # The true q/k gradients are far from unit: that is what the factors are for.
    _, (true_gq, _, _) = _with_grads(
        lambda a, b, c: U.dot_product_attention(a, b, c, is_causal=causal, gradient="true"),
        _qkv(seq=seq),
    )
    assert not 0.7 < np.std(true_gq) < 1.4


def test_values_shared_across_keys_get_the_square_root_of_alpha() -> None:
    # The other end of what alpha^1/2 is a middle of: a value shared by every key passes the
    # average unchanged, so the output is alpha^1/2 itself, where iid values give alpha^-1/2.
    q, k, _ = _qkv()
    shared = np.broadcast_to(RNG.normal(size=(B, 1, N, H)), (B, T, N, H)).astype("float32")
    out = U.dot_product_attention(q, k, shared).numpy()
    np.testing.assert_allclose(out, shared * _row_alpha(None, T), rtol=1e-5)
    assert OUTPUT_EXPONENT == 0.5


def test_short_and_long_rows_each_follow_their_own_count() -> None:
    lengths = [2, 6, 24, 128]
    q, k, v = _qkv()
    mask = _padding_mask(lengths)
    out = U.dot_product_attention(q, k, v, mask=mask).numpy()
    for b, length in enumerate(lengths):
        predicted = _iid_output_std(tf.constant(mask[b : b + 1]), T, (1, N, T))
        assert np.std(out[b]) == pytest.approx(predicted, rel=0.1), length
    # The scales differ by > 1.7x: one constant from the kv length could not serve both ends.
    alpha = _row_alpha(tf.constant(mask), T)[:, 0, 0, 0]
    assert alpha[3] / alpha[0] > 1.7
    # Causal: the first queries (1..8 keys) and the last ones both follow their counts.
    causal = U.dot_product_attention(q, k, v, is_causal=True).numpy()
    triangle = tf.constant(np.tril(np.ones((T, T), bool))[None, None])
    alpha_rows, _ = output_scale(triangle, T, 1.0)
    for rows in (slice(0, 8), slice(T - 32, T)):
        per_row = alpha_rows.numpy()[0, 0, rows] ** (2 * OUTPUT_EXPONENT - 2)
        assert np.std(causal[:, rows]) == pytest.approx(np.sqrt(per_row.mean()), rel=0.1)


def test_simulated_fp8_rounds_every_operand_of_both_einsums(monkeypatch: Any) -> None:
    q, k, v = _qkv(batch=2, seq=16)
    seen: list[np.ndarray] = []
    original = precision.operand

    def spy(x: tf.Tensor, role: str) -> tf.Tensor:
        seen.append(x.numpy())
        return original(x, role)

    monkeypatch.setattr(precision, "operand", spy)
    fp8 = PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")
    with precision.scope(fp8):
        rounded = U.dot_product_attention(q, k, v, is_causal=True).numpy()
    assert len(seen) == 4  # q, k (scores); probabilities x n_t, v (mixing)
    np.testing.assert_array_equal(seen[0], q)
    np.testing.assert_array_equal(seen[3], v)
    # Rounding is idempotent: inputs rounded beforehand give the same bits only if every
    # operand (the value included) is rounded inside.
    with precision.scope(fp8):
        qq, kq, vq = (quantise(tf.constant(t), "e4m3", saturate=True) for t in (q, k, v))
        pre_rounded = U.dot_product_attention(qq, kq, vq, is_causal=True).numpy()
    np.testing.assert_array_equal(rounded, pre_rounded)
    assert not np.array_equal(rounded, U.dot_product_attention(q, k, v, is_causal=True).numpy())


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
    with pytest.raises(ValueError, match="gradient must be one of .* got 'exact'"):
        U.dot_product_attention(q, k, v, gradient="exact")


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
    # Cross-attention: the query feeds q; the other input feeds k and v, whose gradients add,
    # so it gets 1/sqrt 2 (share_fan_out). The q and k gradients are unit; the v gradient, like
    # the output, follows the iid prediction p: the k/v input's is sqrt((1 + p^2) / 2). The
    # output is p plus a few percent: k_s and v_s are projections of the same x_s, so for fixed
    # weights the attended values share a component (measured 0.516 against 0.493 here).
    keras.utils.set_random_seed(0)
    x, memory = (RNG.normal(size=(4, 128, 256)).astype("float32") for _ in range(2))
    stats = uu_checks.scale_stats(
        uu.MultiHeadAttention(4, 64), [x, memory], positional=True, use_causal_mask=True
    )
    causal = tf.constant(np.tril(np.ones((128, 128), bool))[None, None])
    predicted = _iid_output_std(causal, 128, (1, 1, 128))
    assert stats["output"] == pytest.approx(predicted, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_input_1"] == pytest.approx(np.sqrt((1 + predicted**2) / 2), rel=0.1)
    # Self-attention, one tensor for all three projections: 1/sqrt 3 each, so its gradient is
    # sqrt((2 + p^2) / 3) and not sqrt(2 + p^2) (1.5 here).
    layer, shared = uu.MultiHeadAttention(4, 64), tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(shared)
        out = layer(shared, shared, use_causal_mask=True)
        upstream = tf.random.stateless_normal(tf.shape(out), seed=[3, 0])
        objective = tf.reduce_sum(out * upstream)
    expected = np.sqrt((2 + predicted**2) / 3)
    assert np.std(tape.gradient(objective, shared)) == pytest.approx(expected, rel=0.1)
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
    layer = uu.MultiHeadAttention(N, D // N, mult=0.5, gradient="true")
    layer(X, X)
    assert uu_checks.check_config_round_trip(layer).gradient == "true"

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
    with pytest.raises(ValueError, match="gradient must be one of .* got 'qk'"):
        uu.MultiHeadAttention(2, 8, gradient="qk")
    with pytest.raises(ValueError, match="unknown unit-scaling scheme 'mup'"):
        uu.MultiHeadAttention(2, 8, scheme="mup")
    image = np.ones((1, 4, 4, 8), "float32")
    with pytest.raises(ValueError, match=r"\(batch, seq, features\)"):
        uu.MultiHeadAttention(2, 8)(image, image)
