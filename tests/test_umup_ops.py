"""The u-mup op set against plain references, and its scales for multipliers 1/4, 1 and 4.

Statistical checks use >= 2^17 values (std sampling error < 0.5%), so the 2-3% tolerances
test the formulas, not noise.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from scmm import uscale
from scmm.ops import get_ops
from scmm.ops.umup import umup_logit_variance

MULTS = (0.25, 1.0, 4.0)


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def test_gelu_scales_at_mult_one_are_the_papers_table() -> None:
    assert uscale.gelu_scales(1.0) == pytest.approx(uscale.GELU_SCALES, abs=1e-3)


@pytest.mark.parametrize("mult", MULTS)
def test_tempered_gelu_is_exact_and_unit_for_every_mult(mult: float) -> None:
    x = tf.constant(np.random.default_rng(0).standard_normal(2**17), tf.float32)
    g = tf.constant(np.random.default_rng(1).standard_normal(2**17), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = get_ops({"name": "umup", "ffn_act": mult}).ffn_activation(x, "gelu")
    grad = tape.gradient(y, x, output_gradients=g).numpy()
    out_scale, grad_scale = uscale.gelu_scales(mult)
    reference = _gelu(mult * x.numpy().astype(np.float64)) / mult * out_scale
    np.testing.assert_allclose(y.numpy(), reference, rtol=1e-5, atol=1e-6)
    assert float(np.std(y.numpy())) == pytest.approx(1.0, rel=0.02)
    # The forward constraint: the input gradient carries the output scale (a true gradient).
    assert float(np.std(grad)) == pytest.approx(out_scale / grad_scale, rel=0.02)


@pytest.mark.parametrize("mult", MULTS)
def test_loss_softmax_is_the_cross_entropy_of_tempered_logits_with_a_unit_gradient(
    mult: float,
) -> None:
    rng = np.random.default_rng(2)
    logits = tf.constant(0.05 * rng.standard_normal((64, 256, 32)), tf.float32)
    targets = tf.constant(rng.integers(0, 32, (64, 256)), tf.int32)
    mask = tf.ones((64, 256), tf.bool)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss, count = get_ops({"name": "umup", "loss_softmax": mult}).cross_entropy(
            logits, targets, mask
        )
    grad = tape.gradient(loss, logits).numpy()
    z = mult * logits.numpy().astype(np.float64)
    log_p = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    want = -np.mean(np.take_along_axis(log_p, targets.numpy()[..., None], axis=-1))
    assert float(loss) == pytest.approx(want, rel=1e-5) and float(count) == 64 * 256
    assert float(np.std(grad)) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("constraint", ["none", "forward"])
def test_readout_is_one_over_fan_in_with_the_stated_backward(constraint: str) -> None:
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((8, 256, 256)), tf.float32)  # (b, s, m)
    w = tf.constant(rng.standard_normal((256, 128)), tf.float32)  # (m, n), unit init
    g = tf.constant(rng.standard_normal((8, 256, 128)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = get_ops({"name": "umup", "readout_constraint": constraint}).readout(x, w)
    grad = tape.gradient(y, x, output_gradients=g).numpy()
    np.testing.assert_allclose(y.numpy(), x.numpy() @ w.numpy() / 256, rtol=1e-4, atol=1e-6)
    true_grad = g.numpy() @ w.numpy().T  # d (x W) / dx applied to g
    if constraint == "forward":
        np.testing.assert_allclose(grad, true_grad / 256, rtol=1e-4, atol=1e-6)
    else:
        np.testing.assert_allclose(grad, true_grad * 128**-0.5, rtol=1e-4, atol=1e-5)
        assert float(np.std(grad)) == pytest.approx(1.0, rel=0.02)


def _attention_inputs(values: str) -> tuple[tf.Tensor, ...]:
    rng = np.random.default_rng(4)
    q, k = (tf.constant(rng.standard_normal((8, 2, 256, 64)), tf.float32) for _ in range(2))
    if values == "iid":
        v = tf.constant(rng.standard_normal((8, 2, 256, 64)), tf.float32)
    else:  # one value per sequence and head, shared by every position
        v = tf.constant(np.repeat(rng.standard_normal((8, 2, 1, 64)), 256, axis=2), tf.float32)
    pos = tf.constant(rng.standard_normal((2, 256, 64)), tf.float32)
    return q, k, v, pos


@pytest.mark.parametrize("mult", MULTS)
def test_attention_temperature_is_mult_over_head_size(mult: float) -> None:
    q, k, v, pos = _attention_inputs("iid")
    ops = get_ops({"name": "umup", "attn_softmax": mult})
    out = ops.attention(q, k, v, tf.zeros_like(pos), 64).numpy()  # (b, s, heads, hs)
    scale = uscale.attention_scale(256, umup_logit_variance(mult, 64)) ** 0.5
    scores = np.einsum("bnia,bnja->bnij", q.numpy(), k.numpy()) * mult / 64
    scores = np.where(np.tril(np.ones((256, 256), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    want = scale * np.einsum("bnij,bnja->bina", weights, v.numpy())
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mult", MULTS)
def test_attention_scale_sits_between_iid_and_shared_values(mult: float) -> None:
    """alpha^1/2 x (a running mean's shrinkage): alpha^-1/2 for iid values, alpha^1/2 for
    values shared by every position (``scmm.ops.umup``); the position term included."""
    ops = get_ops({"name": "umup", "attn_softmax": mult})
    alpha = uscale.attention_scale(256, umup_logit_variance(mult, 64))
    q, k, v, pos = _attention_inputs("iid")
    iid = float(np.std(ops.attention(q, k, v, pos, 64).numpy()))
    q, k, v, pos = _attention_inputs("shared")
    shared = float(np.std(ops.attention(q, k, v, pos, 64).numpy()))
    assert iid == pytest.approx(alpha**-0.5, rel=0.15)
    # Softmax weights sum to 1, so shared values pass exactly, times the scale.
    assert shared == pytest.approx(alpha**0.5 * float(np.std(v.numpy())), rel=1e-4)
    assert 0.25 < iid < 1 < shared < 4
