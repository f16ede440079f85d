"""scmm.U.conv1d and scmm.uu.Conv1D: forward = keras.layers.Conv1D with the folded kernel for
every padding / stride / dilation / groups combination (eager and XLA, both contraction
paths), gradients = the reference gradients times the rule's factors, unit scales at init,
dynamic batch and steps, simulated FP8 operands, the Keras layer contract and errors."""

import itertools
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

import uu_checks
from scmm import functional as U
from scmm import uu
from scmm.formats import quantise
from scmm.parameters import ParameterInfo
from scmm.precision import scope
from scmm.precision_settings import PrecisionSettings

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 23, 8)).astype("float32")  # (batch, steps, channels): odd steps
# (stride, dilation) pairs Keras's layer accepts; both > 1 is tested against numpy below.
STEPS = [(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)]
# Every padding x (stride, dilation) x groups (1: tf.nn.convolution, 4: the taps), the kernel
# size alternating 3 / 4 (an even kernel makes "same" pad unevenly).
COMBOS = [
    (padding, stride, dilation, groups, 3 + (index // 2) % 2)
    for index, (padding, (stride, dilation), groups) in enumerate(
        itertools.product(("valid", "same", "causal"), STEPS, (1, 4))
    )
]


def assert_close(actual: Any, expected: Any, rel: float = 1e-5) -> None:
    """Max deviation relative to the largest reference value (a float32 sum's round-off)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert float(np.max(np.abs(actual - expected))) <= rel * float(np.max(np.abs(expected)))


def scales(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    taps: int, group_in: int, c_out: int, groups: int, stride: int, constraint: str
) -> tuple[float, float]:
    """(output scale, x-gradient scale) of the rule."""
    forward = (taps * group_in) ** -0.5
    backward = (taps * c_out / (groups * stride)) ** -0.5
    if constraint == "gmean":
        return (np.sqrt(forward * backward),) * 2
    if constraint == "forward":
        return forward, forward
    if constraint == "backward":
        return backward, backward
    return forward, backward


def upstream_like(out: tf.Tensor) -> tf.Tensor:
    """A unit-variance output gradient that eager and XLA compute alike."""
    ramp = tf.cast(tf.range(tf.size(out)), tf.float32) * 0.7548
    return tf.cast(tf.reshape(tf.sin(ramp) * 2**0.5, tf.shape(out)), out.dtype)


def grads(fn: Any, x: tf.Tensor, kernel: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        out = fn(x, kernel)
        objective = tf.reduce_sum(out * upstream_like(out))
    dx, dk = tape.gradient(objective, [x, kernel])
    return out, dx, dk


# XLA compiles take ~1-3 s each on a loaded CPU: the default suite compiles the combinations
# with a stride or a dilation of 2-3 (every padding, both paths); the slow test compiles all.
JIT_STEPS = [(2, 1), (1, 3)]


@pytest.mark.parametrize("padding,stride,dilation,groups,taps", COMBOS)
def test_conv1d_forward_and_gradients_match_keras_times_the_factors(
    padding: str, stride: int, dilation: int, groups: int, taps: int
) -> None:
    check_against_keras(padding, stride, dilation, groups, taps, (stride, dilation) in JIT_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("padding,stride,dilation,groups,taps", COMBOS)
def test_conv1d_matches_keras_under_xla_for_every_combination(
    padding: str, stride: int, dilation: int, groups: int, taps: int
) -> None:
    check_against_keras(padding, stride, dilation, groups, taps, True)


def check_against_keras(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    padding: str, stride: int, dilation: int, groups: int, taps: int, jit: bool
) -> None:
    """Forward = the Keras layer's; output, x- and kernel-gradients = the plain ones times the
    rule's factors, eager and (``jit``) in one XLA program."""
    options = {"strides": stride, "padding": padding, "dilation_rate": dilation, "groups": groups}
    kernel = tf.constant(RNG.normal(size=(taps, 8 // groups, 12)).astype("float32"))
    reference = keras.layers.Conv1D(12, taps, use_bias=False, **options)
    reference.build(X.shape)
    reference.set_weights([kernel.numpy()])

    def plain(x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:  # what Keras's Conv1D.call computes
        if padding == "causal":
            x = tf.pad(x, [[0, 0], [(taps - 1) * dilation, 0], [0, 0]])
        return keras.ops.conv(
            x,
            k,
            strides=stride,
            padding="valid" if padding == "causal" else padding,
            dilation_rate=dilation,
        )

    def unit(x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        return U.conv1d(x, k, stride, padding, dilation, groups, constraint="separate")

    x = tf.constant(X)
    ref_out, ref_dx, ref_dk = grads(plain, x, kernel)
    assert_close(ref_out, reference(x), rel=1e-6)  # the plain product is the layer's
    out_scale, grad_scale = scales(taps, 8 // groups, 12, groups, stride, "separate")
    rows = X.shape[0] * ref_out.shape[1]
    runs = [grads(unit, x, kernel)]
    if jit:
        runs.append(tf.function(lambda t, k: grads(unit, t, k), jit_compile=True)(x, kernel))
    for out, dx, dk in runs:
        assert_close(out, ref_out * out_scale)
        assert_close(dx, ref_dx * grad_scale)
        assert_close(dk, ref_dk * rows**-0.5)


def numpy_conv(x: np.ndarray, kernel: np.ndarray, stride: int, dilation: int) -> np.ndarray:
    """A float64 loop: out[b, t, o] = sum_j,c x[b, t s + j d, c] kernel[j, c, o] ("valid")."""
    taps = kernel.shape[0]
    steps = (x.shape[1] - (taps - 1) * dilation - 1) // stride + 1
    out = np.zeros((x.shape[0], steps, kernel.shape[2]))
    for t in range(steps):
        for j in range(taps):
            out[:, t] += x[:, t * stride + j * dilation].astype("float64") @ kernel[j]
    return out


def test_strides_and_dilation_together_match_a_numpy_convolution() -> None:
    kernel = RNG.normal(size=(3, 8, 5)).astype("float32")
    for run in (U.conv1d, tf.function(U.conv1d, jit_compile=True)):
        out = run(tf.constant(X), tf.constant(kernel), 2, "valid", 3, 1, "forward")
        assert_close(out, numpy_conv(X, kernel, 2, 3) * (3 * 8) ** -0.5)


@pytest.mark.parametrize(
    "options",
    [
        {"padding": "causal", "constraint": "gmean"},
        {"padding": "same", "strides": 2, "constraint": "forward"},
        {"padding": "valid", "dilation_rate": 2, "groups": 4, "constraint": "backward"},
        {"padding": "same", "groups": 2, "strides": 3, "constraint": "separate"},
    ],
)
def test_conv1d_layer_scales_follow_the_rule(options: dict) -> None:
    x = np.random.default_rng(1).normal(size=(32, 128, 64)).astype("float32")
    layer = uu.Conv1D(128, 3, **options)
    stats = uu_checks.scale_stats(layer, x)
    taps, group_in, c_out = (int(d) for d in layer.kernel.shape)
    stride, groups = options.get("strides", 1), options.get("groups", 1)
    forward, backward = (taps * group_in) ** -0.5, (taps * c_out / (groups * stride)) ** -0.5
    out_scale, grad_scale = scales(taps, group_in, c_out, groups, stride, options["constraint"])
    assert stats["output"] == pytest.approx(out_scale / forward, rel=0.1)
    assert stats["grad_input_0"] == pytest.approx(grad_scale / backward, rel=0.1)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    assert stats["grad_bias"] == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("scheme", ["unit", "umup"])
def test_conv1d_layer_is_keras_conv1d_with_the_folded_kernel(scheme: str) -> None:
    options: dict[str, Any] = {"padding": "same", "strides": 2, "groups": 2}
    layer = uu.Conv1D(12, 4, scheme=scheme, activation="relu", **options)
    layer.build(X.shape)
    layer.bias.assign(RNG.normal(size=(12,)).astype("float32"))
    constraint = uu.DEFAULT_CONSTRAINT[scheme]
    scale = scales(4, 4, 12, 2, 2, constraint)[0]
    reference = keras.layers.Conv1D(12, 4, **options)
    reference.build(X.shape)
    kernel, bias = layer.get_weights()
    reference.set_weights([kernel * scale, bias])
    assert_close(layer(X), U.relu(reference(X), constraint))


def test_dynamic_batch_and_steps_give_the_static_results() -> None:
    kernel = tf.constant(RNG.normal(size=(3, 2, 8)).astype("float32"))
    for padding, groups in [("same", 4), ("causal", 1), ("valid", 2)]:

        def run(x: tf.Tensor, k: tf.Tensor, padding: str = padding, groups: int = groups) -> Any:
            return grads(lambda t, w: U.conv1d(t, w, 2, padding, 1, groups), x, k)

        dynamic = tf.function(
            run, input_signature=[tf.TensorSpec([None, None, 2 * groups]), tf.TensorSpec([3, 2, 8])]
        )
        x = tf.constant(X[..., : 2 * groups])
        for got, want in zip(dynamic(x, kernel), run(x, kernel)):
            assert_close(got, want)


def test_conv1d_layer_in_a_functional_model_with_none_batch_and_steps() -> None:
    inputs = keras.Input(shape=(None, 8))
    model = keras.Model(inputs, uu.Conv1D(16, 3, padding="causal", groups=2)(inputs))
    x = np.random.default_rng(2).normal(size=(16, 64, 8)).astype("float32")
    stats = uu_checks.scale_stats(model, x)
    assert stats["grad_kernel"] == pytest.approx(1.0, rel=0.1)
    assert model(x).shape == (16, 64, 16)


def test_simulated_fp8_rounds_the_conv_operands_to_e4m3() -> None:
    kernel = tf.constant(RNG.normal(size=(3, 8, 4)).astype("float32"))
    x = tf.constant(X * 3)
    with scope(PrecisionSettings(activations="e4m3", weights="e4m3", gradients="e5m2")):
        y = U.conv1d(x, kernel, padding="causal", constraint="separate")
    expected = U.conv1d(quantise(x, "e4m3"), quantise(kernel, "e4m3"), padding="causal")
    expected = expected * (scales(3, 8, 4, 1, 1, "separate")[0] / scales(3, 8, 4, 1, 1, "gmean")[0])
    assert_close(y, expected, rel=1e-6)
    assert (
        float(np.max(np.abs(y - U.conv1d(x, kernel, padding="causal", constraint="separate"))))
        > 1e-3
    )


def test_parameter_info_declares_the_taps_times_group_channels_fan_in() -> None:
    layer = uu.Conv1D(12, 5, groups=4)
    layer.build((None, 10, 16))
    assert layer.parameter_info() == {
        "kernel": ParameterInfo("weight", 5 * 16 // 4),
        "bias": ParameterInfo("bias"),
    }


def test_keras_contract(tmp_path: Path) -> None:
    def make() -> keras.layers.Layer:
        return uu.Conv1D(16, 3, padding="causal", groups=2, activation="gelu", scheme="umup")

    inputs = X[:, :16]
    layer = make()
    layer(inputs)
    uu_checks.check_config_round_trip(layer)
    uu_checks.check_keras_file_round_trip(make, inputs, tmp_path)
    uu_checks.check_fit_step(make, inputs, "float32")
    uu_checks.check_fit_step(make, inputs, "mixed_bfloat16")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="channels_last"):
        uu.Conv1D(4, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="LoRA"):
        uu.Conv1D(4, 3, lora_rank=2)
    with pytest.raises(ValueError, match="quantized dtype"):
        uu.Conv1D(4, 3, dtype="int8_from_float32")
    with pytest.raises(ValueError, match="constraint"):
        uu.Conv1D(4, 3, constraint="hmean")
    with pytest.raises(ValueError, match="softplus"):
        uu.Conv1D(4, 3, activation="softplus")
    x, kernel = tf.zeros((1, 9, 4)), tf.zeros((3, 4, 2))
    with pytest.raises(ValueError, match="padding"):
        U.conv1d(x, kernel, padding="full")
    with pytest.raises(ValueError, match="strides"):
        U.conv1d(x, kernel, strides=0)
    with pytest.raises(ValueError, match="dilation_rate"):
        U.conv1d(x, kernel, dilation_rate=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups=2"):
        U.conv1d(x, kernel, groups=2)
    with pytest.raises(ValueError, match="rank 3"):
        U.conv1d(tf.zeros((9, 4)), kernel)
    with pytest.raises(ValueError, match="constraint"):
        U.conv1d(x, kernel, constraint="mean")  # type: ignore[arg-type]
