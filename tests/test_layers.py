"""Numerics of the baseline layers against plain numpy references (float64)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import as_float64, present

from scmm.layers import (
    FFN,
    Attention,
    CausalConv,
    Embedding,
    LayerNorm,
    Projection,
    RecurrentHighway,
    Residual,
    Shift,
    relative_shift,
    sinusoid_embedding,
)
from scmm.layers.residual import NormPlacement
from scmm.schemes.scheme import RegularScheme, UnitScheme

# (input, weights by name, float64 reference output)
AttentionCase = tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]

# References ---------------------------------------------------------------------------------


def np_layer_norm(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5
) -> np.ndarray:
    """Layer norm over the last axis in float64."""
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_sinusoid(distance: int, frequencies: int, max_period: float) -> np.ndarray:
    """e_r = [sin(2 pi r / P_f)]_f ++ [cos(2 pi r / P_f)]_f, P_f = 4 (max_period/4)^(f/(F-1))."""
    e = np.zeros(2 * frequencies)
    for f in range(frequencies):
        period = 4.0 * (max_period / 4.0) ** (f / (frequencies - 1))
        e[f] = math.sin(2 * math.pi * distance / period)
        e[frequencies + f] = math.cos(2 * math.pi * distance / period)
    return e


def np_attention(
    x: np.ndarray,
    weights: dict[str, np.ndarray],
    frequencies: int,
    max_period: float,
    use_positions: bool = True,
) -> np.ndarray:
    """Causal relative-position attention, one query and one key at a time (float64)."""
    qkv, positional = weights["qkv"], weights["positional"]
    batch, seq, _ = x.shape
    heads, head_size = qkv.shape[2], qkv.shape[3]
    q = np.einsum("bsh,hna->bnsa", x, qkv[:, 0])
    k = np.einsum("bsh,hna->bnsa", x, qkv[:, 1])
    v = np.einsum("bsh,hna->bnsa", x, qkv[:, 2])
    # p_r = W_pos^T e_r per head: (heads, head_size) for every distance r.
    pos_keys = [
        np.einsum("f,fna->na", np_sinusoid(r, frequencies, max_period), positional)
        for r in range(seq)
    ]
    mixed = np.zeros((batch, seq, heads, head_size))
    for i in range(seq):
        scores = np.zeros((batch, heads, i + 1))
        for j in range(i + 1):
            score = np.sum(q[:, :, i] * k[:, :, j], axis=-1)  # (batch, heads)
            if use_positions:
                score = score + np.sum(q[:, :, i] * pos_keys[i - j][None], axis=-1)
            scores[:, :, j] = score / math.sqrt(head_size)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for j in range(i + 1):
            mixed[:, i] += probs[:, :, j, None] * v[:, :, j]
    return np.einsum("bsna,nah->bsh", mixed, weights["output_kernel"]) + weights["output_bias"]


def make_attention(query_chunk: int, seed: int = 3) -> Attention:
    """The small attention layer these tests use (hidden 32, 2 heads, 8 frequencies)."""
    layer = Attention(32, 2, 16, 8, 50.0, query_chunk=query_chunk, seed=seed)
    layer.build(None)
    return layer


def set_random_attention_weights(
    layer: Attention, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random weights (non-zero bias, large position term); returns them as float64."""
    h, n, a, f = layer.hidden_size, layer.heads, layer.head_size, layer.frequencies
    weights = {
        "qkv": rng.normal(0, h**-0.5, (h, 3, n, a)),
        # Large enough that the position term changes the result substantially.
        "positional": rng.normal(0, 1.0, (2 * f, n, a)),
        "output_kernel": rng.normal(0, (n * a) ** -0.5, (n, a, h)),
        "output_bias": rng.normal(0, 0.5, (h,)),
    }
    for name, value in weights.items():
        getattr(layer, name).assign(value.astype(np.float32))
    return {name: as_float64(getattr(layer, name)) for name in weights}


# Causality of the bare sequence mixers ----------------------------------------------------


def _mixer(kind: str) -> keras.layers.Layer:
    if kind == "attention":
        layer = Attention(16, 2, 8, 4, 32.0, query_chunk=128, seed=5)
    elif kind == "attention_chunked":
        layer = Attention(16, 2, 8, 4, 32.0, query_chunk=5, seed=5)
    elif kind == "conv":
        layer = CausalConv(16, kernel_size=3, groups=4, seed=5)
    elif kind == "rnn":
        layer = RecurrentHighway(16, seed=5)
    else:
        raise ValueError(kind)
    layer.build(None)
    if kind != "rnn":  # non-zero biases so nothing is trivially zero
        bias = layer.output_bias if kind.startswith("attention") else layer.bias
        assert bias is not None
        bias.assign(np.random.default_rng(1).normal(0, 0.1, bias.shape).astype(np.float32))
    return layer


@pytest.mark.parametrize("kind", ["attention", "attention_chunked", "conv", "rnn"])
def test_sequence_mixer_is_causal(kind: str) -> None:
    """Perturbing input t leaves outputs < t bitwise equal and changes outputs at t and t+1."""
    layer = _mixer(kind)
    seq = 12
    rng = np.random.default_rng(0)
    x = rng.normal(size=(seq, 16)).astype(np.float32)
    # Row t of the batch is x with position t replaced: one forward pass covers every t, and
    # the unperturbed batch has the same shape so each row runs the same kernels.
    base = np.broadcast_to(x, (seq, seq, 16)).copy()
    perturbed = base.copy()
    for t in range(seq):
        perturbed[t, t] = rng.normal(size=16)
    out_base = layer(tf.constant(base)).numpy()
    out_pert = layer(tf.constant(perturbed)).numpy()
    for t in range(seq):
        np.testing.assert_array_equal(out_pert[t, :t], out_base[t, :t], err_msg=f"t={t}")
        assert np.abs(out_pert[t, t] - out_base[t, t]).max() > 1e-4, f"t={t} did not change"
        if t + 1 < seq:  # a sequence mixer carries the change forward
            assert np.abs(out_pert[t, t + 1] - out_base[t, t + 1]).max() > 1e-4, f"t={t}"


def test_ffn_is_position_wise() -> None:
    """The token mixer only changes the output at the perturbed position."""
    layer = FFN(8, multiple=2, seed=2)
    layer.build(None)
    x = np.random.default_rng(0).normal(size=(1, 6, 8)).astype(np.float32)
    x2 = x.copy()
    x2[0, 3] += 1.0
    a, b = layer(tf.constant(x)).numpy(), layer(tf.constant(x2)).numpy()
    np.testing.assert_array_equal(np.delete(a, 3, axis=1), np.delete(b, 3, axis=1))
    assert not np.allclose(a[0, 3], b[0, 3])


# Relative-position attention ----------------------------------------------------------------


def test_sinusoid_features_are_not_degenerate() -> None:
    """Every feature varies with distance (an aliased period would give a constant column)."""
    table = sinusoid_embedding(256, 128, 1024.0)  # the paper's settings
    assert table.shape == (256, 256)
    assert table.std(axis=0).min() > 0.1
    with pytest.raises(ValueError, match="max_period"):
        sinusoid_embedding(16, 4, 2.0)


def test_sinusoid_embedding_matches_formula() -> None:
    """sinusoid_embedding equals the sin/cos formula, row r for distance r."""
    table = sinusoid_embedding(40, 6, 30.0)
    assert table.shape == (40, 12) and table.dtype == np.float32
    expected = np.stack([np_sinusoid(r, 6, 30.0) for r in range(40)])
    np.testing.assert_allclose(table, expected, atol=1e-6)


@pytest.fixture(name="attention_case", scope="module")
def fixture_attention_case() -> AttentionCase:
    """Random input, shared weights and the float64 loop reference (computed once)."""
    rng = np.random.default_rng(42)
    seq = 160
    layer = make_attention(query_chunk=256)
    weights = set_random_attention_weights(layer, rng)
    x = rng.normal(size=(2, seq, 32)).astype(np.float32)
    expected = np_attention(as_float64(x), weights, frequencies=8, max_period=50.0)
    return x, weights, expected


@pytest.mark.parametrize("query_chunk", [256, 128, 64, 48])
def test_attention_matches_naive_reference(attention_case: AttentionCase, query_chunk: int) -> None:
    """Every query_chunk (one chunk, divisors, a non-divisor) matches the loop reference."""
    x, weights, expected = attention_case
    layer = make_attention(query_chunk=query_chunk)
    for name, value in weights.items():
        getattr(layer, name).assign(value.astype(np.float32))
    out = layer(tf.constant(x)).numpy()
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_attention_reference_is_sensitive_to_positions(attention_case: AttentionCase) -> None:
    """Guards the test above: dropping the position term changes the output substantially."""
    x, weights, expected = attention_case
    no_positions = np_attention(
        as_float64(x), weights, frequencies=8, max_period=50.0, use_positions=False
    )
    assert np.abs(no_positions - expected).max() > 0.1


def test_attention_xla_matches_eager_reference(attention_case: AttentionCase) -> None:
    """The XLA-compiled chunked layer matches the loop reference too."""
    x, weights, expected = attention_case
    layer = make_attention(query_chunk=48)
    for name, value in weights.items():
        getattr(layer, name).assign(value.astype(np.float32))
    out = tf.function(layer.call, jit_compile=True)(tf.constant(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("queries,keys", [(5, 5), (1, 1), (3, 7), (1, 6), (4, 9)])
def test_relative_shift_index_formula(queries: int, keys: int) -> None:
    """out[..., i, j] == scores[..., i, queries - 1 - i + j] wherever j <= keys - queries + i."""
    rng = np.random.default_rng(queries * 10 + keys)
    scores = rng.normal(size=(2, 3, queries, keys)).astype(np.float32)
    for fn in (relative_shift, tf.function(relative_shift, jit_compile=True)):
        out = fn(tf.constant(scores)).numpy()
        assert out.shape == scores.shape
        checked = 0
        for i in range(queries):
            for j in range(keys - queries + i + 1):
                np.testing.assert_array_equal(out[..., i, j], scores[..., i, queries - 1 - i + j])
                checked += 1
        assert checked == sum(keys - queries + i + 1 for i in range(queries))


@pytest.mark.parametrize("queries,keys", [(6, 6), (2, 8)])
def test_relative_shift_moves_distances_to_key_layout(queries: int, keys: int) -> None:
    """Column m of the input holds distance keys-1-m; output (i, j) must hold distance i'-j.

    Queries are the last ``queries`` of ``keys`` positions, so query i sits at position
    i' = keys - queries + i.
    """
    distance_of_column = keys - 1 - np.arange(keys)
    scores = 1000.0 * np.arange(queries)[:, None] + distance_of_column[None, :]
    out = relative_shift(tf.constant(scores[None], tf.float32)).numpy()[0]
    for i in range(queries):
        position = keys - queries + i
        for j in range(position + 1):
            assert out[i, j] == 1000 * i + (position - j), (i, j)


# Layer norm in 16 bits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,atol", [("float16", 4e-3), ("bfloat16", 3e-2)]  # ~2 ulp of outputs of size ~3
)
@pytest.mark.parametrize("offset,spread", [(0.0, 1e4), (1e4, 300.0)])
def test_layer_norm_16bit_large_inputs(
    dtype: str, atol: float, offset: float, spread: float
) -> None:
    """16-bit layer norm of |x| ~ 1e4 is finite and matches float64 to ~2 output ulp."""
    # The statistic a naive 16-bit implementation needs overflows float16 (max 65504).
    assert 1e4**2 > float(np.finfo(np.float16).max)
    rng = np.random.default_rng(0)
    layer = LayerNorm(64, dtype=dtype)
    layer.build(None)
    gamma, beta = rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.5, 64)
    present(layer.gamma).assign(gamma)
    present(layer.beta).assign(beta)
    x = tf.cast(tf.constant(offset + spread * rng.normal(size=(4, 7, 64))), dtype)
    assert float(tf.reduce_max(tf.abs(tf.cast(x, tf.float32)))) > 1e4
    y = layer(x)
    assert y.dtype == tf.as_dtype(dtype)
    y64 = as_float64(y)
    assert np.isfinite(y64).all()
    # Reference on the 16-bit-rounded input and weights, in float64.
    expected = np_layer_norm(as_float64(x), as_float64(layer.gamma), as_float64(layer.beta))
    np.testing.assert_allclose(y64, expected, atol=atol, rtol=0)


def test_layer_norm_float32_matches_reference() -> None:
    """float32 layer norm (epsilon included) matches float64."""
    rng = np.random.default_rng(1)
    layer = LayerNorm(16, epsilon=1e-3)
    layer.build(None)
    present(layer.gamma).assign(rng.normal(size=16).astype(np.float32))
    present(layer.beta).assign(rng.normal(size=16).astype(np.float32))
    x = rng.normal(size=(3, 5, 16)).astype(np.float32) * 0.05  # eps matters at this scale
    expected = np_layer_norm(x, as_float64(layer.gamma), as_float64(layer.beta), eps=1e-3)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


# Other layers against numpy -------------------------------------------------------------------


def test_causal_conv_matches_grouped_loop() -> None:
    """TF grouped layout: kernel (K, hidden/groups, hidden), output channel o in group o//gs."""
    hidden, kernel_size, groups, seq = 12, 3, 3, 7
    rng = np.random.default_rng(0)
    layer = CausalConv(hidden, kernel_size, groups, seed=1)
    layer.build(None)
    present(layer.bias).assign(rng.normal(size=hidden).astype(np.float32))
    kernel, bias = as_float64(layer.kernel), as_float64(layer.bias)
    x = rng.normal(size=(2, seq, hidden)).astype(np.float32)
    group_size = hidden // groups
    expected = np.zeros((2, seq, hidden))
    for t in range(seq):
        for o in range(hidden):
            g = o // group_size
            total = bias[o]
            for k in range(kernel_size):
                source = t - kernel_size + 1 + k
                if source >= 0:
                    inputs = x[:, source, g * group_size : (g + 1) * group_size]
                    total = total + inputs @ kernel[k, :, o]
            expected[:, t, o] = np.maximum(total, 0.0)
    np.testing.assert_allclose(layer(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (expected > 0).any() and (expected == 0).any()  # both ReLU branches exercised


def test_recurrent_highway_matches_loop() -> None:
    """The scanned RHN equals the documented recurrence run step by step."""
    hidden, seq = 6, 9
    rng = np.random.default_rng(0)
    layer = RecurrentHighway(hidden, rebias=1.5, seed=2)
    layer.build(None)
    present(layer.bias).assign(rng.normal(0, 0.5, (2, hidden)).astype(np.float32))
    w, r, b = (as_float64(v) for v in (layer.input_kernel, layer.recurrent_kernel, layer.bias))
    x = rng.normal(size=(3, seq, hidden)).astype(np.float32)
    state = np.zeros((3, hidden))
    expected = []
    for t in range(seq):
        candidate = np.tanh(x[:, t] @ w[:, 0] + state @ r[:, 0] + b[0])
        gate = 1 / (1 + np.exp(-(x[:, t] @ w[:, 1] + state @ r[:, 1] + b[1] - 1.5)))
        state = state + gate * (candidate - state)
        expected.append(state)
    np.testing.assert_allclose(
        layer(tf.constant(x)).numpy(), np.stack(expected, 1), rtol=1e-5, atol=1e-5
    )


def test_projection_ffn_embedding_shift_match_numpy() -> None:
    """Projection, FFN, Embedding and Shift against direct numpy."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    proj = Projection(8, 3, seed=1)
    proj.build(None)
    assert proj.bias is not None
    proj.bias.assign(rng.normal(size=3).astype(np.float32))
    kernel = as_float64(proj.kernel)
    np.testing.assert_allclose(
        proj(tf.constant(x)).numpy(), x @ kernel + as_float64(proj.bias), rtol=1e-5, atol=1e-6
    )
    assert abs(kernel.std() - 8**-0.5) < 0.15  # init N(0, 1/fan_in)

    ffn = FFN(8, multiple=1.5, seed=2)
    ffn.build(None)
    assert ffn.inner_size == 12
    up, down = ffn.up, ffn.down
    hidden = np.maximum(x @ as_float64(up.kernel) + as_float64(up.bias), 0)
    expected = hidden @ as_float64(down.kernel) + as_float64(down.bias)
    np.testing.assert_allclose(ffn(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)

    emb = Embedding(10, 4, seed=3)
    emb.build(None)
    ids = np.array([[0, 9, 3, 3]])
    np.testing.assert_array_equal(emb(tf.constant(ids)).numpy(), emb.embeddings.numpy()[ids])

    shift = Shift(8, seed=4)
    shift.build(None)
    out = shift(tf.constant(x)).numpy()
    np.testing.assert_array_equal(out[:, 1:], x[:, :-1])
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(shift.padding.numpy(), (2, 8)))
    # Padding is a random vector: a zero vector would have zero variance under layer norm.
    assert shift.padding.numpy().std() > 0.3


def test_residual_rules_of_the_schemes() -> None:
    """tau for plain, fixed and mean weighting; bad settings rejected; unit needs a tau."""
    regular, unit = RegularScheme(), UnitScheme()
    assert regular.residual_tau("plain", 0.3, 4) is None
    for scheme in (regular, unit):
        assert scheme.residual_tau("fixed", 0.36, 7) == 0.36
        assert scheme.residual_tau("mean", 0.0, 3) == 0.25  # 1/(3+1)
        with pytest.raises(ValueError, match="weighting"):
            scheme.residual_tau("sum", 0.5, 1)
        with pytest.raises(ValueError, match="alpha"):
            scheme.residual_tau("fixed", 1.0, 1)
    with pytest.raises(ValueError, match="fixed or mean"):
        unit.residual_tau("plain", 0.5, 1)


@pytest.mark.parametrize("norm", ["pre", "post", "none"])
def test_residual_matches_formula(norm: NormPlacement) -> None:
    """Pre-, post- and no-norm residual blocks follow their formulas."""
    rng = np.random.default_rng(0)
    body = Projection(8, 8, seed=1)
    block = Residual(body, 8, norm=norm, tau=0.36)  # skip sqrt(1 - tau) = 0.8, branch 0.6
    block.build(None)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    kernel, bias = as_float64(body.kernel), as_float64(body.bias)
    ones, zeros = np.ones(8), np.zeros(8)

    def f(v: np.ndarray) -> np.ndarray:
        return v @ kernel + bias

    if norm == "pre":
        expected = 0.8 * x + 0.6 * f(np_layer_norm(x, ones, zeros))
    elif norm == "post":
        expected = np_layer_norm(0.8 * x + 0.6 * f(x), ones, zeros)
    else:
        expected = 0.8 * x + 0.6 * f(x)
    np.testing.assert_allclose(block(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
