"""Weight decay modes: ``coupled`` (today's AdamW/SGDM rule, decay moves with the peak learning
rate) and ``independent`` (u-mup's rule: per-step decay wd x s(t), s(t) the schedule factor).

With zero gradients both optimisers' moment terms vanish, so the weights follow the decay
alone and have a closed form: w_t = w_0 * prod_{k<t} (1 - d_k), where d_k is
``lr(k) * lr_mult * wd * wd_mult`` (coupled) or ``wd * wd_mult * s(k)`` (independent).
"""

import keras
import numpy as np
import pytest

from scmm.experiments.reporting import parameters_record
from scmm.parameters import Parameter, ParameterTable
from scmm.training.settings import AdamWSettings, OptimiserSettings, SGDMSettings

STEPS = 6
DECAY = 0.05
SCHEDULE = 0.3  # lr(t) = lr * 2^(-0.3 t)


def _variables() -> list[keras.Variable]:
    rng = np.random.default_rng(0)
    return [
        keras.Variable(rng.normal(size=(3, 4)).astype("float32"), name="kernel"),
        keras.Variable(rng.normal(size=(4,)).astype("float32"), name="gain"),
    ]


def _table(variables: list[keras.Variable]) -> ParameterTable:
    # Different multipliers per parameter: the independent rule must ignore the LR multiplier
    # and keep the weight-decay one.
    return ParameterTable(
        [
            Parameter(
                variables[0].path,
                (3, 4),
                "weight",
                learning_rate_multiplier=0.25,
                weight_decay_multiplier=1.0,
            ),
            Parameter(
                variables[1].path,
                (4,),
                "gain",
                learning_rate_multiplier=2.0,
                weight_decay_multiplier=0.5,
            ),
        ]
    )


def _settings(kind: str, learning_rate: float) -> OptimiserSettings:
    if kind == "adamw":
        return AdamWSettings(
            learning_rate=learning_rate, learning_rate_decay=SCHEDULE, weight_decay=DECAY
        )
    return SGDMSettings(
        learning_rate=learning_rate, learning_rate_decay=SCHEDULE, weight_decay=DECAY
    )


def _decayed(kind: str, learning_rate: float, mode: str) -> list[np.ndarray]:
    variables = _variables()
    table = _table(variables)
    optimiser = _settings(kind, learning_rate).build(variables, table, weight_decay_mode=mode)
    for _ in range(STEPS):
        optimiser.apply([np.zeros(v.shape, np.float32) for v in variables])
    return [np.asarray(v.numpy(), np.float64) for v in variables]


def _closed_form(learning_rate: float, mode: str) -> list[np.ndarray]:
    start = [np.asarray(v.numpy(), np.float64) for v in _variables()]
    rows = list(_table(_variables()))
    out = []
    for weight, row in zip(start, rows):
        factor = 1.0
        for k in range(STEPS):
            schedule = 2.0 ** (-SCHEDULE * k)
            wd = DECAY * row.weight_decay_multiplier
            if mode == "independent":
                factor *= 1 - wd * schedule
            else:
                factor *= 1 - learning_rate * schedule * row.learning_rate_multiplier * wd
        out.append(weight * factor)
    return out


@pytest.mark.parametrize("kind", ["adamw", "sgdm"])
def test_independent_decay_follows_the_schedule_and_not_the_peak_rate(kind: str) -> None:
    low, high = _decayed(kind, 1e-3, "independent"), _decayed(kind, 0.5, "independent")
    expected = _closed_form(1e-3, "independent")
    for got_low, got_high, want in zip(low, high, expected):
        np.testing.assert_allclose(got_low, want, rtol=1e-6)
        np.testing.assert_allclose(got_high, want, rtol=1e-6)  # the peak rate cancels
    # The decay is visible (not a no-op): about 1 - 0.05 * sum(s) of the weight is left.
    assert np.all(np.abs(low[0]) < np.abs(_variables()[0].numpy()))


@pytest.mark.parametrize("kind", ["adamw", "sgdm"])
def test_coupled_decay_moves_with_the_peak_rate(kind: str) -> None:
    for learning_rate in (0.1, 0.5):
        got = _decayed(kind, learning_rate, "coupled")
        for weight, want in zip(got, _closed_form(learning_rate, "coupled")):
            np.testing.assert_allclose(weight, want, rtol=1e-6)
    assert not np.allclose(_decayed(kind, 0.1, "coupled")[0], _decayed(kind, 0.5, "coupled")[0])


def test_a_trainable_variable_without_a_role_is_named() -> None:
    variables = _variables()
    table = ParameterTable([next(iter(_table(variables)))])  # the gain has no row
    with pytest.raises(ValueError, match=f"without a role.*{variables[1].path}"):
        AdamWSettings().build(variables, table)
    with pytest.raises(ValueError, match="weight_decay_mode must be one of coupled, independent"):
        AdamWSettings().build(variables, _table(variables), weight_decay_mode="both")


def test_parameters_json_states_each_parameters_decay_per_step() -> None:
    variables = _variables()
    table = _table(variables)
    settings = _settings("adamw", 0.5)
    for mode, expected in (("coupled", [0.5 * 0.25 * DECAY, 0.5 * 2.0 * DECAY * 0.5]),
                           ("independent", [DECAY, DECAY * 0.5])):  # fmt: skip
        record = parameters_record(table, settings, "unit", mode)
        assert record["weight_decay_mode"] == mode
        got = [row["decay_per_step"] for row in record["parameters"]]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
