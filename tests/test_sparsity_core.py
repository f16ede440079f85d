"""scmm.sparsity's RigL core against numpy references, eagerly and under XLA."""

import functools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=wrong-import-position
from typing import Any, Callable, Optional

import numpy as np
import pytest
import tensorflow as tf

from scmm import sparsity
from scmm.sparsity import ranking

# ---------------------------------------------------------------- ranking


def ref_select(score: np.ndarray, allowed: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """The k allowed positions with the largest/smallest score, ties to the lower index."""
    flat, ok = score.ravel(), allowed.ravel()
    idx = np.flatnonzero(ok)
    key = -flat[idx] if largest else flat[idx]
    order = idx[np.lexsort((idx, key))]
    chosen = np.zeros(flat.size, bool)
    chosen[order[: max(0, min(k, idx.size))]] = True
    return chosen.reshape(score.shape)


def ref_fmix32(h: np.ndarray) -> np.ndarray:
    h = h.astype(np.uint64) & 0xFFFFFFFF
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & 0xFFFFFFFF
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & 0xFFFFFFFF
    return h ^ (h >> np.uint64(16))


def ref_random_bits(n: int, seed: tuple[int, int]) -> np.ndarray:
    low = [np.uint64(s & 0xFFFFFFFF) for s in seed]
    key = ref_fmix32(np.array(ref_fmix32(np.array(low[0])) ^ low[1]))
    index = (np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B9)) & 0xFFFFFFFF
    return ref_fmix32(ref_fmix32(index) ^ key)


def test_select_breaks_ties_by_index_and_never_prefers_nan() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 3, (5, 7)).astype(np.float32)  # many ties
    allowed = rng.random((5, 7)) < 0.6
    select = tf.function(ranking.select, jit_compile=True)
    for k in (0, 1, 4, 9, 100):
        for largest in (True, False):
            expect = ref_select(score, allowed, k, largest)
            eager = ranking.select(score, allowed, k, largest=largest)
            np.testing.assert_array_equal(eager, expect, err_msg=f"k={k} largest={largest}")
            compiled = select(
                tf.constant(score), tf.constant(allowed), tf.constant(k), largest=largest
            )
            np.testing.assert_array_equal(compiled, expect)
    # Negative zero ties with zero (so the index decides); NaN is never preferred.
    score = tf.constant([[0.0, -0.0, float("nan"), 0.0]])
    everywhere = tf.ones((1, 4), tf.bool)
    for largest in (True, False):
        np.testing.assert_array_equal(
            ranking.select(score, everywhere, 3, largest=largest), [[True, True, False, True]]
        )
    # Scores of either sign order correctly.
    signed = tf.constant([[-2.0, 3.0, -0.5, 1.0, float("-inf"), float("inf")]])
    top = ranking.select(signed, tf.ones((1, 6), tf.bool), 3, largest=True)
    np.testing.assert_array_equal(top, [[False, True, False, True, False, True]])


def test_random_bits_match_numpy_eagerly_and_under_xla() -> None:
    seed = tf.constant([12345, -7], tf.int64)
    draws = ranking.random_bits((6, 8), seed)
    compiled = tf.function(lambda s: ranking.random_bits((6, 8), s), jit_compile=True)(seed)
    expect = ref_random_bits(48, (12345, -7)).reshape(6, 8)
    np.testing.assert_array_equal(np.asarray(draws).astype(np.uint64), expect)
    np.testing.assert_array_equal(compiled, draws)
    assert np.unique(expect).size == 48  # a bijection of the index: no ties


# ---------------------------------------------------------------- blocks


def ref_pool(matrix: np.ndarray, block: int, mode: str) -> np.ndarray:
    rows, cols = matrix.shape[0] // block, matrix.shape[1] // block
    out = np.zeros((rows, cols), matrix.dtype)
    for i in range(rows):
        for j in range(cols):
            tile = np.abs(matrix[i * block : (i + 1) * block, j * block : (j + 1) * block])
            out[i, j] = {"sum": tile.sum(), "average": tile.mean(), "max": tile.max()}[mode]
    return out


@pytest.mark.parametrize("mode", sparsity.POOLING_MODES)
@pytest.mark.parametrize("block", [1, 2, 4])
def test_pool_blocks_matches_numpy(mode: str, block: int) -> None:
    matrix = np.random.default_rng(7).standard_normal((8, 12)).astype(np.float32)
    out = sparsity.pool_blocks(matrix, block, mode)
    assert out.shape == (8 // block, 12 // block)
    np.testing.assert_allclose(out, ref_pool(matrix, block, mode), rtol=1e-6)
    if mode == "sum":
        np.testing.assert_array_equal(sparsity.block_l1(matrix, block), out)


def test_pool_and_expand_compile() -> None:
    matrix = np.random.default_rng(8).standard_normal((8, 12)).astype(np.float32)
    pool = tf.function(lambda m: sparsity.pool_blocks(m, 4, "max"), jit_compile=True)
    np.testing.assert_allclose(pool(tf.constant(matrix)), ref_pool(matrix, 4, "max"))
    expand = tf.function(lambda m: sparsity.expand_blocks(m, 4), jit_compile=True)
    block_mask = np.random.default_rng(9).random((2, 3)) < 0.5
    np.testing.assert_array_equal(
        expand(tf.constant(block_mask)), np.kron(block_mask, np.ones((4, 4), bool))
    )


@pytest.mark.parametrize("dtype", [np.bool_, np.float32])
def test_expand_blocks_matches_kron(dtype: Any) -> None:
    block_mask = (np.random.default_rng(10).random((3, 2)) < 0.5).astype(dtype)
    out = np.asarray(sparsity.expand_blocks(block_mask, 3))
    assert out.dtype == block_mask.dtype and out.shape == (9, 6)
    np.testing.assert_array_equal(out, np.kron(block_mask, np.ones((3, 3), dtype)))


def test_matrix_view_of_higher_rank_kernels() -> None:
    assert sparsity.matrix_shape((5, 8, 16), fan_in_dims=2) == (40, 16)  # Conv1D (k, in, out)
    assert sparsity.matrix_shape((32, 3, 2, 16)) == (32, 96)  # scmm qkv (h, 3, heads, hs)
    kernel = np.arange(2 * 4 * 8, dtype=np.float32).reshape(2, 4, 8)
    matrix = sparsity.as_matrix(kernel, fan_in_dims=2)
    np.testing.assert_array_equal(matrix, kernel.reshape(8, 8))
    np.testing.assert_array_equal(sparsity.from_matrix(matrix, kernel.shape), kernel)
    block_mask = np.array([[True, False], [False, True]])
    element = np.asarray(sparsity.kernel_mask(block_mask, 4, kernel.shape, fan_in_dims=2))
    np.testing.assert_array_equal(element.reshape(8, 8), np.kron(block_mask, np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="does not match the block grid"):
        sparsity.kernel_mask(block_mask, 2, kernel.shape, fan_in_dims=2)
    with pytest.raises(ValueError, match="fan_in_dims"):
        sparsity.matrix_shape((4, 4), fan_in_dims=2)


def test_block_that_does_not_divide_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"qkv: block size 16 .* rows \(fan-in\) dimension of size 40"
    ):
        sparsity.block_grid((40, 64), 16, name="qkv")
    with pytest.raises(
        ValueError, match=r"block size 16 .* columns \(fan-out\) dimension of size 24"
    ):
        sparsity.block_grid((64, 24), 16)
    with pytest.raises(ValueError, match="block size 3"):  # before any op is built
        sparsity.pool_blocks(np.ones((6, 8), np.float32), 3, "sum")
    with pytest.raises(ValueError, match="positive integer"):
        sparsity.block_grid((4, 4), 0)
    with pytest.raises(ValueError, match="pooling mode"):
        sparsity.pool_blocks(np.ones((4, 4), np.float32), 2, "mean")
    assert sparsity.block_grid((48, 64), 16) == (3, 4)


# ---------------------------------------------------------------- schedule


def ref_cosine(
    t: int, alpha: float, end: int, zero_steps: int = 0, phase: float = 0.0, period: float = 0.5
) -> float:
    if t < zero_steps or t >= end:
        return 0.0
    angle = phase + period * 2 * math.pi * (t - zero_steps) / (end - zero_steps)
    return alpha * 0.5 * (1 + math.cos(angle))


def test_cosine_schedule_against_the_formula() -> None:
    alpha, end, zero = 0.3, 110, 10
    for t in (0, 5, zero, 35, 60, 100, end, 150):
        got = float(
            sparsity.drop_fraction(t, schedule="cosine", alpha=alpha, end_step=end, zero_steps=zero)
        )
        assert got == pytest.approx(ref_cosine(t, alpha, end, zero), abs=1e-7), t
    cosine = functools.partial(sparsity.cosine_drop_fraction, alpha=alpha, end_step=end)
    assert float(cosine(0)) == pytest.approx(alpha)  # zero_steps 0: starts at alpha
    assert float(cosine(zero, zero_steps=zero)) == pytest.approx(alpha)
    assert float(cosine(60, zero_steps=zero)) == pytest.approx(alpha / 2)  # mid-way
    assert float(cosine(end)) == 0.0 and float(cosine(end + 40)) == 0.0  # frozen past T
    for t in (0, 20, 77, 109):  # a phase delay and a cyclic period
        got = float(cosine(t, phase=0.3, period=0.75))
        assert got == pytest.approx(ref_cosine(t, alpha, end, 0, 0.3, 0.75), abs=1e-7)
    traced = tf.function(lambda t: cosine(t, zero_steps=zero), jit_compile=True)
    assert float(traced(tf.constant(60, tf.int64))) == pytest.approx(alpha / 2)
    assert float(sparsity.drop_fraction(123, schedule="constant", alpha=0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="schedule"):
        sparsity.drop_fraction(0, schedule="linear", alpha=0.3)


def test_drop_count_rounds_half_up() -> None:
    cases = {(0.3, 10): 3, (0.25, 2): 1, (0.05, 10): 1, (0.04, 10): 0, (0.3, 26): 8, (0.0, 9): 0}
    for (fraction, active), expect in cases.items():
        assert int(sparsity.drop_count(fraction, active)) == expect, (fraction, active)
    assert int(sparsity.drop_count(tf.constant(0.3), tf.constant(26))) == 8


def test_update_steps() -> None:
    steps = [0, 1, 50, 100, 150, 200]
    assert [bool(sparsity.is_update_step(t, 100)) for t in steps] == [0, 0, 0, 1, 0, 1]
    assert [bool(sparsity.is_update_step(t, 50)) for t in steps] == [0, 0, 1, 1, 1, 1]
    for static in (None, 0):
        assert not any(bool(sparsity.is_update_step(t, static)) for t in steps)
    traced = tf.function(lambda t: sparsity.is_update_step(t, 100), jit_compile=True)
    assert bool(traced(tf.constant(300, tf.int64))) and not bool(traced(tf.constant(301, tf.int64)))
    with pytest.raises(ValueError, match="interval"):
        sparsity.is_update_step(0, -5)


# ---------------------------------------------------------------- distribution


SHAPES = [(8, 8), (64, 256), (256, 64), (64, 64), (16, 512)]


def test_uniform_densities_and_block_counts() -> None:
    assert sparsity.layer_densities(SHAPES, 0.9) == pytest.approx([0.1] * len(SHAPES))
    # round((1 − s)·N): 256 blocks of 4x4 at 90% -> 25.6 -> 26; 16 blocks of 16x16 -> 2
    assert sparsity.active_blocks((64, 64), 0.1, 4) == 26
    assert sparsity.active_blocks((64, 64), 0.1, 16) == 2
    assert sparsity.active_blocks((40, 50), 0.1, 1) == 200
    assert sparsity.active_blocks((32, 16), 0.1, 16) == 1  # 0.2 -> at least one block
    with pytest.raises(ValueError, match="block size 16 does not divide"):
        sparsity.active_blocks((40, 64), 0.1, 16)


@pytest.mark.parametrize("sparsity_level", [0.5, 0.9, 0.98])
def test_erk_densities_meet_the_budget(sparsity_level: float) -> None:
    densities = np.array(sparsity.layer_densities(SHAPES, sparsity_level, "erk"))
    sizes = np.array([r * c for r, c in SHAPES], float)
    raw = np.array([(r + c) / (r * c) for r, c in SHAPES])
    assert np.all(densities > 0) and np.all(densities <= 1)
    np.testing.assert_allclose(densities @ sizes, (1 - sparsity_level) * sizes.sum(), rtol=1e-12)
    dense = densities == 1.0
    eps = densities[~dense] / raw[~dense]
    np.testing.assert_allclose(eps, eps[0], rtol=1e-12)  # the rest share one ERK scale
    assert np.all(eps[0] * raw[dense] >= 1.0)  # dense ones are exactly those that overflow
    assert (dense.any()) == (sparsity_level == 0.5)  # (8, 8) overflows at 50%, not at 90%
    for block in (1, 4):
        counts = [sparsity.active_blocks(s, d, block) for s, d in zip(SHAPES, densities)]
        shares = densities * sizes / block**2
        assert np.all(np.abs(np.array(counts) - shares) <= 1.0)  # one block per layer
        assert abs(sum(counts) - shares.sum()) <= len(SHAPES)


def test_erk_dense_at_zero_sparsity_and_errors() -> None:
    assert sparsity.erk_densities(SHAPES, 0.0) == [1.0] * len(SHAPES)
    with pytest.raises(ValueError, match="sparsity"):
        sparsity.erk_densities(SHAPES, 1.0)
    with pytest.raises(ValueError, match="distribution"):
        sparsity.layer_densities(SHAPES, 0.9, "er")


def test_initial_mask_is_random_exact_and_deterministic() -> None:
    first = np.asarray(sparsity.initial_mask((16, 12), 37, seed=11))
    assert first.dtype == np.bool_ and first.shape == (16, 12) and first.sum() == 37
    np.testing.assert_array_equal(sparsity.initial_mask((16, 12), 37, seed=11), first)
    assert not np.array_equal(sparsity.initial_mask((16, 12), 37, seed=12), first)
    assert np.asarray(sparsity.initial_mask((4, 4), 16, seed=1)).all()
    # roughly uniform: over many seeds every position is picked about 37/192 of the time
    hits = np.sum(
        [np.asarray(sparsity.initial_mask((16, 12), 37, seed=s), float) for s in range(200)], axis=0
    )
    assert 0.08 < hits.min() / 200 and hits.max() / 200 < 0.33


# ---------------------------------------------------------------- update


GRID = (6, 8)


MODES = [pytest.param(False, id="eager"), pytest.param(True, id="xla")]


def ref_rigl(
    mask: np.ndarray, weight: np.ndarray, grad: np.ndarray, drop: int, exclude: str
) -> dict[str, Any]:
    active = mask != 0
    k = int(np.clip(drop, 0, active.sum()))
    if exclude == "dropped":
        k = min(k, int((~active).sum()))
    pruned = ref_select(weight, active, k, largest=False)
    kept = active & ~pruned
    allowed = ~active if exclude == "dropped" else ~kept
    regrown = ref_select(grad, allowed, k, largest=True)
    new = kept | regrown
    return {
        "mask": new,
        "dropped": active & ~new,
        "grown": new & ~active,
        "pruned": pruned,
        "regrown": regrown,
        "count": k,
    }


def random_case(
    rng: np.random.Generator, density: float = 0.4, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = rng.random(GRID) < density
    weight = np.abs(rng.standard_normal(GRID)).astype(np.float32)
    grad = np.abs(rng.standard_normal(GRID)).astype(np.float32)
    return mask.astype(dtype), weight * mask, grad


@functools.lru_cache(maxsize=None)
def compiled_update(exclude: str, regrow: str) -> Callable[..., Any]:
    def fn(mask: Any, weight: Any, grad: Any, drop: Any, seed: Any) -> sparsity.RigLUpdate:
        return sparsity.rigl_update(
            mask, weight, grad, drop, exclude=exclude, regrow=regrow, seed=seed
        )

    return tf.function(fn, jit_compile=True)


def run_update(
    mask: np.ndarray,
    weight: np.ndarray,
    grad: Optional[np.ndarray],
    drop: int,
    *,
    exclude: str = "dropped",
    regrow: str = "gradient",
    seed: Optional[list[int]] = None,
    jit: bool = False,
) -> dict[str, np.ndarray]:
    """One update, eagerly or through a cached XLA-compiled function, as numpy arrays."""
    if jit:
        out = compiled_update(exclude, regrow)(
            tf.constant(mask),
            tf.constant(weight),
            tf.constant(np.zeros(GRID, np.float32) if grad is None else grad),
            tf.constant(drop),
            tf.constant([0, 0] if seed is None else seed, tf.int64),
        )
    else:
        out = sparsity.rigl_update(
            mask, weight, grad, drop, exclude=exclude, regrow=regrow, seed=seed
        )
    return {name: np.asarray(value) for name, value in out._asdict().items()}


@pytest.mark.parametrize("jit", MODES)
@pytest.mark.parametrize("exclude", ["dropped", "kept"])
@pytest.mark.parametrize("dtype", [np.bool_, np.float32])
def test_update_matches_reference(jit: bool, exclude: str, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    for drop in (0, 1, 3, 7, 100):
        mask, weight, grad = random_case(rng, dtype=dtype)
        out = run_update(mask, weight, grad, drop, exclude=exclude, jit=jit)
        ref = ref_rigl(mask, weight, grad, drop, exclude)
        assert out["mask"].dtype == mask.dtype
        for name in ("dropped", "grown", "pruned", "regrown"):
            np.testing.assert_array_equal(out[name], ref[name], err_msg=f"{name} drop={drop}")
        np.testing.assert_array_equal(out["mask"] != 0, ref["mask"])
        assert out["count"] == ref["count"]
        assert (out["mask"] != 0).sum() == (mask != 0).sum()
        assert out["dropped"].sum() == out["grown"].sum()


@pytest.mark.parametrize("jit", MODES)
def test_repeated_updates_keep_the_active_count(jit: bool) -> None:
    rng = np.random.default_rng(2)
    mask = np.asarray(sparsity.initial_mask(GRID, 13, seed=3))
    for step in range(6):
        weight = np.abs(rng.standard_normal(GRID)).astype(np.float32) * mask
        grad = np.abs(rng.standard_normal(GRID)).astype(np.float32)
        exclude = ("dropped", "kept")[step % 2]
        out = run_update(mask, weight, grad, 4, exclude=exclude, jit=jit)
        ref = ref_rigl(mask, weight, grad, 4, exclude)
        np.testing.assert_array_equal(out["mask"], ref["mask"])
        assert out["mask"].sum() == 13
        mask = out["mask"]


@pytest.mark.parametrize("jit", MODES)
def test_exclusion_rules_differ_when_the_dropped_block_has_the_largest_gradient(jit: bool) -> None:
    mask = np.zeros(GRID, bool)
    mask[0, :4] = True  # active: (0,0) .. (0,3)
    weight = np.where(mask, 1.0, 0.0).astype(np.float32)
    weight[0, 2] = 0.01  # the weakest block: pruned by both rules
    grad = np.full(GRID, 0.1, np.float32)
    grad[0, 2] = 9.0  # ... and the one with the largest gradient
    grad[3, 5] = 5.0  # the best position that was empty before pruning
    graphcore = run_update(mask, weight, grad, 1, exclude="dropped", jit=jit)
    google = run_update(mask, weight, grad, 1, exclude="kept", jit=jit)
    assert graphcore["pruned"][0, 2] and google["pruned"][0, 2]
    # Graphcore: (0,2) cannot come straight back; the best empty block grows instead.
    assert graphcore["regrown"][3, 5] and graphcore["regrown"].sum() == 1
    assert graphcore["dropped"][0, 2] and graphcore["grown"][3, 5]
    # Google: (0,2) returns at once, so the net pattern (and its weight) is unchanged.
    assert google["regrown"][0, 2] and google["regrown"].sum() == 1
    np.testing.assert_array_equal(google["mask"], mask)
    assert not google["dropped"].any() and not google["grown"].any()
    assert graphcore["mask"].sum() == google["mask"].sum() == 4


@pytest.mark.parametrize("jit", MODES)
def test_ties_break_by_flat_index(jit: bool) -> None:
    mask = np.zeros(GRID, bool)
    mask[1, 1] = mask[2, 0] = mask[4, 7] = mask[0, 5] = True
    weight = np.where(mask, 2.0, 0.0).astype(np.float32)  # all active blocks tie
    grad = np.ones(GRID, np.float32)  # all positions tie
    out = run_update(mask, weight, grad, 2, exclude="dropped", jit=jit)
    expect_pruned = np.zeros(GRID, bool)
    expect_pruned[0, 5] = expect_pruned[1, 1] = True  # lowest flat indices 5 and 9
    np.testing.assert_array_equal(out["pruned"], expect_pruned)
    expect_grown = np.zeros(GRID, bool)
    expect_grown[0, 0] = expect_grown[0, 1] = True  # lowest empty positions
    np.testing.assert_array_equal(out["regrown"], expect_grown)


@pytest.mark.parametrize("jit", MODES)
def test_capacity_limits_the_swap_under_graphcores_rule(jit: bool) -> None:
    mask = np.ones(GRID, bool)
    mask[5, 6] = mask[5, 7] = False  # only two empty positions
    rng = np.random.default_rng(4)
    weight = np.abs(rng.standard_normal(GRID)).astype(np.float32) * mask
    grad = np.abs(rng.standard_normal(GRID)).astype(np.float32)
    graphcore = run_update(mask, weight, grad, 5, exclude="dropped", jit=jit)
    google = run_update(mask, weight, grad, 5, exclude="kept", jit=jit)
    assert graphcore["count"] == 2 and graphcore["pruned"].sum() == 2
    assert graphcore["grown"][5, 6] and graphcore["grown"][5, 7]
    assert google["count"] == 5 and google["regrown"].sum() == 5
    for out in (graphcore, google):
        assert out["mask"].sum() == mask.sum()


@pytest.mark.parametrize("exclude", ["dropped", "kept"])
def test_random_regrow_is_allowed_only_and_deterministic_per_seed(exclude: str) -> None:
    rng = np.random.default_rng(5)
    mask, weight, _ = random_case(rng, dtype=np.bool_)
    runs = {
        (seed, jit): run_update(
            mask,
            weight,
            None,
            6,
            exclude=exclude,
            regrow="random",
            seed=[seed, 7],
            jit=jit,
        )
        for seed in (1, 2)
        for jit in (False, True)
    }
    for out in runs.values():
        kept = (mask != 0) & ~out["pruned"]
        allowed = (mask == 0) if exclude == "dropped" else ~kept
        assert out["regrown"].sum() == 6 and not (out["regrown"] & ~allowed).any()
        np.testing.assert_array_equal(out["pruned"], ref_select(weight, mask != 0, 6, False))
        assert out["mask"].sum() == mask.sum()
    again = run_update(mask, weight, None, 6, exclude=exclude, regrow="random", seed=[1, 7])
    np.testing.assert_array_equal(again["mask"], runs[(1, False)]["mask"])
    np.testing.assert_array_equal(runs[(1, True)]["mask"], runs[(1, False)]["mask"])
    assert not np.array_equal(runs[(1, False)]["regrown"], runs[(2, False)]["regrown"])


@pytest.mark.parametrize("jit", MODES)
def test_zero_drop_fraction_leaves_the_mask_bit_for_bit(jit: bool) -> None:
    rng = np.random.default_rng(6)
    mask, weight, grad = random_case(rng, dtype=np.float32)
    count = int(
        sparsity.drop_count(
            sparsity.drop_fraction(500, schedule="cosine", alpha=0.3, end_step=500), mask.sum()
        )
    )
    assert count == 0
    for exclude in ("dropped", "kept"):
        out = run_update(mask, weight, grad, count, exclude=exclude, jit=jit)
        assert out["mask"].tobytes() == mask.tobytes()
        assert not out["dropped"].any() and not out["grown"].any() and out["count"] == 0


@pytest.mark.parametrize("pooling", sparsity.POOLING_MODES)
def test_block_update_of_a_kernel_regrows_the_top_pooled_gradient(pooling: str) -> None:
    # A Conv1D-like kernel (k, in, out) = (4, 8, 64): matrix view (32, 64), 8x8 blocks (4, 8).
    shape, block = (4, 8, 64), 8
    grid = sparsity.block_grid(sparsity.matrix_shape(shape, 2), block)
    active = sparsity.active_blocks(sparsity.matrix_shape(shape, 2), 0.25, block)
    mask = np.asarray(sparsity.initial_mask(grid, active, seed=21))
    rng = np.random.default_rng(22)
    kernel_mask = np.asarray(sparsity.kernel_mask(mask, block, shape, fan_in_dims=2))
    kernel = rng.standard_normal(shape).astype(np.float32) * kernel_mask
    grad = rng.standard_normal(shape).astype(np.float32)

    @tf.function(jit_compile=True)
    def step(kernel: tf.Tensor, grad: tf.Tensor, mask: tf.Tensor) -> sparsity.RigLUpdate:
        weight_score = sparsity.block_l1(sparsity.as_matrix(kernel, 2), block)  # (4, 8)
        grad_score = sparsity.pool_blocks(sparsity.as_matrix(grad, 2), block, pooling)
        count = sparsity.drop_count(0.3, tf.reduce_sum(tf.cast(mask, tf.int32)))
        return sparsity.rigl_update(mask, weight_score, grad_score, count)

    out = step(tf.constant(kernel), tf.constant(grad), tf.constant(mask))
    weight_ref = ref_pool(kernel.reshape(32, 64), block, "sum")
    grad_ref = ref_pool(grad.reshape(32, 64), block, pooling)
    ref = ref_rigl(mask, weight_ref, grad_ref, round(0.3 * active), "dropped")
    assert active == 8 and int(out.count) == 2
    np.testing.assert_array_equal(out.pruned, ref["pruned"])
    np.testing.assert_array_equal(out.regrown, ref["regrown"])
    np.testing.assert_array_equal(out.mask, ref["mask"])


def test_update_rejects_bad_arguments() -> None:
    mask = np.ones(GRID, bool)
    score = np.ones(GRID, np.float32)
    with pytest.raises(ValueError, match="exclude"):
        sparsity.rigl_update(mask, score, score, 1, exclude="new")
    with pytest.raises(ValueError, match="regrow"):
        sparsity.rigl_update(mask, score, score, 1, regrow="magnitude")
    with pytest.raises(ValueError, match="grad_score has shape"):
        sparsity.rigl_update(mask, score, np.ones((6, 4), np.float32), 1)
    with pytest.raises(ValueError, match="seed"):
        sparsity.rigl_update(mask, score, None, 1, regrow="random")
