"""scmm.uu Dense / DenseReadout / Embedding / Conv1D and their scmm.U ops: unit scales at init
(std within 10% of the rule), forward = the Keras layer with the folded effective kernel, the
Keras layer contract (config, .keras, fit under XLA in float32 and mixed_bfloat16), errors."""

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.formats import quantise
from scmm.precision import scope
from scmm.precision_settings import PrecisionSettings

RNG = np.random.default_rng(0)
X2 = RNG.normal(size=(256, 512)).astype("float32")  # (batch, features)
X3 = RNG.normal(size=(32, 128, 64)).astype("float32")  # (batch, steps, channels)
IDS = RNG.integers(0, 100, size=(64, 32)).astype("int32")


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-5) -> None:
    """Max deviation relative to the largest reference value (a float32 sum's round-off)."""
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(actual - expected))) <= rel * scale


def _gmean(forward: float, backward: float) -> float:
    return float(np.sqrt(forward * backward))


def test_dense_scales_follow_the_rule_under_each_constraint() -> None:
    m, n = 512, 1024
    for constraint, out_rule, grad_rule in [
        ("gmean", _gmean(m**-0.5, n**-0.5) * m**0.5, _gmean(m**-0.5, n**-0.5) * n**0.5),
        ("forward", 1.0, (n / m) ** 0.5),
        ("backward", (m / n) ** 0.5, 1.0),
        ("separate", 1.0, 1.0),
    ]:
        stats = uu_checks.scale_stats(uu.Dense(n, constraint=constraint), X2)
        assert stats["output"] == pytest.approx(out_rule, rel=0.1), constraint
        assert stats["grad_input_0"] == pytest.approx(grad_rule, rel=0.1), constraint
        assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
        assert stats["grad_bias"] == pytest.approx(1.0, rel=0.1)


def test_the_umup_readout_is_mup_s_one_over_fan_in_with_a_unit_input_gradient() -> None:
    stats = uu_checks.scale_stats(uu.DenseReadout(1024, scheme="umup"), X2)
    assert stats["output"] == pytest.approx(512**-0.5, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)


def test_embedding_output_and_table_gradient_are_unit() -> None:
    layer = uu.Embedding(100, 256)
    ids = tf.constant(IDS)
    with tf.GradientTape() as tape:
        out = layer(ids)
        objective = tf.reduce_sum(out * tf.random.stateless_normal(out.shape, [1, 2]))
    grad = tf.convert_to_tensor(tape.gradient(objective, layer.embeddings))
    assert float(tf.math.reduce_std(out)) == pytest.approx(1.0, rel=0.1)
    assert float(tf.sqrt(tf.reduce_mean(grad**2))) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize(
    "options",
    [
        {"padding": "causal"},
        {"padding": "same", "strides": 2},
        {"padding": "valid", "dilation_rate": 2, "groups": 4},
    ],
)
def test_conv1d_matches_keras_with_the_folded_kernel_and_its_scales(options: dict) -> None:
    layer = uu.Conv1D(128, 3, constraint="gmean", **options)
    stats = uu_checks.scale_stats(layer, X3)
    taps, group_in, c_out = (int(d) for d in layer.kernel.shape)
    stride, groups = options.get("strides", 1), options.get("groups", 1)
    scale = _gmean((taps * group_in) ** -0.5, (taps * c_out / (groups * stride)) ** -0.5)
    assert stats["output"] == pytest.approx(scale * (taps * group_in) ** 0.5, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(
        scale * (taps * c_out / (groups * stride)) ** 0.5, rel=0.1
    )
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    reference = keras.layers.Conv1D(128, 3, **options)
    reference.build(X3.shape)
    kernel, bias = layer.get_weights()
    reference.set_weights([kernel * scale, bias])
    assert_close(layer(X3).numpy(), reference(X3).numpy())


@pytest.mark.parametrize("role", ["weight", "readout"])
@pytest.mark.parametrize("scheme", ["unit", "umup"])
def test_dense_forward_is_keras_dense_with_the_folded_kernel(scheme: str, role: str) -> None:
    layer = uu.Dense(256, scheme=scheme, role=role)
    out = layer(X2).numpy()
    m, n = 512, 256
    if role == "readout" and scheme == "umup":
        scale = 1.0 / m
    elif scheme == "umup":
        scale = m**-0.5
    else:
        scale = _gmean(m**-0.5, n**-0.5)
    reference = keras.layers.Dense(256)
    reference.build(X2.shape)
    kernel, bias = layer.get_weights()
    reference.set_weights([kernel * scale, bias])
    assert_close(out, reference(X2).numpy())


def test_the_ops_work_on_batches_only_known_at_run_time() -> None:
    fn = tf.function(
        U.linear,
        input_signature=[tf.TensorSpec([None, 512]), tf.TensorSpec([512, 64])],
    )
    kernel = tf.constant(RNG.normal(size=(512, 64)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = fn(tf.constant(X2), kernel)
        objective = tf.reduce_sum(y * tf.random.stateless_normal(y.shape, [3, 4]))
    assert float(tf.math.reduce_std(tape.gradient(objective, kernel))) == pytest.approx(1, rel=0.1)


def test_simulated_fp8_rounds_the_dense_operands() -> None:
    layer = uu.Dense(64, use_bias=False, constraint="separate")
    x = tf.constant(X2[:, :128] * 3)
    layer.build(x.shape)
    with scope(PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")):
        y = layer(x)
    expected = tf.matmul(quantise(x, "e4m3"), quantise(tf.convert_to_tensor(layer.kernel), "e4m3"))
    np.testing.assert_allclose(y.numpy(), expected.numpy() * 128**-0.5, rtol=1e-6)


LAYERS: dict[str, tuple[Callable[[], Any], np.ndarray]] = {
    "dense": (lambda: uu.Dense(32, activation="relu"), X2[:16, :64]),
    "readout": (lambda: uu.DenseReadout(32, scheme="umup"), X2[:16, :64]),
    "embedding": (lambda: uu.Embedding(100, 16), IDS[:8]),
    "conv": (lambda: uu.Conv1D(16, 3, padding="causal"), X3[:4, :16, :8]),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_keras_contract(name: str, tmp_path: Path) -> None:
    make, inputs = LAYERS[name]
    layer = make()
    layer(inputs)
    uu_checks.check_config_round_trip(layer)
    uu_checks.check_keras_file_round_trip(make, inputs, tmp_path)
    if name != "embedding":  # the MSE target needs a float output; embedding: table grads only
        uu_checks.check_fit_step(make, inputs, "float32")
        uu_checks.check_fit_step(make, inputs, "mixed_bfloat16")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        uu.Dense(4, role="head")
    with pytest.raises(ValueError, match="LoRA"):
        uu.Dense(4, lora_rank=2)
    with pytest.raises(ValueError, match="constraint"):
        uu.Dense(4, constraint="to_output_scale")
    with pytest.raises(ValueError, match="unit-scaled activation"):
        uu.Dense(4, activation="softplus")
    with pytest.raises(ValueError, match="channels_last"):
        uu.Conv1D(4, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="padding"):
        U.conv1d(tf.zeros((1, 4, 2)), tf.zeros((3, 2, 2)), padding="full")
    layer = uu.Dense(4)
    layer.build((2, 3))
    with pytest.raises(ValueError, match="simulate_fp8"):
        layer.quantize("float8")
