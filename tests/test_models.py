"""CharLM: causality, loss, dtypes and weight storage, initialisation, weight round trips."""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import KINDS, MODEL_VARIANTS, VOCAB, as_float64, make_model

from scmm.models import CharLM, dtype_policy_name

# Causality -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,norm", MODEL_VARIANTS)
def test_model_is_causal(kind: str, norm: str) -> None:
    """Changing token t leaves hidden states and logits at positions <= t bitwise unchanged.

    Positions < t: the mixers are causal. Position t too: the Shift means the prediction of
    token t only sees tokens < t. Position t + 1 must change (the model does use its input).
    """
    model = make_model(kind, norm=norm, hidden_size=16)
    seq = 12
    rng = np.random.default_rng(0)
    base = np.tile(rng.integers(0, VOCAB, seq), (seq, 1)).astype(np.int32)
    perturbed = base.copy()
    for t in range(seq):  # row t changes token t to a different token
        perturbed[t, t] = (base[t, t] + rng.integers(1, VOCAB)) % VOCAB
    assert (perturbed != base).sum() == seq
    hidden = [model.hidden_states(tf.constant(b)).numpy() for b in (base, perturbed)]
    logits = [model.logits(tf.constant(b)).numpy() for b in (base, perturbed)]
    for t in range(seq):
        for name, (a, b) in (("hidden", hidden), ("logits", logits)):
            np.testing.assert_array_equal(b[t, : t + 1], a[t, : t + 1], err_msg=f"{name} t={t}")
            if t + 1 < seq:
                assert np.abs(b[t, t + 1] - a[t, t + 1]).max() > 1e-4, f"{name} t={t}"


# Loss ----------------------------------------------------------------------------------------


def test_loss_is_masked_mean_cross_entropy() -> None:
    """The loss is the mask-weighted mean of per-token cross-entropy."""
    model = make_model("conv", hidden_size=16)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (3, 10)).astype(np.int32)
    mask = rng.random((3, 10)) < 0.6
    out = model(tf.constant(tokens), tf.constant(mask))
    logits = as_float64(model.logits(tf.constant(tokens)))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_token = -np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    assert float(out["n_tokens"]) == mask.sum()
    assert float(out["loss"]) == pytest.approx((per_token * mask).sum() / mask.sum(), rel=1e-5)
    assert float(out["logits_rms"]) == pytest.approx(np.sqrt((logits**2).mean()), rel=1e-5)
    # Without a mask every token counts; with an empty mask the loss is 0, not NaN.
    assert float(model(tf.constant(tokens))["loss"]) == pytest.approx(per_token.mean(), rel=1e-5)
    empty = model(tf.constant(tokens), tf.zeros_like(mask))
    assert float(empty["loss"]) == 0.0 and float(empty["n_tokens"]) == 0.0


# Dtypes and weight storage -------------------------------------------------------------------

DTYPE_CASES = [
    ("float32", True),
    ("float16", True),  # master: float32 variables, float16 compute
    ("float16", False),  # rounded / stochastic storage: float16 variables
    ("bfloat16", True),
    ("bfloat16", False),
]
# |loss - float32 loss| for the same seed. Rounding weights and activations to 11 (float16) or
# 8 (bfloat16) significant bits perturbs each logit by ~2^-11 / 2^-8 relative; averaged over
# 256 tokens that moves the loss by ~1e-4 / ~1e-3 (measured), so these bounds have >= 10x slack.
LOSS_TOLERANCE = {"float32": 0.0, "float16": 0.005, "bfloat16": 0.02}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype,master", DTYPE_CASES)
def test_forward_in_each_dtype(kind: str, dtype: str, master: bool) -> None:
    """Variable/compute dtypes per storage mode; finite loss near ln(V) at init."""
    vocab = 32
    model = make_model(
        kind, dtype=dtype, weights="master" if master else "rounded", vocab_size=vocab
    )
    variable_dtype = "float32" if master else dtype
    assert {v.dtype for v in model.weights} == {variable_dtype}
    assert model.dtype_policy.name == dtype_policy_name(dtype, master)

    tokens = tf.constant(np.random.default_rng(0).integers(0, vocab, (8, 32)), tf.int32)
    assert model.hidden_states(tokens).dtype == tf.as_dtype(dtype)
    assert model.logits(tokens).dtype == tf.as_dtype(dtype)
    out = model(tokens)
    assert out["loss"].dtype == tf.float32
    values = {k: float(v) for k, v in out.items()}
    assert all(math.isfinite(v) for v in values.values()), values

    # At init the targets are independent of the logits, so (Jensen) ln V <= E[loss] <= ln V +
    # E[logit^2]/2 for roughly Gaussian logits; 0.25 nats of slack covers the sampling noise
    # of 256 scored tokens (per-token cross-entropy has a standard deviation of about 1).
    rms = values["logits_rms"]
    assert 0.5 < rms < 2.0
    assert math.log(vocab) - 0.25 <= values["loss"] <= math.log(vocab) + rms**2 / 2 + 0.25

    reference = make_model(kind, vocab_size=vocab)(tokens)
    assert abs(values["loss"] - float(reference["loss"])) <= LOSS_TOLERANCE[dtype] + 1e-6


# Initialisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_init_is_seeded(kind: str) -> None:
    """Same seed: identical weights; another seed: independent random weights."""
    a = make_model(kind, seed=1).get_weight_arrays()
    b = make_model(kind, seed=1).get_weight_arrays()
    c = make_model(kind, seed=2).get_weight_arrays()
    assert a.keys() == b.keys() == c.keys()
    random_names = [name for name, value in a.items() if value.std() > 0]
    constant_names = [name for name, value in a.items() if value.std() == 0]
    assert len(random_names) >= 8 and constant_names  # kernels random, biases/gains constant
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in random_names:
        assert not np.array_equal(a[name], c[name]), name
        assert np.corrcoef(a[name].ravel(), c[name].ravel())[0, 1] < 0.2, name
    for name in constant_names:
        np.testing.assert_array_equal(a[name], c[name], err_msg=name)
    # Layers of one model have independent weights too.
    layer_0 = [n for n in random_names if n.startswith("layer_0_")]
    for name in layer_0:
        assert not np.array_equal(a[name], a[name.replace("layer_0_", "layer_1_")]), name


# Weight round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_weight_round_trip_is_exact(kind: str) -> None:
    """get/set_weight_arrays into a differently seeded model gives bitwise logits."""
    tokens = tf.constant(np.random.default_rng(0).integers(0, VOCAB, (2, 16)), tf.int32)
    source, target = make_model(kind, seed=1), make_model(kind, seed=7)
    assert not np.array_equal(source.logits(tokens).numpy(), target.logits(tokens).numpy())
    arrays = source.get_weight_arrays()
    target.set_weight_arrays(arrays)
    np.testing.assert_array_equal(source.logits(tokens).numpy(), target.logits(tokens).numpy())
    for name, value in target.get_weight_arrays().items():
        np.testing.assert_array_equal(value, arrays[name], err_msg=name)
    # get_weight_arrays returns copies.
    arrays["head/bias"][:] = 5.0
    assert not (source.get_weight_arrays()["head/bias"] == 5.0).any()


def test_weight_round_trip_16bit_storage_keeps_dtype() -> None:
    """Round trip of bfloat16-stored weights is exact too."""
    source = make_model("attention", dtype="bfloat16", weights="rounded", seed=1)
    target = make_model("attention", dtype="bfloat16", weights="rounded", seed=2)
    target.set_weight_arrays(source.get_weight_arrays())
    tokens = tf.constant(np.arange(24).reshape(2, 12) % VOCAB, tf.int32)
    np.testing.assert_array_equal(
        as_float64(source.logits(tokens)), as_float64(target.logits(tokens))
    )
    assert {str(v.dtype) for v in target.weights} == {"bfloat16"}


def test_set_weight_arrays_rejects_mismatches() -> None:
    """Missing, unexpected and mis-shaped weights are named in the error."""
    model: CharLM = make_model("rnn")
    arrays = model.get_weight_arrays()
    name = "layer_1_sequence/rnn/recurrent_kernel"
    assert name in arrays

    missing = dict(arrays)
    del missing[name]
    with pytest.raises(ValueError, match=f"missing.*{name}"):
        model.set_weight_arrays(missing)

    extra = {**arrays, "layer_9_sequence/rnn/bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="unexpected.*layer_9_sequence/rnn/bias"):
        model.set_weight_arrays(extra)

    # Every other weight changed, one with a wrong shape: rejected before anything is written.
    wrong_shape = {key: value + 1 for key, value in arrays.items()}
    wrong_shape[name] = arrays[name][:-1]
    with pytest.raises(ValueError, match=f"{name}.*shape"):
        model.set_weight_arrays(wrong_shape)

    # A rejected load leaves the model untouched.
    after = model.get_weight_arrays()
    for key, value in arrays.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.mark.parametrize("kind,norm", MODEL_VARIANTS)
def test_float16_gradients_finite_at_init(kind: str, norm: str) -> None:
    """Every gradient of a float16 model at init is finite and O(1).

    Regression: a zero-initialised Shift padding made position 0 a zero vector, whose layer
    norm gradient is amplified by 1/sqrt(epsilon) per norm; the padding's gradient reached
    ~2e5 in float32 and overflowed (inf/NaN) in float16.
    """
    model = make_model(kind, norm=norm, dtype="float16")
    tokens = tf.constant(np.random.default_rng(0).integers(0, VOCAB, (4, 24)), tf.int32)
    with tf.GradientTape() as tape:
        loss = model(tokens)["loss"]
    grads = tape.gradient(loss, model.trainable_weights)
    for variable, grad in zip(model.trainable_weights, grads):
        value = as_float64(tf.convert_to_tensor(grad))
        assert np.isfinite(value).all(), variable.path
        assert np.abs(value).max() < 10.0, (variable.path, np.abs(value).max())
