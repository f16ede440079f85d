"""u-mup's residual rule against the PyTorch library's formula and its three properties."""

import math

import pytest

from scmm.schemes.umup_residual import branch_weights, contributions, residual_taus

PAIRS = [(1.0, 1.0), (0.5, 1.0), (3.0, 0.1), (1.0, 2.0), (0.25, 4.0)]


def library_tau(i: int, total_branches: int, mult: float, ratio: float) -> float:
    """The library's transformer_residual_scaling_rule, from its definition (wave2-facts
    section 2): branch i of 2L alternating ones, attention at even i, its own convention."""
    alpha_mlp = mult * math.sqrt(2 / (1 + ratio**2))
    alpha_attn = ratio * alpha_mlp
    n_attn, n_mlp = (i + 1) // 2, i // 2
    alpha = alpha_attn if i % 2 == 0 else alpha_mlp
    return alpha / math.sqrt(total_branches / 2 + n_attn * alpha_attn**2 + n_mlp * alpha_mlp**2)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("mult,ratio", PAIRS)
def test_taus_equal_the_library_rule_converted(depth: int, mult: float, ratio: float) -> None:
    branches = ["attention", "ffn"] * depth
    got = residual_taus(branches, mult, ratio)
    for i, tau in enumerate(got):
        lib = library_tau(i, 2 * depth, mult, ratio)
        assert tau == pytest.approx(lib**2 / (1 + lib**2), rel=1e-12), i


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("mult,ratio", PAIRS)
def test_the_three_properties_hold(depth: int, mult: float, ratio: float) -> None:
    branches = ["attention", "ffn"] * depth
    embedding, branch = contributions(residual_taus(branches, mult, ratio))
    assert embedding + sum(branch) == pytest.approx(1.0, rel=1e-12)  # unit scale at the end
    # Average branch against the embedding counted as L/2 branches, in std: residual_mult.
    average = sum(branch) / len(branch)
    assert math.sqrt(average / (embedding / (len(branch) / 2))) == pytest.approx(mult, rel=1e-12)
    # Every attention branch against every FFN branch, in std: residual_attn_ratio.
    for a in branch[0::2]:
        for f in branch[1::2]:
            assert math.sqrt(a / f) == pytest.approx(ratio, rel=1e-12)


def test_defaults_are_the_running_mean_with_the_embedding_as_half_the_branches() -> None:
    taus = residual_taus(["attention", "ffn"] * 4)
    assert taus == pytest.approx([1 / (4 + i + 1) for i in range(8)], rel=1e-12)
    # Branch kinds are given, not assumed alternating: an FFN-less trunk is unit-scaled too.
    embedding, branch = contributions(residual_taus(["attention"] * 3, 2.0, 0.5))
    assert embedding + sum(branch) == pytest.approx(1.0, rel=1e-12)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="residual_mult must be a finite number > 0, got 0"):
        branch_weights(0.0, 1.0)
    with pytest.raises(ValueError, match="residual_attn_ratio .* got inf"):
        branch_weights(1.0, float("inf"))
    with pytest.raises(ValueError, match="branches must be a non-empty list"):
        residual_taus(["attention", "mlp"])
