"""The per-parameter table: facts declared by the layers, the schemes' multipliers, and that
``parameters.json`` states the learning rate the optimiser really applies."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_execution, model_settings, random_batch, unit_scaled

from scmm.experiments import main
from scmm.experiments.reporting import parameters_record
from scmm.models import CharLM
from scmm.parameters import Parameter, ParameterInfo, ParameterTable
from scmm.training import SGDMSettings, Trainer, TrainingSettings
from scmm.uscale.calibration import calibrate_weight_gradients, weight_gradients


def test_layers_declare_roles_and_fan_in_by_their_layout() -> None:
    """Fan-in is the contraction size of the op, whatever the kernel's layout."""
    attention = CharLM(model_settings("attention", hidden_size=32)).parameters
    conv = CharLM(model_settings("conv", hidden_size=32)).parameters  # kernel 5, 4 groups
    rnn = CharLM(model_settings("rnn", hidden_size=32)).parameters
    expected = {
        (attention, "layer_0_sequence/attention/qkv"): ("weight", 32),  # (h, 3, heads, hs)
        (attention, "layer_0_sequence/attention/positional"): ("weight", 16),  # 2 x 8 freqs
        (attention, "layer_0_sequence/attention/output_kernel"): ("weight", 32),  # heads x hs
        (attention, "layer_0_sequence/attention/output_bias"): ("bias", None),
        (attention, "layer_0_token/ffn/up/kernel"): ("weight", 32),
        (attention, "layer_0_token/ffn/down/kernel"): ("weight", 128),
        (attention, "layer_0_sequence/norm/gamma"): ("gain", None),
        (attention, "layer_0_sequence/norm/beta"): ("offset", None),
        (attention, "embedding/embeddings"): ("embedding", None),
        (attention, "shift/padding"): ("embedding", None),
        (attention, "head/kernel"): ("readout", 32),
        (conv, "layer_1_sequence/conv/kernel"): ("weight", 5 * 32 // 4),  # (K, h/g, h)
        (rnn, "layer_0_sequence/rnn/recurrent_kernel"): ("weight", 64),  # [x, s] concatenated
        (rnn, "layer_0_sequence/rnn/bias"): ("bias", None),
    }
    for (table, path), (role, fan_in) in expected.items():
        assert (table[path].role, table[path].fan_in) == (role, fan_in), path


def test_depth_positions_and_paths_match_the_model() -> None:
    model = CharLM(model_settings("attention", depth=2))
    table = model.parameters
    assert table.paths == [v.path for v in model.trainable_weights]
    assert table.depth == 4  # 2 layers x (sequence, token) residual blocks
    assert table["layer_0_sequence/attention/qkv"].depth == 1
    assert table["layer_0_token/ffn/up/bias"].depth == 2
    assert table["layer_1_token/norm/gamma"].depth == 4
    for outside in ("embedding/embeddings", "shift/padding", "final_norm/gamma", "head/kernel"):
        assert table[outside].depth is None


def test_scheme_multipliers() -> None:
    """Regular: all 1. Unit: vectors at 1/sqrt(size) (the paper's rule, by shape)."""
    regular = CharLM(model_settings("rnn")).parameters
    unit = CharLM(unit_scaled(model_settings("rnn"))).parameters
    assert {r.learning_rate_multiplier for r in regular} == {1.0}
    for row in unit:
        expected = 1 / math.sqrt(row.shape[0]) if len(row.shape) == 1 else 1.0
        assert row.learning_rate_multiplier == expected, row.path
        assert row.weight_decay_multiplier == 1.0
    assert unit["layer_0_sequence/rnn/bias"].learning_rate_multiplier == 1.0  # (2, h): a matrix


def test_table_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="role 'kernel'"):
        ParameterInfo("kernel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fan_in"):
        ParameterInfo("weight", 0)
    row = Parameter("a/b", (2,), "bias")
    with pytest.raises(ValueError, match="duplicate parameter path 'a/b'"):
        ParameterTable([row, dataclasses.replace(row)])
    with pytest.raises(KeyError, match="no parameter 'c'"):
        ParameterTable([row])["c"]  # pylint: disable=expression-not-assigned


def test_effective_learning_rates_are_what_the_optimiser_applies() -> None:
    """One real SGD step of a calibrated unit-scaled model: each parameter moves by exactly
    -(stated learning rate) x (the gradient the optimiser sees, factor included)."""
    model = CharLM(unit_scaled(model_settings("attention", seed=2)))
    batch = random_batch(1, 4, 24, np.random.default_rng(0))
    step_batch = {k: v[0] for k, v in batch.items()}
    calibrate_weight_gradients(model, step_batch, model.parameters)
    optimiser = SGDMSettings(learning_rate=2**-6, momentum=0.0)
    stated = {
        row["path"]: row["learning_rate"]
        for row in parameters_record(model.parameters, optimiser, "unit")["parameters"]
    }
    grads = weight_gradients(model, step_batch, model.parameters.gradient_factors())
    before = model.get_weight_arrays()
    trainer = Trainer(model, TrainingSettings(optimiser=optimiser), make_execution(xla=False))
    trainer.train(batch)
    after = model.get_weight_arrays()
    multipliers = {r.learning_rate_multiplier for r in model.parameters}
    assert len(multipliers) > 3  # vectors of several sizes: the check is not trivial
    for path, rate in stated.items():
        grad = tf.convert_to_tensor(grads[path]).numpy().astype(np.float64)
        moved = before[path].astype(np.float64) - after[path].astype(np.float64)
        np.testing.assert_allclose(moved, rate * grad, rtol=2e-3, atol=1e-6, err_msg=path)


def test_every_run_writes_parameters_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--preset", "smoke", "--output.wandb", "off", "--output.progress", "off"]
    unit = ["--model.scaling.type", "unit", "--model.residual.weighting", "mean"]
    assert main([*common, *unit, "--training.steps", "0", "--out", str(out)]) == 0
    record = json.loads((out / "parameters.json").read_text())
    assert record["scheme"] == "unit"
    rows = {row["path"]: row for row in record["parameters"]}
    rate = 2**-7  # the smoke preset's
    assert rows["head/kernel"]["role"] == "readout" and rows["head/kernel"]["fan_in"] == 32
    assert rows["final_norm/gamma"]["learning_rate"] == pytest.approx(rate / math.sqrt(32))
    assert rows["layer_0_sequence/attention/qkv"]["learning_rate"] == rate
    factors = [row["gradient_factor"] for row in rows.values()]
    # Calibrated (every factor 1 before) before the file was written.
    assert min(factors) < 0.9 and len(set(factors)) > len(factors) // 2
