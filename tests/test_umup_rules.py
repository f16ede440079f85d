"""u-mup's Adam learning-rate rules by role and depth, on a table and on real models."""

import math

import pytest

from scmm.models import CharLM
from scmm.parameters import Parameter, ParameterTable
from scmm.schemes.umup_rules import adam_learning_rate_multiplier, learning_rate_multipliers

from conftest import KINDS, model_settings  # pylint: disable=wrong-import-order


def test_each_role_follows_its_closed_form() -> None:
    depth = 3
    rows = [
        Parameter("emb", (256, 16), "embedding"),
        Parameter("w", (16, 32), "weight", fan_in=16, depth=2),
        Parameter("w_out", (16, 32), "weight", fan_in=16),  # outside the branches
        Parameter("b", (32,), "bias", depth=1),
        Parameter("g", (16,), "gain", depth=3),
        Parameter("final_g", (16,), "gain"),
        Parameter("head", (16, 256), "readout", fan_in=16),
    ]
    got = learning_rate_multipliers(ParameterTable(rows, depth=2 * depth), depth)
    # The library's own example: Embedding(2^8, 2^4) trains at lr/4; a depth-3 hidden weight
    # of fan-in 16 at lr/4/sqrt(3).
    expected = {
        "emb": 1 / 4,
        "w": 1 / 4 / math.sqrt(3),
        "w_out": 1 / 4,
        "b": 1 / math.sqrt(3),
        "g": 1 / math.sqrt(3),
        "final_g": 1.0,
        "head": 1.0,
    }
    assert got == pytest.approx(expected, rel=1e-12)


def test_a_weight_without_a_fan_in_or_an_unknown_role_is_named() -> None:
    with pytest.raises(ValueError, match="'w' .* declares no fan-in"):
        adam_learning_rate_multiplier(Parameter("w", (4, 4), "weight"), 2)
    with pytest.raises(ValueError, match="role 'mask'"):
        adam_learning_rate_multiplier(Parameter("m", (4,), "mask"), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers must be >= 1, got 0"):
        adam_learning_rate_multiplier(Parameter("b", (4,), "bias"), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_of_every_model_kind_gets_its_rule(kind: str) -> None:
    model = CharLM(model_settings(kind, hidden_size=32, depth=2))
    table = model.parameters
    got = learning_rate_multipliers(table, layers=2)  # L = 2 layers ...
    assert set(got) == set(table.paths) and table.depth == 4  # ... of two residual blocks each
    for row in table:
        in_branch = row.depth is not None
        if row.role == "weight":
            assert row.fan_in is not None
            want = row.fan_in**-0.5 * (2**-0.5 if in_branch else 1.0)
        elif row.role == "embedding":
            want = 32**-0.5
        elif row.role == "readout":
            want = 1.0
        else:
            want = 2**-0.5 if in_branch else 1.0
        assert got[row.path] == pytest.approx(want, rel=1e-12), row.path
    # Hidden weights inside the blocks exist and are scaled by depth (the rule is exercised).
    assert any(r.role == "weight" and r.depth is not None for r in table)
