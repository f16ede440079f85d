"""scmm.uu.parameter_table and scmm.uu.AdamW: facts by variable path, u-muP multipliers per role,
the Adam step against numpy, independent weight decay's exact factor, config and fit."""

import math
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from scmm import uu
from scmm.parameters import Parameter, ParameterTable

KerasParameterTable, parameter_table = uu.KerasParameterTable, uu.parameter_table

VOCAB, WIDTH, HIDDEN, SEQ = 64, 16, 32, 4


class Block(keras.layers.Layer):
    """A minimal branch wrapper (not scmm.uu.Residual): x + branch(x)."""

    def __init__(self, branch: keras.layers.Layer, **kwargs: Any):
        super().__init__(**kwargs)
        self.branch = branch

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs + self.branch(inputs)


def mlp(name: str) -> keras.Sequential:
    return keras.Sequential(
        [
            uu.LayerNormalization(scheme="umup"),
            uu.Dense(HIDDEN, scheme="umup"),
            uu.Dense(WIDTH, scheme="umup"),
        ],
        name=name,
    )


def small_model(local_wrapper: bool = True) -> keras.Model:
    """Embedding, three residual blocks (two uu.Residual, one local wrapper), a readout."""
    tokens = keras.Input((SEQ,), dtype="int32", batch_size=None)
    x = uu.Embedding(VOCAB, WIDTH, scheme="umup", name="embed")(tokens)
    x = uu.Residual(mlp("mlp1"), tau=0.5, scheme="umup", name="res1")(x)
    x = uu.Residual(mlp("mlp2"), tau=0.5, scheme="umup", name="res2")(x)
    if local_wrapper:
        x = Block(uu.Dense(WIDTH, scheme="umup", name="inner"), name="block3")(x)
    x = uu.LayerNormalization(scheme="umup", name="final_norm")(x)
    logits = uu.DenseReadout(VOCAB, scheme="umup", name="head")(x)
    return keras.Model(tokens, logits)


def rows_by_layer(table: ParameterTable) -> dict[str, Parameter]:
    """Rows keyed by the last two path parts (layer/variable)."""
    return {"/".join(row.path.split("/")[-2:]): row for row in table}


def test_parameter_table_roles_fan_in_and_depth() -> None:
    model = small_model()
    table = parameter_table(model)
    assert table.paths == [v.path for v in model.trainable_variables]
    rows = rows_by_layer(table)
    assert (rows["embed/embeddings"].role, rows["embed/embeddings"].depth) == ("embedding", None)
    assert rows["head/kernel"].role == "readout" and rows["head/kernel"].fan_in == WIDTH
    assert rows["head/bias"].depth is None and rows["final_norm/gamma"].depth is None
    first_dense = [r for r in table if "mlp1" in r.path and r.path.endswith("kernel")]
    assert [(r.role, r.fan_in, r.depth) for r in first_dense] == [
        ("weight", WIDTH, 1),
        ("weight", HIDDEN, 1),
    ]
    assert {r.depth for r in table if "mlp2" in r.path} == {2}
    assert (rows["inner/kernel"].fan_in, rows["inner/kernel"].depth) == (WIDTH, 3)
    assert {r.role for r in table if "mlp1" in r.path} == {"weight", "bias", "gain", "offset"}
    assert table.depth == 3 and table.layers == math.ceil(3 / 2)
    assert parameter_table(model, layers=5).layers == 5


def test_dotted_names_resolve_through_sub_layers() -> None:
    query = keras.Input((SEQ, WIDTH))
    attention = uu.MultiHeadAttention(num_heads=2, key_dim=8, scheme="umup", name="mha")
    model = keras.Model(query, attention(query, query))
    rows = rows_by_layer(parameter_table(model))
    assert rows["query/kernel"].fan_in == WIDTH and rows["query/kernel"].role == "weight"
    assert rows["attention_output/kernel"].fan_in == 2 * 8
    assert len(rows) == len(model.trainable_variables)


def test_branches_mapping_gives_depth_and_skips_non_layers() -> None:
    inputs = keras.Input((WIDTH,))
    a = uu.Dense(WIDTH, scheme="umup", name="a")(inputs)
    b = uu.Dense(WIDTH, scheme="umup", name="b")(a + inputs)
    model = keras.Model(inputs, b + a)
    table = parameter_table(model, branches={"a": 1, "b": 2, "ops_add": 2})
    rows = rows_by_layer(table)
    assert rows["a/kernel"].depth == 1 and rows["b/bias"].depth == 2
    assert table.depth == 2 and table.layers == 1
    with pytest.raises(ValueError, match=r"branches\['a'\] = 0; expected a 1-based block index"):
        parameter_table(model, branches={"a": 0})


def test_unknown_variables_raise_or_get_multiplier_one() -> None:
    inputs = keras.Input((WIDTH,))
    hidden = keras.layers.Dense(WIDTH, name="plain")(inputs)
    model = keras.Model(inputs, uu.Dense(3, scheme="umup", name="known")(hidden))
    with pytest.raises(ValueError, match=r"2 trainable variable\(s\).*plain/bias, plain/kernel"):
        parameter_table(model)
    table = parameter_table(model, allow_unknown=True)
    assert isinstance(table, KerasParameterTable)
    assert sorted(table.unknown) == ["plain/bias", "plain/kernel"]
    optimizer = uu.AdamW(parameters=table)
    optimizer.build(model.trainable_variables)
    rates = optimizer.effective_rates()
    assert rates["plain/kernel"].learning_rate_multiplier == 1.0
    assert rates["known/kernel"].learning_rate_multiplier == pytest.approx(WIDTH**-0.5)


def expected_multiplier(row: Parameter, layers: int) -> float:
    """u-muP's Adam rules written out once more, independently of scmm.schemes."""
    depth = layers**-0.5 if row.depth is not None else 1.0
    if row.role == "weight":
        assert row.fan_in is not None
        return row.fan_in**-0.5 * depth
    if row.role == "embedding":
        return row.shape[-1] ** -0.5
    if row.role == "readout":
        return 1.0
    return depth  # bias, gain, offset


@pytest.mark.parametrize("layers", [None, 4])
def test_multipliers_per_role_equal_the_formulas(layers: Any) -> None:
    model = small_model()
    table = parameter_table(model, layers=layers)
    optimizer = uu.AdamW(parameters=table)
    optimizer.build(model.trainable_variables)
    rates = optimizer.effective_rates()
    for row in table:
        want = expected_multiplier(row, table.layers)
        assert rates[row.path].learning_rate_multiplier == pytest.approx(want, rel=1e-12), row
    # Spot values: a branch weight of fan-in 16 at L=2 is 16^-1/2 2^-1/2; the embedding 16^-1/2.
    rows = rows_by_layer(table)
    if layers is None:
        assert rates[rows["inner/kernel"].path].learning_rate_multiplier == pytest.approx(
            0.25 / math.sqrt(2)
        )
    assert rates[rows["embed/embeddings"].path].learning_rate_multiplier == pytest.approx(0.25)
    assert rates[rows["head/kernel"].path].learning_rate_multiplier == 1.0


def numpy_adamw_steps(
    weights: list[np.ndarray],
    grads: list[list[np.ndarray]],
    multipliers: list[float],
    lr: float,
    wd: float,
    betas: tuple[float, float],
    eps: float = 1e-7,
) -> list[np.ndarray]:
    """Keras's Adam (epsilon hat) in float64, lr times a multiplier per parameter, and
    independent decay w -= wd * s(t) * w with a constant rate (s = 1)."""
    b1, b2 = betas
    w = [x.astype(np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            w[i] = w[i] - wd * w[i]
            m[i] = m[i] + (g - m[i]) * (1 - b1)
            v[i] = v[i] + (g * g - v[i]) * (1 - b2)
            alpha = lr * multipliers[i] * math.sqrt(1 - b2**t) / (1 - b1**t)
            w[i] = w[i] - m[i] * alpha / (np.sqrt(v[i]) + eps)
    return w


def test_adamw_steps_equal_numpy_adam_with_per_parameter_rates() -> None:
    model = small_model()
    variables = model.trainable_variables
    # Betas whose powers are exact in float32: 1 - 0.999^t in float32 cancels to a 1e-5
    # relative error (beta^t rounded near 1), above the tolerance and not what is tested.
    betas = (0.5, 0.75)
    optimizer = uu.AdamW(0.1, 0.01, *betas, parameters=model)
    rng = np.random.default_rng(0)
    before = [np.array(v) for v in variables]
    grads = [[rng.standard_normal(v.shape).astype(np.float32) for v in variables] for _ in "ab"]
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)
    table = parameter_table(model)
    multipliers = [expected_multiplier(table[v.path], table.layers) for v in variables]
    assert len(set(multipliers)) >= 4  # several distinct rules are exercised
    want = numpy_adamw_steps(before, grads, multipliers, lr=0.1, wd=0.01, betas=betas)
    for variable, expected in zip(variables, want):
        np.testing.assert_allclose(np.array(variable), expected, rtol=1e-6, atol=1e-7)


def one_weight_model() -> keras.Model:
    inputs = keras.Input((WIDTH,))
    hidden = uu.Dense(HIDDEN, scheme="umup", name="wide")(inputs)
    return keras.Model(inputs, uu.Dense(WIDTH, scheme="umup", name="narrow")(hidden))


@pytest.mark.parametrize("independent", [True, False])
def test_weight_decay_factor_per_step(independent: bool) -> None:
    model = one_weight_model()
    table = parameter_table(model)
    schedule = keras.optimizers.schedules.PolynomialDecay(
        0.1, decay_steps=4, end_learning_rate=0.02
    )
    optimizer = uu.AdamW(
        learning_rate=schedule,
        weight_decay=0.5,
        parameters=table,
        independent_weight_decay=independent,
    )
    variables = model.trainable_variables
    zeros = [tf.zeros_like(v) for v in variables]  # Adam's step is then exactly 0
    for step in range(3):
        before = [np.array(v) for v in variables]
        optimizer.apply(zeros, variables)
        rate = float(schedule(step))  # the step's rate: Keras evaluates it before counting
        for variable, old in zip(variables, before):
            lr_multiplier = expected_multiplier(table[variable.path], table.layers)
            # independent: wd x s(t), s(t) = lr(t) / peak, whatever the multiplier;
            # coupled: lr(t) x the parameter's multiplier x wd (torch AdamW on lr_p).
            factor = 0.5 * rate / 0.1 if independent else 0.5 * rate * lr_multiplier
            np.testing.assert_allclose(np.array(variable), old * (1 - factor), rtol=1e-6)
    assert {r.learning_rate_multiplier for r in optimizer.effective_rates().values()} == {
        WIDTH**-0.5,
        HIDDEN**-0.5,
        1.0,
    }
    now = float(schedule(3))
    want = 0.5 * now / 0.1 if independent else 0.5 * now * WIDTH**-0.5
    got = optimizer.effective_rates()[table.paths[0]].weight_decay
    assert got == pytest.approx(want, rel=1e-6)


def test_independent_decay_does_not_depend_on_the_peak_rate_and_honours_exclusions() -> None:
    results = []
    for rate in (0.1, 0.001):
        model = one_weight_model()
        optimizer = uu.AdamW(learning_rate=rate, weight_decay=0.25, parameters=model)
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        before = [np.array(v) for v in model.trainable_variables]
        optimizer.apply(
            [tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables
        )
        ratios = {
            v.path: np.array(v) / np.where(old == 0, 1, old)
            for v, old in zip(model.trainable_variables, before)
        }
        results.append(ratios)
        assert optimizer.effective_rates()["narrow/bias"].weight_decay == 0.0
    for path, ratio in results[0].items():
        if path.endswith("kernel"):
            np.testing.assert_allclose(ratio, 0.75, rtol=1e-6)
            np.testing.assert_allclose(results[1][path], 0.75, rtol=1e-6)


def test_config_round_trip_and_keras_file_with_residual_paths(tmp_path: Any) -> None:
    model = small_model(local_wrapper=False)  # Block has no get_config
    optimizer = uu.AdamW(learning_rate=0.01, parameters=model, readout_constraint="forward")
    config = optimizer.get_config()
    assert config["learning_rate_multipliers"] == {
        path: rate.learning_rate_multiplier for path, rate in optimizer.effective_rates().items()
    }
    restored = uu.AdamW.from_config(config)
    assert restored.get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(revived, uu.AdamW) and revived.get_config() == config
    loss = uu.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (8, SEQ))
    model.fit(tokens, tokens, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, uu.AdamW)
    # uu.Residual's inner variables come back under shorter paths; they match by suffix.
    loaded.optimizer.build(loaded.trainable_variables)
    assert loaded.optimizer._lr_multipliers == optimizer._lr_multipliers


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_compile_fit_with_jit_compile(policy: str) -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = small_model()
        model.compile(
            optimizer=uu.AdamW(learning_rate=0.01, parameters=model),
            loss=uu.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        tokens = np.random.default_rng(1).integers(0, VOCAB, (16, SEQ))
        before = [np.array(v) for v in model.trainable_variables]
        history = model.fit(tokens, tokens, batch_size=8, epochs=2, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert all(
            not np.array_equal(b, np.array(v)) for b, v in zip(before, model.trainable_variables)
        )
        assert all(v.dtype == "float32" for v in model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)


def test_errors() -> None:
    model = one_weight_model()
    with pytest.raises(ValueError, match="readout_constraint='backward'; expected one of none"):
        uu.AdamW(parameters=model, readout_constraint="backward")
    with pytest.raises(ValueError, match="uu.AdamW needs parameters="):
        uu.AdamW()
    with pytest.raises(ValueError, match="parameters must be a keras.Model or a ParameterTable"):
        uu.AdamW(parameters={"a": 1})
    with pytest.raises(ValueError, match="not both"):
        uu.AdamW(parameters=model, learning_rate_multipliers={"a": 1.0})
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([10], [0.1, 0.01])
    with pytest.raises(ValueError, match="needs peak_learning_rate= for a learning rate of type"):
        uu.AdamW(learning_rate=schedule, parameters=model)
    uu.AdamW(learning_rate=schedule, parameters=model, peak_learning_rate=0.1)
    optimizer = uu.AdamW(parameters=parameter_table(small_model()))
    with pytest.raises(ValueError, match=r"no u-muP multiplier for 5 variable\(s\): wide/kernel"):
        optimizer.build(model.trainable_variables + [keras.Variable(np.zeros(3), name="stray")])
    with pytest.raises(ValueError, match="layers .u-muP's L. must be >= 1"):
        parameter_table(model, layers=0)
    with pytest.raises(ValueError, match="parameter_table needs a built model"):
        parameter_table(keras.Sequential([uu.Dense(3)]))
