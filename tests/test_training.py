"""Training numerics: rounding, optimisers, weight storage, the compiled Trainer, distribution."""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    MODEL_VARIANTS,
    VOCAB,
    as_float64,
    make_execution,
    make_model,
    random_batch,
    repeating_batch,
)

from scmm.training import (
    SGDM,
    AdamW,
    AdamWSettings,
    NonFiniteError,
    SGDMSettings,
    Trainer,
    TrainingSettings,
    WeightStorage,
    stochastic_round,
)
from scmm.parameters import Parameter, ParameterTable

REPO = Path(__file__).resolve().parents[1]

# Stochastic rounding ---------------------------------------------------------------------------


def neighbours(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) representable magnitudes of ``dtype`` around |x| (equal if exact)."""
    a = np.abs(np.asarray(x, np.float32))
    if dtype == "float16":
        c = a.astype(np.float16)
        c32 = c.astype(np.float32)
        lo = np.where(c32 > a, np.nextafter(c, np.float16(0)), c)
        hi = np.where(c32 < a, np.nextafter(c, np.float16(np.inf)), c)
    else:  # a bfloat16 is the top 16 bits of a float32
        bits = a.view(np.uint32)
        lo_bits = bits & np.uint32(0xFFFF0000)
        hi_bits = np.where(lo_bits == bits, bits, lo_bits + np.uint32(0x10000))
        lo, hi = lo_bits.view(np.float32), hi_bits.view(np.float32)
    return lo.astype(np.float64), hi.astype(np.float64)


def sround(x: np.ndarray, dtype: str, seed: tuple[int, int] = (3, 4)) -> np.ndarray:
    """stochastic_round of ``x`` to ``dtype`` as float64 numpy."""
    out = stochastic_round(
        tf.constant(np.asarray(x, np.float32)), tf.as_dtype(dtype), tf.constant(seed, tf.int64)
    )
    assert out.dtype == tf.as_dtype(dtype)
    return as_float64(out)


SR_VALUES = {
    # Not representable in either format; float16 includes subnormals (< 6.1e-5).
    "float16": [1 + 2**-12, 1.3, -1.3, math.pi, -2.5e-3, 1e-6, -3.3e-7, 700.3, -12345.67, 0.1],
    "bfloat16": [1 + 2**-9, 1.3, -1.3, math.pi, -2.5e-3, 1e-6, 1e30, -7e-30, 700.3, 0.1],
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stochastic_round_is_unbiased_between_neighbours(dtype: str) -> None:
    """Per value: only the two neighbours, P(up) = frac, mean = x (5 sigma)."""
    draws = 20000
    x = np.asarray(SR_VALUES[dtype], np.float32)
    out = sround(np.repeat(x[:, None], draws, axis=1), dtype)
    lo, hi = neighbours(x, dtype)
    assert (lo < hi).all()  # none exactly representable
    sign = np.sign(x)
    for i, value in enumerate(x.astype(np.float64)):
        row = out[i]
        is_hi, is_lo = row == sign[i] * hi[i], row == sign[i] * lo[i]
        assert (is_hi | is_lo).all(), f"{value}: values other than the two neighbours"
        p = (abs(value) - lo[i]) / (hi[i] - lo[i])
        se = math.sqrt(p * (1 - p) / draws)
        assert abs(is_hi.mean() - p) <= 5 * se, (value, is_hi.mean(), p)
        assert abs(row.mean() - value) <= 5 * se * (hi[i] - lo[i]), value


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stochastic_round_aggregate_bias(dtype: str) -> None:
    """Sum of errors over many varied values is within 5 standard deviations of zero."""
    rng = np.random.default_rng(0)
    magnitude = np.exp(rng.uniform(np.log(1e-4), np.log(6e4), 200_000))
    x = (magnitude * rng.choice([-1, 1], magnitude.size)).astype(np.float32)
    out = sround(x, dtype, seed=(11, 12))
    lo, hi = neighbours(x, dtype)
    p = np.where(hi > lo, (np.abs(x) - lo) / np.where(hi > lo, hi - lo, 1), 0)
    variance = ((hi - lo) ** 2 * p * (1 - p)).sum()
    z = (out - x.astype(np.float64)).sum() / math.sqrt(variance)
    assert abs(z) < 5, z
    # Every output lies between the two neighbours of its input.
    assert (np.abs(out) >= lo).all() and (np.abs(out) <= hi).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stochastic_round_exact_special_and_sign(dtype: str) -> None:
    """Representable values and +-inf unchanged, NaN kept, SR(-x) = -SR(x)."""
    rng = np.random.default_rng(1)
    exact = tf.cast(tf.constant(rng.normal(0, 100, 1000), tf.float32), dtype)
    special = {
        "float16": [0.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-24), 2.0**-14],
        "bfloat16": [0.0, 2.0**-126, -(2.0**-126), 3.3895313892515355e38, 1.0, -256.0],
    }[dtype] + [np.inf, -np.inf]
    exact_values = np.concatenate([as_float64(exact), special]).astype(np.float32)
    for seed in [(0, 0), (5, 9), (123, 456)]:
        np.testing.assert_array_equal(sround(exact_values, dtype, seed), exact_values)

    out = sround(np.array([np.nan, 1.5, -np.nan], np.float32), dtype)
    assert np.isnan(out[0]) and np.isnan(out[2]) and out[1] == 1.5

    x = np.random.default_rng(2).normal(0, 10, 5000).astype(np.float32)
    np.testing.assert_array_equal(sround(-x, dtype), -sround(x, dtype))
    assert (np.sign(sround(x, dtype)) == np.sign(x)).all()


def test_stochastic_round_float16_overflow_rounds_to_max() -> None:
    """Beyond 65504 the upper neighbour is inf, so values round down."""
    x = np.array([7e4, -7e4, 65519.0, 1e10], np.float32)
    np.testing.assert_array_equal(sround(x, "float16"), [65504, -65504, 65504, 65504])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_stochastic_round_is_seeded(dtype: str) -> None:
    """Same seed, same result; another seed, different draws."""
    x = np.random.default_rng(3).normal(size=10000).astype(np.float32)
    a, b = sround(x, dtype, seed=(1, 2)), sround(x, dtype, seed=(1, 2))
    np.testing.assert_array_equal(a, b)
    c = sround(x, dtype, seed=(1, 3))
    assert (a != c).mean() > 0.1


# Optimisers against numpy --------------------------------------------------------------------


def _variables(dtype: str = "float32") -> list[keras.Variable]:
    rng = np.random.default_rng(0)
    return [
        keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), dtype=dtype, name="matrix"),
        keras.Variable(rng.normal(size=(5,)).astype(np.float32), dtype=dtype, name="vector"),
    ]


def _table(
    variables: list[keras.Variable],
    learning_rate: Sequence[float] = (1.0, 1.0),
    weight_decay: Sequence[float] = (1.0, 1.0),
) -> ParameterTable:
    """A parameter table for ``_variables()`` with the given multipliers (by position here)."""
    return ParameterTable(
        Parameter(
            v.path,
            tuple(v.shape),
            "weight",
            learning_rate_multiplier=lr,
            weight_decay_multiplier=wd,
        )
        for v, lr, wd in zip(variables, learning_rate, weight_decay)
    )


def _grads(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return [rng.normal(size=(3, 4)), rng.normal(0, 0.1, size=(5,))]


def test_adamw_matches_numpy() -> None:
    """AdamW (bias correction, decoupled decay, lr decay, scales) vs numpy."""
    settings = AdamWSettings(
        learning_rate=0.01,
        learning_rate_decay=0.3,
        weight_decay=0.05,
        beta1=0.8,
        beta2=0.95,
        epsilon=1e-6,
    )
    scales, decays = [1.0, 0.25], [0.5, 1.0]
    variables = _variables()
    opt = AdamW(settings, variables, _table(variables, scales, decays))
    w = [as_float64(v) for v in variables]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t in range(1, 6):
        grads = _grads(t)
        opt.apply([tf.constant(g, tf.float32) for g in grads])
        rate = 0.01 * 2.0 ** (-(t - 1) * 0.3)  # the schedule reads the pre-update step count
        for i, g in enumerate(np.asarray(g, np.float32).astype(np.float64) for g in grads):
            m[i] = 0.8 * m[i] + 0.2 * g
            v[i] = 0.95 * v[i] + 0.05 * g**2
            m_hat, v_hat = m[i] / (1 - 0.8**t), v[i] / (1 - 0.95**t)
            decay = 0.05 * decays[i]
            w[i] = w[i] - rate * scales[i] * (m_hat / (np.sqrt(v_hat) + 1e-6) + decay * w[i])
        for i, variable in enumerate(variables):
            np.testing.assert_allclose(as_float64(variable), w[i], rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(opt.slots["m"][i].numpy(), m[i], rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(opt.slots["v"][i].numpy(), v[i], rtol=1e-6, atol=1e-9)
    assert int(opt.step.numpy()) == 5
    assert float(opt.learning_rate(tf.constant(5, tf.int64))) == pytest.approx(0.01 * 2**-1.5)


def test_sgdm_matches_numpy() -> None:
    """SGD with momentum (decay, lr decay, scales) vs numpy."""
    settings = SGDMSettings(
        learning_rate=0.05, learning_rate_decay=0.5, weight_decay=0.1, momentum=0.7
    )
    scales, decays = [0.5, 2.0], [1.0, 3.0]
    variables = _variables()
    opt = SGDM(settings, variables, _table(variables, scales, decays))
    w = [as_float64(v) for v in variables]
    velocity = [np.zeros_like(x) for x in w]
    for t in range(1, 5):
        grads = _grads(t)
        opt.apply([tf.constant(g, tf.float32) for g in grads])
        rate = 0.05 * 2.0 ** (-(t - 1) * 0.5)
        for i, g in enumerate(np.asarray(g, np.float32).astype(np.float64) for g in grads):
            velocity[i] = 0.7 * velocity[i] + g
            w[i] = w[i] - rate * scales[i] * (velocity[i] + 0.1 * decays[i] * w[i])
        for i, variable in enumerate(variables):
            np.testing.assert_allclose(as_float64(variable), w[i], rtol=1e-6, atol=1e-7)


def test_learning_rate_multipliers_come_from_the_table_by_path() -> None:
    """Per-variable learning-rate multipliers are applied to that variable only."""
    variables = _variables()
    with pytest.raises(ValueError, match="without a role in the parameter table.*vector"):
        SGDM(SGDMSettings(), variables, _table(variables[:1]))
    # A multiplier of 0 freezes exactly that variable; the other moves. The table's rows are in
    # the other order: the optimiser finds each variable's row by path.
    before = [v.numpy().copy() for v in variables]
    table = _table(variables, (1.0, 0.0))
    reordered = ParameterTable([table[variables[1].path], table[variables[0].path]])
    opt = SGDMSettings(learning_rate=0.1).build(variables, reordered)
    opt.apply([tf.constant(g, tf.float32) for g in _grads(1)])
    assert not np.array_equal(variables[0].numpy(), before[0])
    np.testing.assert_array_equal(variables[1].numpy(), before[1])


def test_optimiser_state_round_trip() -> None:
    """state_arrays/set_state_arrays resume exactly; bad state is rejected."""
    settings = AdamWSettings(learning_rate=0.01, learning_rate_decay=0.2)
    source_vars = _variables()
    source = AdamW(settings, source_vars, _table(source_vars))
    for t in range(3):
        source.apply([tf.constant(g, tf.float32) for g in _grads(t)])
    state = source.state_arrays()
    assert set(state) == {"step", "matrix/m", "matrix/v", "vector/m", "vector/v"}
    assert int(state["step"]) == 3

    def resumed(restore_state: bool) -> list[np.ndarray]:
        variables = [keras.Variable(v.numpy(), name=v.name) for v in source_vars]
        target = AdamW(settings, variables, _table(variables))
        if restore_state:
            target.set_state_arrays(state)
        for t in range(3, 5):
            target.apply([tf.constant(g, tf.float32) for g in _grads(t)])
        return [v.numpy() for v in variables]

    restored, fresh = resumed(True), resumed(False)
    for t in range(3, 5):
        source.apply([tf.constant(g, tf.float32) for g in _grads(t)])
    for variable, value, other in zip(source_vars, restored, fresh):
        np.testing.assert_array_equal(value, variable.numpy())
        assert not np.allclose(other, variable.numpy())  # the state matters

    fresh_vars = _variables()
    target = AdamW(settings, fresh_vars, _table(fresh_vars))
    with pytest.raises(ValueError, match="missing.*vector/v"):
        target.set_state_arrays({k: v for k, v in state.items() if k != "vector/v"})
    with pytest.raises(ValueError, match="unexpected.*other/m"):
        target.set_state_arrays({**state, "other/m": np.zeros(1)})
    with pytest.raises(ValueError, match="matrix/v.*shape"):
        target.set_state_arrays({**state, "matrix/v": np.zeros((4, 3), np.float32)})
    assert int(target.step.numpy()) == 0  # nothing written by a rejected load


# Weight storage: round to nearest vs stochastic rounding --------------------------------------


@pytest.mark.parametrize("dtype,ulp", [("float16", 2.0**-10), ("bfloat16", 2.0**-7)])
def test_tiny_updates_vanish_with_round_to_nearest_not_stochastic(dtype: str, ulp: float) -> None:
    """Weights in [1.5, 2) have spacing ``ulp`` (and stay >= 1 after 10 steps of at most one
    ulp); a step of 0.1 ulp is lost by round-to-nearest
    but kept in expectation by stochastic rounding (the Unit Scaling paper's argument)."""
    n, steps, update = 20000, 10, 0.1 * ulp
    w0 = tf.cast(tf.constant(np.random.default_rng(0).uniform(1.5, 2, n), tf.float32), dtype)
    grad = [tf.ones((n,), tf.float32)]
    settings = SGDMSettings(learning_rate=update, momentum=0.0)
    results = {}
    modes: list[tuple[WeightStorage, str]] = [
        ("master", "float32"),
        ("rounded", dtype),
        ("stochastic", dtype),
    ]
    for mode, weights_dtype in modes:
        variable = keras.Variable(tf.cast(w0, weights_dtype), dtype=weights_dtype, name="w")
        opt = SGDM(settings, [variable], _table([variable]), weights=mode, seed=7)
        for _ in range(steps):
            opt.apply(grad)
        assert variable.dtype == weights_dtype
        results[mode] = as_float64(variable) - as_float64(w0)
    # float32 weights: exact up to float32 rounding in [1, 2) (spacing 2^-23) at each step.
    np.testing.assert_allclose(results["master"], -steps * update, rtol=0, atol=steps * 2**-23)
    np.testing.assert_array_equal(results["rounded"], 0.0)  # every update rounded away
    moved = results["stochastic"]
    # Each step moves a weight down one ulp with probability 0.1: after 10 steps the mean is
    # -10 * 0.1 ulp, with per-weight variance 10 * 0.1 * 0.9 ulp^2.
    np.testing.assert_allclose(np.round(moved / ulp), moved / ulp)  # whole ulps only
    se = ulp * math.sqrt(steps * 0.09 / n)
    assert abs(moved.mean() - (-steps * update)) < 5 * se, moved.mean()
    assert 0.5 < (moved < 0).mean() < 0.8  # 1 - 0.9^10 = 0.65 of weights moved


TINY_LR = 2.0**-15


def _shared_start(dtype: str) -> dict[str, np.ndarray]:
    """Initial weights representable in ``dtype`` so all storage modes start identically."""
    arrays = make_model("attention", dtype=dtype, vocab_size=VOCAB).get_weight_arrays()
    return {k: as_float64(tf.cast(tf.cast(v, dtype), tf.float32)) for k, v in arrays.items()}


# bfloat16 storage takes the same code path as float16 and is 3x slower under XLA on CPU.
@pytest.mark.parametrize("dtype", ["float16", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_weight_storage_modes_in_training(dtype: str) -> None:
    """One Adam step of a 16-bit model in each storage mode, from identical weights.

    master: float32 variables hold w + delta exactly as computed; rounded: the variables hold
    round-to-nearest(w + delta) bitwise; stochastic: one of the two neighbours, unbiased.
    With a learning rate of 2^-15, Adam's first step (|delta| <= lr) is below half an ulp of
    every weight with |w| >= 1/8, so round-to-nearest leaves all of those unchanged.
    """
    start = _shared_start(dtype)
    batch = random_batch(1, 4, 16, np.random.default_rng(0))
    finals, losses = {}, {}
    storage_modes: list[WeightStorage] = ["master", "rounded", "stochastic"]
    for mode in storage_modes:
        model = make_model("attention", dtype=dtype, weights=mode)
        assert {str(v.dtype) for v in model.weights} == {"float32" if mode == "master" else dtype}
        model.set_weight_arrays(start)
        trainer = Trainer(
            model,
            TrainingSettings(optimiser=AdamWSettings(learning_rate=TINY_LR)),
            make_execution(xla=False),
            weights=mode,
            seed=5,
        )
        losses[mode] = trainer.train(batch)["loss"]
        finals[mode] = {k: as_float64(v) for k, v in model.get_weight_arrays().items()}
    # Same weights and batch: the same forward pass in every mode.
    np.testing.assert_array_equal(losses["rounded"], losses["master"])
    np.testing.assert_array_equal(losses["stochastic"], losses["master"])
    assert np.isfinite(losses["master"]).all()

    names = sorted(start)
    w0 = np.concatenate([start[k].ravel() for k in names])
    target = np.concatenate([finals["master"][k].ravel() for k in names])  # float32 w + delta
    rounded = np.concatenate([finals["rounded"][k].ravel() for k in names])
    stochastic = np.concatenate([finals["stochastic"][k].ravel() for k in names])
    assert np.abs(target - w0).max() <= TINY_LR + 1e-6  # + float32 rounding of w + delta

    expected_rn = as_float64(tf.cast(tf.constant(target, tf.float32), dtype))
    np.testing.assert_array_equal(rounded, expected_rn)
    large = np.abs(w0) >= 0.125
    assert large.sum() > 5000
    np.testing.assert_array_equal(rounded[large], w0[large])  # the update is lost...

    lo, hi = neighbours(target, dtype)
    sign = np.sign(target)
    assert np.all((stochastic == sign * lo) | (stochastic == sign * hi))
    p = np.where(hi > lo, (np.abs(target) - lo) / np.where(hi > lo, hi - lo, 1), 0)
    z = (stochastic - target).sum() / math.sqrt(((hi - lo) ** 2 * p * (1 - p)).sum())
    assert abs(z) < 5, z  # ...but kept in expectation by stochastic rounding
    moved = (stochastic != w0) & large
    assert moved.sum() > 20
    # Restricted to the large weights (all of which round-to-nearest froze), the stochastic
    # moves along the update direction add up to the float32 update within 5 sigma.
    step = target[large] - w0[large]
    along = ((stochastic[large] - w0[large]) * np.sign(step)).sum() / np.abs(step).sum()
    sigma = math.sqrt(((hi - lo) ** 2 * p * (1 - p))[large].sum()) / np.abs(step).sum()
    assert sigma < 0.2 and abs(along - 1) < 5 * sigma, (along, sigma)


# Trainer ---------------------------------------------------------------------------------------

FIT_THRESHOLD = 0.05  # nats per character, on characters determined by the previous period


FIT_CASES: list[Any] = [
    # Float32 fits of every kind; post-norm attention (same layers, other order) under --slow.
    *(
        pytest.param(kind, norm, "float32", "master", marks=[pytest.mark.slow] * (norm == "post"))
        for kind, norm in MODEL_VARIANTS
    ),
    # The paper's setting: 16-bit weights updated with stochastic rounding, under XLA (~20 s;
    # test_weight_storage_modes_in_training covers stochastic float16 updates by default).
    pytest.param("attention", "pre", "float16", "stochastic", marks=pytest.mark.slow),
    # bfloat16 compute with float32 master weights, every kind (XLA on CPU runs bfloat16
    # about 3x slower than float32, so these run under --slow).
    *(
        pytest.param(kind, norm, "bfloat16", "master", marks=pytest.mark.slow)
        for kind, norm in MODEL_VARIANTS
    ),
]


@pytest.mark.parametrize("kind,norm,dtype,weights", FIT_CASES)
def test_fits_repeating_sequence(kind: str, norm: str, dtype: str, weights: WeightStorage) -> None:
    """Each model variant learns a tiled random pattern to < FIT_THRESHOLD nats."""
    rng = np.random.default_rng({"attention": 0, "conv": 1, "rnn": 2}[kind])
    pattern = rng.integers(0, VOCAB, rng.integers(13, 18))
    model = make_model(kind, norm=norm, dtype=dtype, weights=weights, depth=2, seed=3)
    settings = TrainingSettings(optimiser=AdamWSettings(learning_rate=0.01))
    trainer = Trainer(model, settings, make_execution(xla=True), weights=weights, seed=0)
    losses = np.concatenate(
        [trainer.train(repeating_batch(pattern, 50, 4, 48, rng))["loss"] for _ in range(4)]
    )
    assert trainer.step == 200
    assert losses[0] > 2.0  # starts near ln(16) = 2.77
    assert losses[-10:].max() < FIT_THRESHOLD, losses[-10:]
    held_out = repeating_batch(pattern, 3, 4, 48, np.random.default_rng(99))
    result = trainer.evaluate(
        {"tokens": t, "mask": m} for t, m in zip(held_out["tokens"], held_out["mask"])
    )
    assert result["loss"] < FIT_THRESHOLD, result


def _attention_trainer(seed: int, xla: bool, **training: Any) -> Trainer:
    settings = TrainingSettings(
        optimiser=training.pop("optimiser", AdamWSettings(learning_rate=0.01)), **training
    )
    return Trainer(make_model("attention", seed=seed), settings, make_execution(xla), seed=0)


def test_same_seed_same_losses() -> None:
    """Two fresh same-seed models and trainers give bitwise-equal losses and weights."""
    rng = np.random.default_rng(0)
    batches = [random_batch(4, 4, 24, rng) for _ in range(2)]
    optimiser = AdamWSettings(learning_rate=0.01, learning_rate_decay=0.25)

    def run() -> tuple[np.ndarray, Trainer]:
        trainer = _attention_trainer(seed=4, xla=True, optimiser=optimiser)
        return np.concatenate([trainer.train(batch)["loss"] for batch in batches]), trainer

    (losses_a, trainer_a), (losses_b, trainer_b) = run(), run()
    np.testing.assert_array_equal(losses_a, losses_b)
    assert len(set(losses_a.tolist())) == 8  # the model does change between steps
    weights_a, weights_b = trainer_a.model.get_weight_arrays(), trainer_b.model.get_weight_arrays()
    for name, value in weights_a.items():
        np.testing.assert_array_equal(value, weights_b[name], err_msg=name)
    # Per-step learning rate is lr * 2^(-step * decay) with step counted from 0.
    rates = trainer_a.train(batches[0])["learning_rate"]
    np.testing.assert_allclose(rates, 0.01 * 2.0 ** (-0.25 * np.arange(8, 12)), rtol=1e-6)


def test_loss_scale_does_not_change_float32_updates() -> None:
    """loss_scale=1024 gives the same float32 updates as 1."""
    batch = random_batch(3, 4, 16, np.random.default_rng(1))
    optimiser = SGDMSettings(learning_rate=0.1, momentum=0.9)
    weights = []
    for scale in (1.0, 1024.0):
        trainer = _attention_trainer(seed=2, xla=False, optimiser=optimiser, loss_scale=scale)
        losses = trainer.train(batch)["loss"]
        weights.append(trainer.model.get_weight_arrays())
    initial = make_model("attention", seed=2).get_weight_arrays()
    for name, value in weights[0].items():
        np.testing.assert_allclose(weights[1][name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    assert any(not np.array_equal(initial[n], v) for n, v in weights[0].items())
    assert np.isfinite(losses).all()


def test_non_finite_loss_names_step() -> None:
    """With a huge learning rate the loss goes non-finite; the error names the first step."""
    trainer = Trainer(
        make_model("conv", seed=1),
        TrainingSettings(optimiser=AdamWSettings(learning_rate=1e30)),
        make_execution(xla=True),
    )
    rng = np.random.default_rng(0)
    batch = random_batch(4, 2, 16, rng)
    initial_weights, initial_state = (
        trainer.model.get_weight_arrays(),
        trainer.optimiser.state_arrays(),
    )
    # Reference: one step per call until it fails.
    failed_at = None
    for step in range(4):
        single = {k: v[step : step + 1] for k, v in batch.items()}
        try:
            trainer.train(single)
        except NonFiniteError as error:
            failed_at = error.step
            break
    assert failed_at == 2  # step 1's loss uses the initial weights; its update overflows
    trainer.model.set_weight_arrays(initial_weights)
    trainer.optimiser.set_state_arrays(initial_state)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 2") as info:
        trainer.train(batch)
    assert info.value.step == 2 and info.value.tensor == "loss"
    assert math.isfinite(info.value.metrics["loss"])  # metrics of the last good step


def test_non_finite_injected_values() -> None:
    """Injected NaN (used weight) and inf (unused weight) name the right step."""
    trainer = Trainer(
        make_model("conv", seed=1),
        TrainingSettings(optimiser=AdamWSettings(learning_rate=1e-3)),
        make_execution(xla=True),
    )
    rng = np.random.default_rng(0)
    # Tokens < VOCAB - 1 only, so the last embedding row is never read.
    batches = [random_batch(3, 2, 16, rng, vocab_size=VOCAB - 1) for _ in range(3)]
    assert np.isfinite(trainer.train(batches[0])["loss"]).all()
    good_weights, good_state = trainer.model.get_weight_arrays(), trainer.optimiser.state_arrays()

    poisoned = {**good_weights, "head/bias": np.full_like(good_weights["head/bias"], np.nan)}
    trainer.model.set_weight_arrays(poisoned)
    with pytest.raises(NonFiniteError) as info:
        trainer.train(batches[1])
    assert info.value.step == 4 and info.value.tensor == "loss"  # first step of this call

    # An unused weight going non-finite does not show in the loss but is still caught.
    trainer.optimiser.set_state_arrays(good_state)
    embeddings = good_weights["embedding/embeddings"].copy()
    embeddings[VOCAB - 1] = np.inf
    trainer.model.set_weight_arrays({**good_weights, "embedding/embeddings": embeddings})
    with pytest.raises(NonFiniteError, match="weight embedding/embeddings at step 6") as info:
        trainer.train(batches[2])
    assert info.value.step == 6


def test_evaluate_is_token_weighted() -> None:
    """evaluate() is the token-weighted mean over batches, not the batch mean."""
    model = make_model("rnn", seed=1)
    trainer = Trainer(model, TrainingSettings(), make_execution(xla=True))
    rng = np.random.default_rng(0)
    positions = np.arange(20)
    batches = []
    for count in (20, 3, 11):  # scored positions per sequence differ per batch
        tokens = rng.integers(0, VOCAB, (4, 20)).astype(np.int32)
        batches.append({"tokens": tokens, "mask": np.broadcast_to(positions < count, (4, 20))})
    result = trainer.evaluate(iter(batches))
    sums, counts, means = [], [], []
    for batch in batches:
        out = model(tf.constant(batch["tokens"]), tf.constant(batch["mask"]))
        sums.append(float(out["loss"]) * float(out["n_tokens"]))
        counts.append(float(out["n_tokens"]))
        means.append(float(out["loss"]))
    assert counts == [80.0, 12.0, 44.0]
    assert result["n_tokens"] == 136.0
    assert result["loss"] == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
    assert abs(result["loss"] - np.mean(means)) > 1e-3  # weighting matters for these batches
    with pytest.raises(ValueError, match="no unmasked tokens"):
        trainer.evaluate([{"tokens": batches[0]["tokens"], "mask": np.zeros((4, 20), bool)}])


# tf.distribute -----------------------------------------------------------------------------------

DISTRIBUTED_SCRIPT = r"""
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from scmm.models import AttentionSettings, CharLM, ModelSettings
from scmm.training import AdamWSettings, SGDMSettings


def settings():
    return ModelSettings(
        vocab_size=16, hidden_size=16, depth=1, seed=3,
        sequence=AttentionSettings(heads=2, head_size=8, frequencies=4, max_period=32.0),
    )


rng = np.random.default_rng(0)
steps = [rng.integers(0, 16, (4, 12)).astype(np.int32) for _ in range(3)]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report = {"replicas": strategy.num_replicas_in_sync}
for name, opt_settings in [
    ("sgdm", SGDMSettings(learning_rate=0.05, momentum=0.9, weight_decay=0.1)),
    # epsilon well above float32 noise on gradients that are zero in exact arithmetic
    ("adamw", AdamWSettings(learning_rate=0.01, weight_decay=0.1, epsilon=1e-4,
                            learning_rate_decay=0.1)),
]:
    # Single device: each step's gradient is of the mean loss over the whole global batch.
    reference = CharLM(settings())
    ref_opt = opt_settings.build(reference.trainable_weights, reference.parameters)
    for tokens in steps:
        with tf.GradientTape() as tape:
            loss = reference(tokens)["loss"]
        ref_opt.apply(tape.gradient(loss, reference.trainable_weights))

    with strategy.scope():
        model = CharLM(settings())
        opt = opt_settings.build(model.trainable_weights, model.parameters)

    @tf.function
    def step(tokens):
        def replica_fn(tokens):
            with tf.GradientTape() as tape:
                loss = model(tokens)["loss"]
            opt.apply(tape.gradient(loss, model.trainable_weights))
            return loss
        return strategy.run(replica_fn, args=(tokens,))

    for tokens in steps:  # replica r gets sequences [2r, 2r + 2) of the global batch
        step(strategy.experimental_distribute_values_from_function(
            lambda ctx, t=tokens: t[2 * ctx.replica_id_in_sync_group:
                                    2 * ctx.replica_id_in_sync_group + 2]))

    identical, max_diff, max_ref = True, 0.0, 0.0
    for variable, ref in zip(model.trainable_weights, reference.trainable_weights):
        local = [np.asarray(x) for x in strategy.experimental_local_results(variable.value)]
        identical &= len(local) == 2 and all(np.array_equal(x, local[0]) for x in local)
        max_diff = max(max_diff, float(np.abs(local[0] - ref.numpy()).max()))
        max_ref = max(max_ref, float(np.abs(ref.numpy()).max()))
    moved = max(float(np.abs(a - b).max()) for a, b in zip(
        [v.numpy() for v in reference.trainable_weights],
        CharLM(settings()).get_weight_arrays().values()))
    report[name] = {
        "identical": bool(identical), "max_diff": max_diff, "moved": moved,
        "steps": [int(x) for x in strategy.experimental_local_results(opt.step)],
    }
print("RESULT " + json.dumps(report))
"""


def test_mirrored_strategy_matches_single_device() -> None:
    """MirroredStrategy over 2 CPUs: identical replicas, single-device result."""
    result = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT ") :])
    assert report["replicas"] == 2
    for name in ("sgdm", "adamw"):
        run = report[name]
        assert run["identical"], run  # mirrored copies stay bitwise identical
        assert run["steps"] == [3, 3], run  # one optimiser step per global step
        assert run["moved"] > 1e-2, run  # training did change the weights...
        assert run["max_diff"] < 1e-5, run  # ...exactly as on one device with the global batch


def test_finite_loss_explosion_is_divergence() -> None:
    """A float32 loss far above ln V is divergence although it is finite: a head bias of 1e12
    on a class the batch never holds makes the loss ~1e12 (finite in float32), which used to
    train on and finish. A healthy start (loss ~ ln V) stays far under the limit."""
    batch = random_batch(1, 2, 8, np.random.default_rng(0), vocab_size=VOCAB - 1)

    def trainer(vocab_size: Optional[int]) -> Trainer:
        settings = TrainingSettings(optimiser=SGDMSettings(learning_rate=1e-6))
        model = make_model("conv", seed=1, hidden_size=16, depth=1)
        return Trainer(model, settings, make_execution(xla=False), vocab_size=vocab_size)

    def explode(model: Any) -> None:
        weights = model.get_weight_arrays()
        bias = weights["head/bias"].copy()
        bias[VOCAB - 1] = 1e12  # all probability on a character that never comes
        model.set_weight_arrays({**weights, "head/bias": bias})

    limited = trainer(vocab_size=VOCAB)
    assert limited.loss_limit == pytest.approx(10 * math.log(VOCAB))  # the default, 10 x ln V
    assert (limited.train(batch)["loss"] < 2 * math.log(VOCAB)).all()
    explode(limited.model)
    with pytest.raises(NonFiniteError, match="above the divergence limit 27.73") as info:
        limited.train(batch)
    assert info.value.step == 2 and info.value.tensor == "loss"
    assert "10 x ln V, V = 16" in str(info.value)

    unlimited = trainer(vocab_size=None)  # no vocabulary size: non-finite values only
    explode(unlimited.model)
    losses = unlimited.train(batch)["loss"]
    assert np.isfinite(losses).all() and (losses > 1e11).all()


@pytest.mark.parametrize(
    "settings,fragment",
    [
        (TrainingSettings(loss_scale=math.inf), "training.loss_scale must be > 0 and finite"),
        (TrainingSettings(loss_scale=math.nan), "training.loss_scale"),
        (TrainingSettings(optimiser=AdamWSettings(learning_rate=math.inf)), "learning_rate"),
        (TrainingSettings(optimiser=AdamWSettings(epsilon=0.0)), "epsilon must be > 0"),
        (TrainingSettings(optimiser=SGDMSettings(momentum=math.nan)), "momentum"),
        (TrainingSettings(divergence_loss=math.inf), "divergence_loss"),
    ],
)
def test_training_settings_are_finite_and_in_range(
    settings: TrainingSettings, fragment: str
) -> None:
    """inf/NaN fail the range checks of TrainingSettings built in Python (as the Trainer is)."""
    with pytest.raises(ValueError, match=fragment):
        settings.validate()
