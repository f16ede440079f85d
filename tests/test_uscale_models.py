"""Unit-scaled layers and models: drop-in names, unit init, scales at initialisation, learning.

Scale checks use the paper's char-LM shapes (batch 8 x 256 characters, hidden 128, depth 8;
RNN depth 2) on random tokens: each std below is over >= 2^15 values, so its sampling error
is well under 1% and the [0.5, 2] band tests the scaling rules, not noise.
"""

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
from conftest import (
    MODEL_VARIANTS,
    VOCAB,
    make_execution,
    model_settings,
    repeating_batch,
    unit_scaled,
)

from scmm.analysis import LOSS_GRADIENT_NAME, ScaleRecord, collect_scales
from scmm.datasets.corpus import embedded_corpus
from scmm.models import (
    AttentionSettings,
    CharLM,
    ConvSettings,
    ModelSettings,
    ResidualSettings,
    RNNSettings,
)
from scmm.layers import ScaledLayer
from scmm.schemes import UnitScalingSettings
from scmm.training import AdamWSettings, Trainer, TrainingSettings
from scmm.uscale import RELU_SCALES, constrain, rnn_ops

PAPER_KINDS = {
    "attention-pre": (AttentionSettings(), "pre", 8),
    "attention-post": (AttentionSettings(), "post", 8),
    "conv": (ConvSettings(), "pre", 8),
    "rnn": (RNNSettings(), "pre", 2),
}


def paper_model(kind: str, unit_scale: bool, seed: int = 1) -> CharLM:
    sequence, norm, depth = PAPER_KINDS[kind]
    settings = ModelSettings(
        vocab_size=107,
        hidden_size=128,
        depth=depth,
        sequence=sequence,
        residual=ResidualSettings(norm=norm, weighting="mean"),  # type: ignore[arg-type]
        seed=seed,
    )
    return CharLM(unit_scaled(settings) if unit_scale else settings)


def text_batch() -> dict[str, np.ndarray]:
    """8 x 256 characters of the embedded corpus (ids by sorted character, < 107)."""
    text = embedded_corpus()["train"][: 8 * 256]
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    assert len(vocab) <= 107
    tokens = np.array([vocab[c] for c in text]).reshape(8, 256)
    return {"tokens": tokens, "mask": np.ones((8, 256), bool)}


@pytest.fixture(scope="module")
def init_scales() -> dict[str, list[ScaleRecord]]:
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 107, (8, 256)), "mask": np.ones((8, 256), bool)}
    return {kind: collect_scales(paper_model(kind, True), batch) for kind in PAPER_KINDS}


@pytest.mark.parametrize("kind", ["attention", "conv", "rnn"])
def test_unit_scaled_model_has_the_baseline_weight_names_and_shapes(kind: str) -> None:
    settings = dataclasses.replace(
        model_settings(kind), residual=ResidualSettings(norm="pre", weighting="mean")
    )
    base, unit = CharLM(settings), CharLM(unit_scaled(settings))
    assert {n: tuple(v.shape) for n, v in base.named_weights().items()} == {
        n: tuple(v.shape) for n, v in unit.named_weights().items()
    }
    # The same layer classes, every one computing with the unit-scaled op set.
    scaled = [layer for layer in unit._flatten_layers() if isinstance(layer, ScaledLayer)]
    assert len(scaled) > 5 and all(layer.ops.name == "unit" for layer in scaled)
    assert [type(layer) for layer in unit._flatten_layers()] == [
        type(layer) for layer in base._flatten_layers()
    ]
    assert {
        layer.ops.name for layer in base._flatten_layers() if isinstance(layer, ScaledLayer)
    } == {"plain"}
    # Weights load across the two (a baseline checkpoint initialises a unit-scaled model).
    unit.set_weight_arrays(base.get_weight_arrays())


def test_unit_init_matrices_normal_biases_zero_gains_one() -> None:
    model = paper_model("attention-pre", True)
    for name, variable in model.named_weights().items():
        value = np.asarray(variable.numpy(), np.float64)
        if name.endswith(("bias", "beta")):
            assert np.all(value == 0), name
        elif name.endswith("gamma"):
            assert np.all(value == 1), name
        elif value.size >= 4096:  # matrices: std 1 within ~5 standard errors
            assert abs(value.std() - 1) < 5 * (2 / value.size) ** 0.5 + 0.01, (name, value.std())


def attention_band(kind: str, record: ScaleRecord) -> tuple[float, float]:
    """[0.5, 2], except where plain attention mixing shrinks iid values (see below)."""
    if kind.startswith("attention") and (
        (record.pass_ == "forward" and record.name.endswith("/attention"))
        or (record.pass_ == "backward" and record.name.endswith("sequence/norm"))
    ):
        return 0.25, 2.0
    return 0.5, 2.0


@pytest.mark.parametrize("kind", list(PAPER_KINDS))
def test_activations_and_gradients_are_unit_scaled_at_init(
    kind: str, init_scales: dict[str, list[ScaleRecord]]
) -> None:
    """Every forward output and backward gradient within [0.5, 2], on random tokens.

    One documented exception: attention mixes with plain softmax (scale 1, see
    ``scmm.uscale.attention_ops.causal_attention``). On iid random tokens the first layer's
    values are independent across positions and the softmax average shrinks them by up to
    1/``attention_scale`` (0.26 at s = 256); measured 0.29 for the first attention output and
    0.37-0.45 for the gradients attention sends into its pre-norm. Those records get [0.25, 2].
    On text (next test) positions are correlated and everything is within [0.4, 1.3].
    """
    records = init_scales[kind]
    for record in records:
        if record.pass_ in ("forward", "backward"):
            low, high = attention_band(kind, record)
            assert low <= record.std <= high, (record.pass_, record.name, record.std)
    # The loss gradient is unit by construction (s / sqrt(s - 1), summed over tokens).
    (loss_grad,) = [r for r in records if r.name == LOSS_GRADIENT_NAME]
    assert loss_grad.std == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(
    "kind", ["attention-pre", pytest.param("attention-post", marks=pytest.mark.slow)]
)
def test_attention_models_are_unit_scaled_on_text(kind: str) -> None:
    """On a text batch every forward and backward record is within [1/3, 2].

    Measured (depth 8, hidden 128, seeds 1 and 2): 0.40-1.30 for both norm placements; the
    only record below 0.5 is the first attention layer's output (0.40-0.41), whose inputs
    are the least correlated across positions.
    """
    records = collect_scales(paper_model(kind, True), text_batch())
    for record in records:
        if record.pass_ in ("forward", "backward"):
            assert 1 / 3 <= record.std <= 2.0, (record.pass_, record.name, record.std)


@pytest.mark.parametrize("kind", list(PAPER_KINDS))
def test_matrix_weight_gradients_near_unit_at_init(
    kind: str, init_scales: dict[str, list[ScaleRecord]]
) -> None:
    """Analytic (uncalibrated) matrix weight gradients: [0.5, 2.5] for conv and RNN models.

    These are the rows^-1/2 scales alone. Runs calibrate them by default, and
    ``test_calibration`` checks that every parameter's gradient is then within [2/3, 1.5].

    Attention models are looser ([0.4, 8]): attention outputs are averages over correlated
    positions, so the rows summed by the QKV and output-kernel gradients are correlated and
    their sum grows faster than the sqrt(rows) the scaling assumes (measured up to ~7).
    """
    high = 8.0 if kind.startswith("attention") else 2.5
    matrices = [
        r
        for r in init_scales[kind]
        if r.pass_ == "weight_gradient"
        and len(r.shape) >= 2
        and not r.name.endswith(("bias", "beta", "gamma", "padding"))
    ]
    assert len(matrices) >= 5
    for record in matrices:
        assert 0.4 <= record.std <= high, (record.name, record.std)


def test_baseline_gradients_are_far_from_unit(init_scales: dict[str, list[ScaleRecord]]) -> None:
    """The contrast that motivates unit scaling: the regular model's gradients are ~2^-14."""
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 107, (8, 256)), "mask": np.ones((8, 256), bool)}
    base = collect_scales(paper_model("attention-pre", False), batch)
    base_backward = np.median([r.std for r in base if r.pass_ == "backward"])
    unit_backward = np.median(
        [r.std for r in init_scales["attention-pre"] if r.pass_ == "backward"]
    )
    assert base_backward < 2**-10
    assert 0.5 < unit_backward < 2


def projection_scale(m: int, n: int) -> float:
    """Forward scale of a gmean-constrained unit-scaled projection with m inputs, n outputs."""
    return constrain(m**-0.5, n**-0.5, "gmean")[0]


FIT_THRESHOLD = 0.05  # nats per character on the predictable positions


# Post-norm attention under --slow (test_precision fits the pre-norm kinds in FP8 too).
@pytest.mark.parametrize(
    "kind,norm",
    [pytest.param(k, n, marks=[pytest.mark.slow] * (n == "post")) for k, n in MODEL_VARIANTS],
)
def test_unit_scaled_models_fit_a_repeating_sequence(kind: str, norm: str) -> None:
    rng = np.random.default_rng({"attention": 0, "conv": 1, "rnn": 2}[kind])
    pattern = rng.integers(0, VOCAB, rng.integers(13, 18))
    settings = dataclasses.replace(
        model_settings(kind, norm=norm, seed=3),
        residual=ResidualSettings(norm=norm, weighting="mean"),  # type: ignore[arg-type]
    )
    model = CharLM(unit_scaled(settings))
    trainer = Trainer(
        model,
        TrainingSettings(optimiser=AdamWSettings(learning_rate=2**-6)),
        make_execution(xla=True),
        model.parameters,
    )
    losses = np.concatenate(
        [trainer.train(repeating_batch(pattern, 50, 4, 48, rng))["loss"] for _ in range(4)]
    )
    assert losses[0] > 2.0  # starts near ln(16)
    assert losses[-10:].max() < FIT_THRESHOLD, losses[-10:]


def test_unit_scaled_model_rejects_plain_residuals() -> None:
    settings: Any = model_settings("conv")  # weighting "plain"
    with pytest.raises(ValueError, match="weighting"):
        CharLM(dataclasses.replace(settings, scaling=UnitScalingSettings()))


def assert_unit_model_is_baseline_with_folded_weights(
    settings: ModelSettings, fold: Callable[[str, np.ndarray], np.ndarray], seq: int = 24
) -> None:
    """Load fold(name, unit weight) into the baseline: logits and loss must match the unit model.

    ``fold`` multiplies each unit weight by every forward scale the unit-scaled graph applies
    to it (the FFN and head rules are shared here). Any unaccounted factor breaks the match.
    """
    unit, base = CharLM(unit_scaled(settings)), CharLM(settings)
    hidden, inner = settings.hidden_size, 4 * settings.hidden_size
    relu_scale, _ = constrain(*RELU_SCALES, "gmean")
    effective = {}
    for name, value in unit.get_weight_arrays().items():
        if name.endswith("ffn/up/kernel"):
            value = value * projection_scale(hidden, inner)
        elif name.endswith("ffn/down/kernel"):
            value = value * projection_scale(inner, hidden) * relu_scale
        elif name == "head/kernel":
            value = value * projection_scale(hidden, VOCAB)
        else:
            value = fold(name, value)
        effective[name] = value
    base.set_weight_arrays(effective)
    batch = repeating_batch(np.arange(7), 1, 4, seq, np.random.default_rng(0))
    tokens, mask = batch["tokens"][0], batch["mask"][0]
    np.testing.assert_allclose(
        unit.logits(tokens).numpy(), base.logits(tokens).numpy(), rtol=1e-4, atol=1e-5
    )
    assert float(unit(tokens, mask)["loss"]) == pytest.approx(
        float(base(tokens, mask)["loss"]), rel=1e-5
    )


def mean_residual_settings(kind: str, seed: int) -> ModelSettings:
    return dataclasses.replace(
        model_settings(kind, seed=seed), residual=ResidualSettings(norm="pre", weighting="mean")
    )


def test_unit_scaled_conv_model_loss_equals_baseline_with_effective_weights() -> None:
    """Folding every forward scale into the weights turns the unit model into the baseline.

    ReLU is positively homogeneous, so its forward factor folds into the weights before it
    (conv) or after it (the FFN's down projection). Losses and logits must then agree to
    float32 rounding.
    """
    hidden, kernel_size, groups = 32, 5, 4  # from model_settings("conv")
    relu_scale, _ = constrain(*RELU_SCALES, "gmean")
    fan = kernel_size * hidden / groups
    conv_scale = constrain(fan**-0.5, fan**-0.5, "gmean")[0]

    def fold(name: str, value: np.ndarray) -> np.ndarray:
        if name.endswith("conv/kernel"):
            return value * conv_scale * relu_scale
        if name.endswith("conv/bias"):
            return value * relu_scale
        return value

    assert_unit_model_is_baseline_with_folded_weights(mean_residual_settings("conv", 5), fold)


def test_unit_scaled_attention_model_loss_equals_baseline_with_effective_weights() -> None:
    """As for conv: QKV ("forward" constraint), positional keys (1/sqrt(frequencies)) and the
    projections all fold into baseline weights (the mixing itself is plain, scale 1)."""
    hidden, frequencies = 32, 8  # from model_settings("attention")

    def fold(name: str, value: np.ndarray) -> np.ndarray:
        if name.endswith("attention/qkv"):
            return value * hidden**-0.5
        if name.endswith("attention/positional"):
            return value * frequencies**-0.5
        if name.endswith("attention/output_kernel"):
            return value * projection_scale(hidden, hidden)
        return value

    assert_unit_model_is_baseline_with_folded_weights(mean_residual_settings("attention", 6), fold)


def test_unit_scaled_rnn_model_loss_equals_baseline_with_effective_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both gate kernels fold the gate scale; the bias has no forward scale.

    The cell's output multiplier ``RHN_OUTPUT_SCALE`` (3.9) is the one factor that does not
    fold: it scales the states after the nonlinear recurrence, on a residual branch with no
    weight after it. It is a deliberate change of the model (the states' std at init is
    ~0.26), so it is set to 1 here to check that everything else is accounted for.
    """
    monkeypatch.setattr(rnn_ops, "RHN_OUTPUT_SCALE", 1.0)
    hidden = 32  # from model_settings("rnn")
    gate_scale = rnn_ops.rhn_gate_scale(hidden, hidden)

    def fold(name: str, value: np.ndarray) -> np.ndarray:
        if name.endswith(("rnn/input_kernel", "rnn/recurrent_kernel")):
            return value * gate_scale
        return value

    assert_unit_model_is_baseline_with_folded_weights(mean_residual_settings("rnn", 7), fold)
