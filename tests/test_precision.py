"""Simulated low-precision matmuls (scmm.precision) against a plain ml_dtypes reference, and
models of every kind training with FP8 (unit-scaled) and bfloat16 on a repeating sequence."""

import dataclasses

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODEL_VARIANTS, VOCAB, make_execution, model_settings, repeating_batch

from scmm import precision
from scmm.models import CharLM, ResidualSettings
from scmm.precision_settings import PrecisionSettings
from scmm.schemes import UnitScalingSettings
from scmm.training import AdamWSettings, Trainer, TrainingSettings

FP8 = PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")


def rounded(x: np.ndarray, dtype: type) -> np.ndarray:
    return np.asarray(x, np.float32).astype(dtype).astype(np.float32)


def sample(shape: tuple[int, ...], scale: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def einsum_and_grads(
    settings: PrecisionSettings, a_np: np.ndarray, b_np: np.ndarray, upstream_np: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y = a @ b through ``precision.einsum`` under ``settings``; (y, grad a, grad b)."""
    a, b = tf.constant(a_np), tf.constant(b_np)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        with precision.scope(settings):
            y = precision.einsum("ik,kj->ij", a, b)
    grad_a, grad_b = tape.gradient(y, [a, b], tf.constant(upstream_np))
    return y.numpy(), grad_a.numpy(), grad_b.numpy()


def test_einsum_is_plain_outside_a_scope_and_with_float32_formats() -> None:
    a, b = tf.constant(sample((4, 8), 1, 0)), tf.constant(sample((8, 3), 1, 1))
    want = tf.einsum("ik,kj->ij", a, b).numpy()
    assert np.array_equal(precision.einsum("ik,kj->ij", a, b).numpy(), want)
    with precision.scope(PrecisionSettings()):
        assert precision.current() is None
        assert np.array_equal(precision.einsum("ik,kj->ij", a, b).numpy(), want)


def test_fp8_einsum_matches_reference_forward_and_backward() -> None:
    a_np, b_np = sample((16, 32), 1.0, 0), sample((32, 8), 0.5, 1)
    a_np[0, 0] = 1000.0  # beyond E4M3's 448: saturates
    upstream_np = sample((16, 8), 1e-3, 2)
    y, grad_a, grad_b = einsum_and_grads(FP8, a_np, b_np, upstream_np)
    a_q = rounded(np.clip(a_np, -448, 448), ml_dtypes.float8_e4m3fn)
    b_q = rounded(b_np, ml_dtypes.float8_e4m3fn)
    g_q = rounded(upstream_np, ml_dtypes.float8_e5m2)
    np.testing.assert_allclose(y, a_q @ b_q, rtol=1e-5, atol=1e-5)
    assert a_q[0, 0] == 448
    # Straight-through: the rounded gradient times the other rounded operand.
    np.testing.assert_allclose(grad_a, g_q @ b_q.T, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grad_b, a_q.T @ g_q, rtol=1e-5, atol=1e-9)


def test_fp16_weight_gradients_are_rounded_and_underflow() -> None:
    """FP16 training's dW is a float16 matmul output: tiny weight gradients lose precision."""
    fp16 = PrecisionSettings(
        activations="float16", weights="float16", gradients="float16", weight_gradients="float16"
    )
    a_np, b_np = sample((64, 32), 1.0, 4), sample((32, 8), 0.2, 5)
    upstream_np = sample((64, 8), 2**-24, 6)  # ~ float16's smallest subnormal
    _, grad_a, grad_b = einsum_and_grads(fp16, a_np, b_np, upstream_np)
    a_q, b_q = rounded(a_np, np.float16), rounded(b_np, np.float16)
    g_q = rounded(upstream_np, np.float16)
    # The activation gradient is left to the next matmul (its output gradient) to round.
    np.testing.assert_allclose(grad_a, g_q @ b_q.T, rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(grad_b, rounded(a_q.T @ g_q, np.float16))
    # Without the weight-gradient role the same dW keeps its float32 values.
    full = dataclasses.replace(fp16, weight_gradients="float32")
    _, _, kept = einsum_and_grads(full, a_np, b_np, upstream_np)
    np.testing.assert_allclose(kept, a_q.T @ g_q, rtol=1e-5, atol=1e-12)
    assert np.mean(grad_b != kept) > 0.5


def test_flush_to_zero_drops_subnormals_only() -> None:
    """subnormals=False: float16 values under 2^-14 become 0 in operands and gradients;
    normal values round as before, and the operand's gradient stays straight-through."""
    fp16 = PrecisionSettings(activations="float16", weights="float16", gradients="float16")
    ftz = dataclasses.replace(fp16, subnormals=False)
    # Magnitudes spread over 2^-26 .. 2^0: normals, subnormals and values under 2^-24.
    rng = np.random.default_rng(7)
    x_np = (rng.choice([-1, 1], 4096) * 2.0 ** rng.uniform(-26, 0, 4096)).astype(np.float32)
    x = tf.constant(x_np)
    with tf.GradientTape() as tape:
        tape.watch(x)
        with precision.scope(ftz):
            flushed = precision.operand(x, "activation")
    grad = tape.gradient(flushed, x, tf.constant(np.full(4096, 3.0, np.float32)))
    with precision.scope(fp16):
        kept = precision.operand(x, "activation").numpy()
    normal = np.abs(kept) >= 2**-14
    assert 0.2 < np.mean(normal) < 0.8 and np.mean((kept != 0) & ~normal) > 0.05
    np.testing.assert_array_equal(flushed.numpy()[normal], kept[normal])
    assert np.all(flushed.numpy()[~normal] == 0)
    np.testing.assert_array_equal(grad.numpy(), np.full(4096, 3.0, np.float32))
    # The gradient arriving at a matmul output is flushed the same way.
    a_np, b_np = sample((64, 32), 1.0, 4), sample((32, 8), 1.0, 5)
    upstream_np = sample((64, 8), 2**-14, 6)  # about half of it subnormal in float16
    _, grad_a, _ = einsum_and_grads(ftz, a_np, b_np, upstream_np)
    g_q, b_q = rounded(upstream_np, np.float16), rounded(b_np, np.float16)
    g_q[np.abs(g_q) < 2**-14] = 0
    b_q[np.abs(b_q) < 2**-14] = 0  # the weight operand is flushed too
    assert 0.3 < np.mean(g_q == 0) < 0.9
    np.testing.assert_allclose(grad_a, g_q @ b_q.T, rtol=1e-5, atol=1e-12)


def test_dynamic_scaling_keeps_small_tensors_representable() -> None:
    x = tf.constant(sample((4096,), 1e-4, 3))
    naive = PrecisionSettings(activations="e4m3")
    dynamic = dataclasses.replace(naive, scaling="dynamic")
    with precision.scope(naive):
        flushed = precision.operand(x, "activation").numpy()
    with precision.scope(dynamic):
        kept = precision.operand(x, "activation").numpy()
    assert np.mean(flushed == 0) > 0.9  # N(0, 1e-4) is below E4M3's smallest subnormal 2^-9
    relative = np.abs(kept - x.numpy()) / np.abs(x.numpy())
    assert np.mean(kept == 0) < 0.01 and np.median(relative) < 2**-4
    # Scaling by a power of two is exact: the result is an E4M3 value times 2^-k.
    scale = 2.0 ** np.floor(np.log2(448 / np.abs(x.numpy()).max()))
    assert np.array_equal(rounded(kept * scale, ml_dtypes.float8_e4m3fn), kept * scale)


def test_settings_reject_unknown_formats() -> None:
    with pytest.raises(ValueError, match="model.precision.weights='e4m4'"):
        PrecisionSettings(weights="e4m4").validate()
    with pytest.raises(ValueError, match="model.precision.weight_gradients='fp16'"):
        PrecisionSettings(weight_gradients="fp16").validate()


@pytest.mark.parametrize("unit_scale", [False, True])
@pytest.mark.parametrize("kind,norm", MODEL_VARIANTS)
def test_fp8_simulation_changes_the_loss_a_little(kind: str, norm: str, unit_scale: bool) -> None:
    settings = dataclasses.replace(
        model_settings(kind, norm=norm, seed=2),
        residual=ResidualSettings(norm=norm, weighting="mean"),  # type: ignore[arg-type]
    )
    if unit_scale:
        settings = dataclasses.replace(settings, scaling=UnitScalingSettings())
    tokens = np.random.default_rng(0).integers(0, VOCAB, (4, 32))
    plain = CharLM(settings)
    float32 = CharLM(
        dataclasses.replace(settings, precision=PrecisionSettings(activations="float32"))
    )
    fp8 = CharLM(dataclasses.replace(settings, precision=FP8))
    loss = float(plain(tokens)["loss"])
    assert float(float32(tokens)["loss"]) == loss  # float32 formats: nothing changes
    fp8_loss = float(fp8(tokens)["loss"])
    assert fp8_loss != loss and abs(fp8_loss - loss) < 0.05 * loss


FIT_THRESHOLD = 0.1  # nats per character on the predictable positions


@pytest.mark.parametrize(
    "kind,norm,mode",
    # One FP8 run per model kind in the default suite; post-norm attention under --slow.
    [(k, n, "fp8") for k, n in MODEL_VARIANTS if n == "pre"]
    + [pytest.param(k, n, "fp8", marks=pytest.mark.slow) for k, n in MODEL_VARIANTS if n != "pre"]
    # bfloat16 runs are slower on CPU; the suite keeps them under --slow.
    + [pytest.param(k, n, "bfloat16", marks=pytest.mark.slow) for k, n in MODEL_VARIANTS],
)
def test_unit_scaled_models_fit_a_repeating_sequence_in_low_precision(
    kind: str, norm: str, mode: str
) -> None:
    rng = np.random.default_rng({"attention": 0, "conv": 1, "rnn": 2}[kind])
    pattern = rng.integers(0, VOCAB, rng.integers(13, 18))
    settings = dataclasses.replace(
        model_settings(
            kind, norm=norm, seed=3, dtype="bfloat16" if mode == "bfloat16" else "float32"
        ),
        residual=ResidualSettings(norm=norm, weighting="mean"),  # type: ignore[arg-type]
        precision=FP8 if mode == "fp8" else PrecisionSettings(),
    )
    model = CharLM(dataclasses.replace(settings, scaling=UnitScalingSettings()))
    trainer = Trainer(
        model,
        TrainingSettings(optimiser=AdamWSettings(learning_rate=2**-6)),
        make_execution(xla=True),
        model.parameters,
    )
    losses = np.concatenate(
        [trainer.train(repeating_batch(pattern, 50, 4, 48, rng))["loss"] for _ in range(4)]
    )
    assert losses[0] > 2.0
    assert losses[-10:].max() < FIT_THRESHOLD, losses[-10:]
