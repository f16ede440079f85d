"""Correctness of what ``./dev bench`` relies on: the FLOP count, the measured peak, and the
gradient materialisation that makes weighted residuals fast under XLA (speed itself is only
measured by the bench's printed figures)."""

import dataclasses
import math
from typing import Literal

import numpy as np
import pytest
import tensorflow as tf

from scmm import bench, bench_flops
from scmm.models import AttentionSettings, CharLM, ModelSettings, ResidualSettings
from scmm.ops import kernels


def test_model_flops_per_token_matches_a_hand_count() -> None:
    attention = next(c for c in bench.paper_cases() if c.name == "attention (paper, XLA)")
    model = CharLM(attention.model)
    # Per layer: qkv 128x3x2x64, output 2x64x128, FFN 128x512 + 512x128; head 128x256.
    per_layer = 128 * 3 * 2 * 64 + 2 * 64 * 128 + 2 * 128 * 512
    matmul_params = 8 * per_layer + 128 * 256
    assert bench_flops.matmul_parameters(model) == matmul_params == 1_605_632
    # Three (s x a) products per head forward (q k, q p, w v), x3 for training.
    attention_flops = 8 * 3 * 3 * 2 * 256 * 2 * 64
    expected = 6 * matmul_params + attention_flops
    assert bench_flops.model_flops_per_token(model, 256) == expected == 14_352_384

    conv = next(c for c in bench.paper_cases() if c.name.startswith("conv"))
    conv_model = CharLM(conv.model)
    conv_params = 8 * (7 * 16 * 128 + 2 * 128 * 512) + 128 * 256
    assert bench_flops.model_flops_per_token(conv_model, 256) == 6 * conv_params


def test_matmul_peak_is_positive_and_finite() -> None:
    peak = bench_flops.measure_matmul_peak(size=128, repeats=2, calls=2)
    assert math.isfinite(peak) and peak > 0


def test_materialised_gradient_is_an_exact_identity_under_xla() -> None:
    special = [np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-45, -3.4e38, 1.5]
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8)), tf.float32)
    upstream = tf.constant(
        np.concatenate([special, np.random.default_rng(1).normal(size=24)]).reshape(4, 8),
        tf.float32,
    )

    @tf.function(jit_compile=True)
    def grad(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = kernels.materialised_gradient(x)
        return y, tape.gradient(y, x, output_gradients=upstream)

    y, g = grad(x)
    np.testing.assert_array_equal(y.numpy().view(np.int32), x.numpy().view(np.int32))
    np.testing.assert_array_equal(g.numpy().view(np.int32), upstream.numpy().view(np.int32))


def test_materialised_gradient_is_the_tensor_itself_outside_xla() -> None:
    x = tf.constant([1.0, 2.0])
    assert kernels.materialised_gradient(x) is x


@pytest.mark.parametrize("weighting", ["mean", "fixed"])
def test_weighted_residual_gradients_match_without_materialisation(
    monkeypatch: pytest.MonkeyPatch, weighting: Literal["fixed", "mean"]
) -> None:
    # The division by 1 is exact, but XLA fuses the program differently with it and then
    # orders some reductions (bias, layer-norm and weight gradients) differently: measured
    # differences are at most ~4e-7 of each gradient's largest element (a few float32 ulps).
    settings = ModelSettings(
        vocab_size=32,
        hidden_size=32,
        depth=2,
        sequence=AttentionSettings(heads=2, head_size=16, frequencies=8),
        residual=ResidualSettings(weighting=weighting),
        seed=3,
    )
    tokens = tf.constant(np.random.default_rng(2).integers(0, 32, (2, 16)), tf.int32)

    def gradients() -> list[np.ndarray]:
        model = CharLM(dataclasses.replace(settings))

        @tf.function(jit_compile=True)
        def step(tokens: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                loss = model(tokens)["loss"]
            return tape.gradient(loss, model.trainable_weights)

        return [tf.convert_to_tensor(g).numpy() for g in step(tokens)]

    fast = gradients()
    monkeypatch.setattr(kernels, "materialised_gradient", lambda x: x)
    reference = gradients()
    for a, b in zip(fast, reference):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())
