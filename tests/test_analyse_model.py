"""scmm.analysis.analyse: per-layer-call scales of one pass of any Keras model."""

import json
import math
import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=wrong-import-position
import keras
import numpy as np
import pytest
import tensorflow as tf

from scmm.analysis import ModelScales, ScaleRecord, analyse, load_scales_json
from scmm.analysis.model_scales import OUTPUT_GRADIENT_NAME, WEIGHT_PASS

RNG = np.random.default_rng(1234)
FEATURES = 8


def inputs(batch: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, FEATURES)).astype(np.float32)


def mlp() -> keras.Sequential:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, name="up"),
            keras.layers.Activation("relu", name="act"),
            keras.layers.BatchNormalization(name="norm"),
            keras.layers.Dropout(0.25, name="drop"),
            keras.layers.Dense(3, name="out"),
        ],
        name="mlp",
    )


def residual(add_layer: bool = False) -> keras.Model:
    keras.utils.set_random_seed(1)
    x = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(FEATURES, name="branch")(x)
    y = keras.layers.Add(name="merge")([x, h]) if add_layer else keras.ops.add(x, h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(y), name="residual")


class Block(keras.layers.Layer):
    """A container layer: two Dense sublayers and an op of its own between them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(FEATURES, name="inner")
        self.outer = keras.layers.Dense(FEATURES, name="outer")

    def call(self, x: Any) -> Any:
        return self.outer(keras.ops.tanh(self.inner(x))) + x


class Subclassed(keras.Model):
    """Nested layers and one layer (``shared``) called twice."""

    def __init__(self) -> None:
        super().__init__(name="subclassed")
        self.shared = keras.layers.Dense(FEATURES, name="shared")
        self.block = Block(name="block")
        self.head = keras.layers.Dense(1, name="head")

    def call(self, x: Any) -> Any:
        return self.head(self.shared(self.block(self.shared(x))))


def subclassed() -> Subclassed:
    keras.utils.set_random_seed(2)
    model = Subclassed()
    model(inputs(2))
    return model


def all_finite(record: ScaleRecord) -> bool:
    values = [record.std, record.rms, record.abs_max, record.mean, record.zero_fraction]
    return all(math.isfinite(v) for v in values) and record.nonfinite_fraction == 0


def assert_complete(report: ModelScales, names: list[str]) -> None:
    """Exactly these calls, in this order, every record finite, backward for each forward."""
    assert [c.name for c in report.calls] == names
    for call in report.calls:
        assert call.outputs and len(call.outputs) == len(call.gradients)
        assert all(all_finite(r) for r in (*call.outputs, *call.gradients))
        assert {r.pass_ for r in call.outputs} == {"forward"}
        assert {r.pass_ for r in call.gradients} == {"backward"}
    for weight in report.weights:
        assert all_finite(weight.gradient) and all_finite(weight.value)
        assert (weight.value.pass_, weight.gradient.pass_) == (WEIGHT_PASS, "weight_gradient")


def test_sequential_mlp_every_leaf_layer_with_weights() -> None:
    model = mlp()
    report = analyse(model, inputs(), RNG.standard_normal((32, 3)), loss="mse")
    assert_complete(report, ["up", "act", "norm", "drop", "out"])
    assert report.objective == "loss"
    assert report.call("up").weights == ("mlp/up/kernel", "mlp/up/bias")
    assert report.call("norm").weights == ("mlp/norm/gamma", "mlp/norm/beta")
    assert report.call("act").weights == ()
    assert [w.path for w in report.weights] == [v.path for v in model.trainable_weights]
    assert report.weight("mlp/out/kernel").layer == "out"
    # training=True by default: dropout zeroes about a quarter of the values it passes on.
    assert 0.1 < report.call("drop").output.zero_fraction - report.call("norm").output.zero_fraction
    assert report.output_gradients[0].name == OUTPUT_GRADIENT_NAME


def test_functional_residual_records_the_add_op_and_the_add_layer() -> None:
    model = residual()
    report = analyse(model, inputs())
    # keras.ops nodes are auto-named per process ("add", "add_1", ...): read this model's.
    add = next(op.name for op in model.operations if type(op).__name__ == "Add")
    assert_complete(report, ["branch", add, "head"])
    assert report.call(add).class_name == "Add"
    # The gradient arriving at the add is the head's input gradient, so it also reaches x.
    report = analyse(residual(add_layer=True), inputs())
    assert_complete(report, ["branch", "merge", "head"])


def test_subclassed_nested_and_called_twice() -> None:
    model = subclassed()
    report = analyse(model, inputs())
    assert_complete(report, ["shared", "block/inner", "block/outer", "shared#1", "head"])
    first, second = report.calls_of("shared")
    assert (first.call_index, second.call_index) == (0, 1)
    assert first.output.std != second.output.std
    # Weights are per layer, their gradients summed over both calls.
    assert first.weights == second.weights == ("subclassed/shared/kernel", "subclassed/shared/bias")
    with_containers = analyse(model, inputs(), include_containers=True)
    assert "block" in [c.name for c in with_containers.calls]
    assert [c.name for c in with_containers.calls].index("block") == 3  # after its children


def two_dense(kernel_1: np.ndarray, kernel_2: np.ndarray) -> keras.Sequential:
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(5, name="first"), keras.layers.Dense(3)]
    )
    bias_1 = np.linspace(-1, 1, 5).astype(np.float32)
    model.layers[0].set_weights([kernel_1, bias_1])
    model.layers[1].set_weights([kernel_2, np.zeros(3, np.float32)])
    return model


def test_hand_computation_with_a_loss() -> None:
    kernel_1 = RNG.standard_normal((FEATURES, 5)).astype(np.float32)
    kernel_2 = RNG.standard_normal((5, 3)).astype(np.float32)
    model = two_dense(kernel_1, kernel_2)
    x, t = inputs(), RNG.standard_normal((32, 3)).astype(np.float32)
    report = analyse(model, x, t, loss=keras.losses.MeanSquaredError())

    w1, w2 = tf.constant(kernel_1), tf.constant(kernel_2)
    b1 = tf.constant(np.linspace(-1, 1, 5).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(w1)
        h = tf.matmul(x, w1) + b1  # (32, 5)
        tape.watch(h)
        y = tf.matmul(h, w2)
        loss = tf.reduce_mean(tf.square(y - t))
    first = report.call("first")
    np.testing.assert_allclose(first.output.std, np.std(h.numpy().astype(np.float64)), rtol=1e-6)
    grad_h = tape.gradient(loss, h).numpy().astype(np.float64)
    np.testing.assert_allclose(first.gradient.std, np.std(grad_h), rtol=1e-6)
    np.testing.assert_allclose(first.gradient.rms, np.sqrt(np.mean(grad_h**2)), rtol=1e-6)
    grad_w1 = tape.gradient(loss, w1).numpy().astype(np.float64)
    kernel = report.weight(model.layers[0].kernel.path)
    np.testing.assert_allclose(kernel.gradient.std, np.std(grad_w1), rtol=1e-6)
    np.testing.assert_allclose(kernel.value.std, np.std(kernel_1.astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(report.objective_value, loss.numpy(), rtol=1e-6)


def test_unit_normal_upstream_gradient() -> None:
    kernel_1 = RNG.standard_normal((FEATURES, 5)).astype(np.float32)
    kernel_2 = RNG.standard_normal((5, 3)).astype(np.float32)
    model = two_dense(kernel_1, kernel_2)
    report = analyse(model, inputs(), seed=7)
    assert report.objective == "unit_normal"
    upstream = np.random.default_rng(7).standard_normal((32, 3)).astype(np.float32)
    last = report.calls[-1]
    np.testing.assert_allclose(last.gradient.std, np.std(upstream.astype(np.float64)), rtol=1e-6)
    assert report.output_gradients[0].std == last.gradient.std
    arriving = upstream.astype(np.float64) @ kernel_2.T.astype(np.float64)  # (32, 5)
    np.testing.assert_allclose(report.call("first").gradient.std, np.std(arriving), rtol=1e-6)


def snapshot(model: keras.Model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.variables]


def calls_shadowed(model: keras.Model) -> list[str]:
    targets = [model, *model._flatten_layers(), *getattr(model, "operations", [])]
    return [t.name for t in targets if "call" in t.__dict__]


@pytest.mark.parametrize("make", [mlp, residual, subclassed], ids=["mlp", "residual", "sub"])
def test_model_unchanged_afterwards(make: Any) -> None:
    model = make()
    x = inputs()
    before_eval = model(x, training=False).numpy()
    before_state = snapshot(model)
    analyse(model, x, training=True)
    assert not calls_shadowed(model)
    for old, new in zip(before_state, snapshot(model)):  # moving stats, seed states too
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(model(x, training=False).numpy(), before_eval)


def test_model_unchanged_when_the_pass_raises() -> None:
    model = mlp()
    before = snapshot(model)
    with pytest.raises(ValueError, match="do not fit"):
        analyse(model, inputs(), np.zeros((32, 4), np.float32), loss="mse")
    assert not calls_shadowed(model)
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


def test_compiled_loss_is_the_default_with_targets() -> None:
    model = residual()
    model.compile(loss="mse")
    x, t = inputs(), RNG.standard_normal((32, 2)).astype(np.float32)
    report = analyse(model, x, t)
    assert report.objective == "compiled_loss"
    expected = keras.losses.mean_squared_error(t, model(x)).numpy().mean()
    np.testing.assert_allclose(report.objective_value, expected, rtol=1e-6)


def test_files_written_and_steps_accumulate(tmp_path: Any) -> None:
    model = residual()
    report = analyse(model, inputs(), out_dir=str(tmp_path), step=0)
    assert report.json_path == str(tmp_path / "scales.json")
    assert report.png_path and os.path.getsize(report.png_path) > 10_000
    with open(report.png_path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    loaded = load_scales_json(report.json_path)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in report.records]
    passes = {r.pass_ for r in loaded}
    assert passes == {"forward", "backward", "weight_gradient", WEIGHT_PASS}
    analyse(model, inputs(seed=1), out_dir=str(tmp_path), step=5)
    analyse(model, inputs(seed=2), out_dir=str(tmp_path), step=5)  # replaces step 5
    with open(report.json_path, encoding="utf-8") as file:
        steps = [item["step"] for item in json.load(file)]
    assert steps.count(0) == steps.count(5) == len(report.records)


def test_default_inputs_for_a_model_with_declared_inputs() -> None:
    report = analyse(residual(), batch_size=4)
    assert report.call("branch").output.shape == (4, FEATURES)


def test_mixed_bfloat16_records_the_computed_dtype() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = residual()
    finally:
        keras.config.set_dtype_policy(previous)
    report = analyse(model, inputs())
    assert report.call("branch").output.dtype == "bfloat16"
    assert report.call("branch").gradient.dtype == "bfloat16"
    assert report.weight(model.layers[1].kernel.path).gradient.dtype == "float32"


def test_error_unbuilt_model_without_inputs() -> None:
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no declared inputs and is not built: pass inputs="):
        analyse(model)
    with pytest.raises(ValueError, match="has no declared inputs: pass inputs="):
        analyse(subclassed())


def test_unbuilt_model_with_inputs_is_built() -> None:
    model = keras.Sequential([keras.layers.Dense(4, name="a"), keras.layers.Dense(2, name="b")])
    report = analyse(model, inputs())
    assert_complete(report, ["a", "b"])
    assert len(report.weights) == 4


def test_error_nonfinite_forward_names_the_layer() -> None:
    model = residual()
    kernel = model.get_layer("branch").kernel
    poisoned = kernel.numpy()
    poisoned[0, 0] = np.inf
    kernel.assign(poisoned)
    with pytest.raises(ValueError, match="forward output 'branch' of Dense layer 'branch'"):
        analyse(model, inputs())
    report = analyse(model, inputs(), allow_nonfinite=True)
    assert report.call("branch").output.nonfinite_fraction > 0


def test_error_nonfinite_backward_names_the_layer() -> None:
    # sqrt(relu(x)) is finite forward, but its gradient at x <= 0 is 0 * inf = NaN.
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(FEATURES, name="before"),
            keras.layers.Lambda(lambda x: keras.ops.sqrt(keras.ops.relu(x)), name="root"),
        ]
    )
    with pytest.raises(ValueError, match="gradient arriving at the output 'before' of Dense"):
        analyse(model, inputs())


def test_error_nonfinite_inputs() -> None:
    x = inputs()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"inputs\[0\] holds 1 non-finite value"):
        analyse(mlp(), x)


def test_error_targets_that_do_not_fit() -> None:
    model = mlp()
    with pytest.raises(ValueError, match=r"targets\[0\] has shape \(5, 3\).*batch"):
        analyse(model, inputs(), np.zeros((5, 3)), loss="mse")
    with pytest.raises(ValueError, match="targets hold 2 tensor"):
        analyse(model, inputs(), [np.zeros((32, 3)), np.zeros((32, 3))], loss="mse")
    with pytest.raises(ValueError, match=r"shapes \[\(32, 4\)\] do not fit .* \[\(32, 3\)\]"):
        analyse(model, inputs(), np.zeros((32, 4)), loss="mse")


def test_error_loss_arguments() -> None:
    model = mlp()
    with pytest.raises(ValueError, match="loss='mse' was given without targets"):
        analyse(model, inputs(), loss="mse")
    with pytest.raises(ValueError, match="has no compiled loss: pass loss="):
        analyse(model, inputs(), np.zeros((32, 3)))
    with pytest.raises(ValueError, match="is not a Keras loss"):
        analyse(model, inputs(), np.zeros((32, 3)), loss="no_such_loss")
    with pytest.raises(ValueError, match="must be a Keras model or layer"):
        analyse(lambda x: x, inputs())


def test_error_when_no_call_runs_eagerly() -> None:
    class Compiled(keras.Model):
        """Its call is a tf.function: the layers inside are traced, not eager."""

        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        @tf.function
        def call(self, x: Any) -> Any:
            return self.dense(x)

    model = Compiled()
    model(inputs(2))
    with pytest.raises(ValueError, match="no layer call .* ran eagerly"):
        analyse(model, inputs())


def test_multi_output_compiled_model_and_its_metrics_untouched() -> None:
    keras.utils.set_random_seed(3)
    x = keras.Input((FEATURES,))
    model = keras.Model(x, [keras.layers.Dense(2, name="a")(x), keras.layers.Dense(3, name="b")(x)])
    model.compile(loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    data, targets = inputs(), [RNG.standard_normal((32, 2)), RNG.standard_normal((32, 3))]
    report = analyse(model, data, targets)
    assert [r.name for r in report.output_gradients] == ["loss/outputs[0]", "loss/outputs[1]"]
    outputs = model(data)
    expected = sum(
        w * keras.losses.mean_squared_error(t, y).numpy().mean()
        for w, t, y in zip([1.0, 0.5], targets, outputs)
    )
    np.testing.assert_allclose(report.objective_value, expected, rtol=1e-6)
    # The compiled loss's trackers, built during the pass, are back at their initial state.
    assert all(np.all(v.numpy() == 0) for v in model.metrics_variables)


def test_nested_functional_ops_have_their_path() -> None:
    keras.utils.set_random_seed(4)
    inner_input = keras.Input((FEATURES,))
    scaled = keras.ops.multiply(keras.layers.Dense(FEATURES, name="d")(inner_input), 2.0)
    inner = keras.Model(inner_input, scaled, name="inner")
    x = keras.Input((FEATURES,))
    outer = keras.Model(x, keras.layers.Dense(1, name="h")(inner(x)))
    report = analyse(outer, inputs())
    assert_complete(report, ["inner/d", "inner/multiply", "h"])
    np.testing.assert_allclose(
        report.call("inner/multiply").output.std, 2 * report.call("inner/d").output.std, rtol=1e-6
    )
    assert not calls_shadowed(inner)


class DirectBlock(Block):
    """Computes with its sublayers' weights without calling them (as a tied readout does), and
    holds a built sublayer it never uses."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unused = keras.layers.Dense(3, name="unused")

    def build(self, input_shape: Any) -> None:
        for layer in (self.inner, self.outer, self.unused):
            layer.build(input_shape)

    def call(self, x: Any) -> Any:
        hidden = keras.ops.tanh(keras.ops.matmul(x, self.inner.kernel))
        return keras.ops.matmul(hidden, self.outer.kernel)


def test_container_without_recorded_calls_inside_is_recorded_whole() -> None:
    keras.utils.set_random_seed(5)
    x = keras.Input((FEATURES,))
    block = DirectBlock(name="direct")
    model = keras.Model(x, keras.layers.Dense(1, name="h")(block(x)))
    report = analyse(model, inputs())
    assert_complete(report, ["direct", "h"])
    assert report.call("direct").class_name == "DirectBlock"
    assert report.call("direct").weights == ()  # its weights belong to inner and outer
    kernel = report.weight(block.inner.kernel.path)
    assert kernel.layer == "direct/inner" and kernel.gradient.std > 0
    assert report.weight(block.unused.kernel.path).gradient.rms == 0  # unconnected: zero
