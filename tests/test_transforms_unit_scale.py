"""unit_scale on Sequential, Functional and subclassed Keras models: what it swaps, the
residual adds it finds (from the returned report), and the scales of the result at init."""

import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from scmm import uu
from scmm.analysis import analyse
from scmm.transforms import simulate_fp8, unit_scale
from scmm.uu.losses import SparseCategoricalCrossentropy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
# pylint: disable-next=wrong-import-position,import-error,wrong-import-order
from nanogpt_model import build_gpt

RNG = np.random.default_rng(0)
VOCAB, SEQ, WIDTH, DEPTH = 64, 32, 64, 3


def _mlp() -> keras.Sequential:
    return keras.Sequential(
        [
            keras.Input((256,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512),
            keras.layers.Activation("gelu"),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10),
        ]
    )


def _tokens(batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    ids = RNG.integers(0, VOCAB, size=(batch, SEQ + 1)).astype("int32")
    return ids[:, :-1], ids[:, 1:]


def _scales(model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[tuple[str, str], float]:
    result = analyse(model, x, y, loss=SparseCategoricalCrossentropy(from_logits=True))
    return {
        (r["name"], r["pass"]): float(r["std"])
        for r in (record.to_dict() for record in result.records)
        if r["pass"] in ("forward", "backward")
        and r.get("dtype", "float32").startswith(("float", "bfloat"))
    }


def _out_of_band(scales: dict[tuple[str, str], float], exempt: tuple[str, ...]) -> dict[Any, float]:
    return {
        key: std
        for key, std in scales.items()
        if not any(part in key[0] for part in exempt) and not 0.5 <= std <= 2.0
    }


def test_a_sequential_mlp_is_fully_replaced_and_unit_scaled() -> None:
    model = _mlp()
    scaled = unit_scale(model)
    report = scaled.scmm_report
    assert not report.unhandled, str(report)
    assert isinstance(scaled, keras.Sequential)
    assert [type(l).__name__ for l in scaled.layers] == [
        "Dense",
        "Dense",
        "Activation",
        "Dropout",
        "Dense",
    ]
    assert all(type(l).__module__.startswith("scmm.uu") for l in scaled.layers)
    assert scaled.layers[-1].role == "readout"
    x = RNG.normal(size=(256, 256)).astype("float32")
    y = RNG.integers(0, 10, size=(256,)).astype("int32")
    bad = _out_of_band(_scales(scaled, x, y), exempt=("loss",))
    assert not bad, bad


@pytest.mark.parametrize("scheme", ["unit", "umup"])
def test_a_functional_nanogpt_gets_2L_residual_adds_and_unit_scales(scheme: str) -> None:
    gpt = build_gpt(VOCAB, SEQ, WIDTH, DEPTH, heads=4, batch=8)
    scaled = unit_scale(gpt, scheme=scheme)
    report = scaled.scmm_report
    assert not report.unhandled, str(report)
    assert len(report.residual_adds) == 2 * DEPTH
    assert [r.kind for r in report.residual_adds] == ["sequence", "token"] * DEPTH
    taus = [r.tau for r in report.residual_adds]
    if scheme == "unit":  # the running mean over the branches found
        assert taus == pytest.approx([1 / (i + 1) for i in range(1, 2 * DEPTH + 1)])
    assert len(set(np.round(taus, 12))) == len(taus) or scheme == "umup"
    x, y = _tokens()
    scales = _scales(scaled, x, y)
    if scheme == "unit":
        assert not _out_of_band(scales, ("loss",)), str(report)
    else:
        # u-muP's readout is 1/fan_in (~0.12 here) by its rule; its hidden Dense layers are
        # forward-constrained, so the down-projection's input gradient (the record at the
        # up-projection's output) is sqrt(fan_out / fan_in) = sqrt(1/4) by the rule (within 25%
        # at width 64: measured 0.50-0.56).
        assert not _out_of_band(scales, ("loss", "lm_head", "_fc")), str(report)
        ffn = {k: v for k, v in scales.items() if "_fc" in k[0]}
        backward = [v for k, v in ffn.items() if k[1] == "backward"]
        assert len(backward) == DEPTH and all(0.4 <= v <= 0.625 for v in backward), ffn
        assert all(0.5 <= v <= 2 for k, v in ffn.items() if k[1] == "forward"), ffn
    assert np.all(np.isfinite(scaled(x).numpy()))


def test_the_input_model_is_untouched_and_weights_can_be_copied_or_rescaled() -> None:
    gpt = build_gpt(VOCAB, SEQ, WIDTH, 2, heads=4, batch=8)
    x, _ = _tokens()
    before = gpt(x).numpy()
    weights = [w.copy() for w in gpt.get_weights()]
    copied = unit_scale(gpt, weights="copy")
    rescaled = unit_scale(gpt, weights="rescale")
    np.testing.assert_array_equal(gpt(x).numpy(), before)
    assert all(np.array_equal(a, b) for a, b in zip(weights, gpt.get_weights()))
    assert all(type(l).__module__.startswith("keras.") for l in gpt.layers)
    assert all(np.array_equal(a, b) for a, b in zip(weights, copied.get_weights()))
    stds = [np.std(w) for w in rescaled.get_weights() if w.ndim >= 2 and np.std(w) > 0]
    assert len(stds) == len([w for w in gpt.get_weights() if w.ndim >= 2 and np.std(w) > 0])
    assert stds == pytest.approx([1.0] * len(stds), rel=1e-4)


def test_unit_scale_and_simulate_fp8_commute() -> None:
    gpt = build_gpt(VOCAB, SEQ, WIDTH, 2, heads=4, batch=8)
    first = unit_scale(simulate_fp8(gpt), weights="copy")
    second = simulate_fp8(unit_scale(gpt, weights="copy"))
    assert [type(l) for l in first.layers] == [type(l) for l in second.layers]
    for a, b in zip(first.layers, second.layers):
        assert getattr(a, "precision", None) == getattr(b, "precision", None), a.name
    x, _ = _tokens()
    np.testing.assert_array_equal(first(x).numpy(), second(x).numpy())


def test_a_transformed_model_saves_loads_and_fits_under_xla(tmp_path: Path) -> None:
    gpt = build_gpt(VOCAB, SEQ, WIDTH, 1, heads=4, batch=8)
    gpt.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scaled = unit_scale(gpt)
    assert isinstance(scaled.loss, SparseCategoricalCrossentropy)
    x, y = _tokens()
    scaled.save(tmp_path / "gpt.keras")
    loaded = keras.models.load_model(tmp_path / "gpt.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), scaled(x).numpy())
    scaled.compile(optimizer=keras.optimizers.Adam(1e-2), loss=scaled.loss, jit_compile=True)
    history = scaled.fit(x, y, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_umup_swaps_keras_adamw_for_uu_adamw_with_the_branches_found() -> None:
    depth = 4  # 8 residual branches: u-mup's L = 4, so a branch weight is at fan_in^-1/2 / 2
    gpt = build_gpt(VOCAB, SEQ, WIDTH, depth, heads=4, batch=8)
    gpt.compile(
        optimizer=keras.optimizers.AdamW(2**-6, weight_decay=0.1, global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    scaled = unit_scale(gpt, scheme="umup")
    optimizer = scaled.optimizer
    assert isinstance(optimizer, uu.AdamW)
    assert (optimizer.weight_decay, optimizer.global_clipnorm) == (0.1, 1.0)
    assert "optimizer" in {e.name for e in scaled.scmm_report.replaced}
    table = uu.parameter_table(scaled, branches=scaled.scmm_report.branches(), allow_unknown=True)
    by_user = uu.AdamW(parameters=scaled)  # a model from unit_scale brings its branches too
    x, y = _tokens()
    scaled.fit(x, y, batch_size=8, epochs=1, verbose=0)
    rates = optimizer.effective_rates()
    expected = uu.AdamW(parameters=table).effective_rates()
    assert {p: r.learning_rate_multiplier for p, r in rates.items()} == {
        p: r.learning_rate_multiplier for p, r in expected.items()
    }
    assert by_user.effective_rates().keys() == rates.keys()
    assert all(
        by_user.effective_rates()[p].learning_rate_multiplier == r.learning_rate_multiplier
        for p, r in rates.items()
    )
    branch_kernels = [
        r.learning_rate_multiplier
        for p, r in rates.items()
        if p.endswith("kernel") and "fc" in p and "lm_head" not in p
    ]
    assert branch_kernels and all(
        m == pytest.approx(WIDTH**-0.5 * (depth**-0.5)) for m in branch_kernels
    )


def test_unit_scheme_keeps_the_optimizer_and_umup_notes_one_it_cannot_swap() -> None:
    gpt = build_gpt(VOCAB, SEQ, WIDTH, 1, heads=4, batch=8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    gpt.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=loss)
    kept = unit_scale(gpt).optimizer
    assert isinstance(kept, keras.optimizers.AdamW) and not isinstance(kept, uu.AdamW)
    gpt.compile(optimizer=keras.optimizers.SGD(1e-2), loss=loss)
    scaled = unit_scale(gpt, scheme="umup")
    assert isinstance(scaled.optimizer, keras.optimizers.SGD)
    assert any("SGD kept" in note for note in scaled.scmm_report.notes)


def test_raw_keras_ops_einsum_and_matmul_become_unit_scaled_ops() -> None:
    q, k, v = (keras.Input((64, 128)) for _ in range(3))
    scores = keras.ops.einsum("bsd,btd->bst", q, k)  # (batch, seq, seq): std sqrt(128) plain
    model = keras.Model([q, k, v], keras.ops.matmul(scores, v))
    scaled = unit_scale(model)
    assert not scaled.scmm_report.unhandled
    assert [e.replacement for e in scaled.scmm_report.replaced] == ["U.einsum", "U.matmul"]
    x = [RNG.normal(size=(16, 64, 128)).astype("float32") for _ in range(3)]
    plain = model(x).numpy()
    assert np.std(plain) == pytest.approx(128**0.5 * 64**0.5, rel=0.1)
    # The unit scheme's gmean constraint ties each op's output scale to its gradient scales:
    # einsum sum 128, grads 64 and 64: output std sqrt(128) (128*64*64)^-1/6 = 2^(1/3);
    # matmul sum 64, grads 128 and 64: 8 (64*128*64)^-1/6 = 2^(-1/6); together 2^(1/6).
    assert np.std(scaled(x).numpy()) == pytest.approx(2 ** (1 / 6), rel=0.1)


class _Block(keras.Model):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization()
        self.up = keras.layers.Dense(128, activation="relu")
        self.down = keras.layers.Dense(64)

    def call(self, x: Any) -> Any:
        return self.down(self.up(self.norm(x)))


def test_a_subclassed_model_is_copied_when_it_can_be_and_swapped_in_place_when_asked() -> None:
    model = _Block()
    x = RNG.normal(size=(32, 64)).astype("float32")
    before = model(x).numpy()
    scaled = unit_scale(model)
    assert scaled is not model and isinstance(model.up, keras.layers.Dense)
    assert not isinstance(model.up, uu.Dense)
    np.testing.assert_array_equal(model(x).numpy(), before)
    assert isinstance(scaled.up, uu.Dense) and isinstance(scaled.norm, uu.LayerNormalization)
    assert any("not visible" in note for note in scaled.scmm_report.notes)
    assert np.std(scaled.up.kernel.numpy()) == pytest.approx(1.0, rel=0.05)
    assert np.all(np.isfinite(scaled(x).numpy()))
    unconfigurable = _Unconfigurable(lambda t: t)
    unconfigurable(x)
    with pytest.raises(ValueError, match="inplace=True"):
        unit_scale(unconfigurable)
    assert unit_scale(unconfigurable, inplace=True) is unconfigurable
    assert isinstance(unconfigurable.dense, uu.Dense)


class _Unconfigurable(keras.Model):
    """A model whose constructor takes a function: no config to copy it from."""

    def __init__(self, post: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.post = post
        self.dense = keras.layers.Dense(16)

    def call(self, x: Any) -> Any:
        return self.post(self.dense(x))


def test_bad_arguments_are_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="scheme"):
        unit_scale(_mlp(), scheme="mup")
    with pytest.raises(ValueError, match="weights"):
        unit_scale(_mlp(), weights="zeros")
    with pytest.raises(ValueError, match="build the model"):
        unit_scale(keras.Sequential([keras.layers.Dense(3)]))
