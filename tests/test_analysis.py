"""Scale analysis: records of every layer and pass, their statistics, JSON files and the figure."""

import json
import os
import pathlib
import struct
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import KINDS, as_float64, make_model, random_batch

from scmm.analysis import (
    FORMATS,
    LOSS_GRADIENT_NAME,
    PASSES,
    ScaleRecord,
    collect_scales,
    format_fractions,
    load_scales_json,
    plot_scales,
    select,
    tensor_record,
    write_scales_json,
)
from scmm.models import CharLM
from scmm.models.model import masked_cross_entropy

BATCH, SEQ = 3, 24


def one_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """(BATCH, SEQ) tokens with the first 3 positions unscored (so some gradients are 0)."""
    batch = random_batch(1, BATCH, SEQ, np.random.default_rng(seed))
    mask = np.ones((BATCH, SEQ), bool)
    mask[:, :3] = False
    return {"tokens": batch["tokens"][0], "mask": mask}


Case = tuple[CharLM, dict[str, np.ndarray], list[ScaleRecord]]


@pytest.fixture(scope="module", name="attention_case")
def fixture_attention_case() -> Case:
    model = make_model("attention")
    batch = one_batch()
    return model, batch, collect_scales(model, batch, step=7)


def by_name(records: list[ScaleRecord], pass_: str) -> dict[str, ScaleRecord]:
    return {r.name: r for r in records if r.pass_ == pass_}


def assert_stats(record: ScaleRecord, value: np.ndarray) -> None:
    """The record's statistics equal numpy's on an independently obtained tensor."""
    value = np.asarray(value, np.float64)
    assert record.shape == value.shape
    np.testing.assert_allclose(record.std, np.std(value), rtol=1e-5)
    np.testing.assert_allclose(record.rms, np.sqrt(np.mean(value**2)), rtol=1e-5)
    np.testing.assert_allclose(record.abs_max, np.max(np.abs(value)), rtol=1e-5)
    np.testing.assert_allclose(record.mean, np.mean(value), rtol=1e-4, atol=1e-9)
    assert record.zero_fraction == pytest.approx(np.mean(value == 0))


def expected_layer_names(model: CharLM) -> set[str]:
    names = {"embedding", "shift", "final_norm", "head"}
    for block in model.blocks:
        names |= {block.name, f"{block.name}/norm", f"{block.name}/{block.body.name}"}
    return names


@pytest.mark.parametrize("kind", KINDS)
def test_records_cover_every_layer_and_pass(kind: str) -> None:
    model = make_model(kind)
    records = collect_scales(model, one_batch(), step=3)
    assert {r.pass_ for r in records} == set(PASSES)
    assert {r.step for r in records} == {3}
    forward, backward = by_name(records, "forward"), by_name(records, "backward")
    assert expected_layer_names(model) <= set(forward)
    assert set(backward) == set(forward) | {LOSS_GRADIENT_NAME}
    assert set(by_name(records, "weight_gradient")) == {v.path for v in model.trainable_weights}
    # Forward outputs in the order they are produced: each block after its mixer.
    order = [r.name for r in select(records, "forward")]
    assert order[:2] == ["embedding", "shift"] and order[-2:] == ["final_norm", "head"]
    assert order.index("layer_0_sequence") > order.index(f"layer_0_sequence/{kind}")
    for record in records:
        assert np.isfinite(record.rms) and record.rms > 0, record
        assert set(record.formats) == {
            f"{kind}_{fmt}" for fmt in FORMATS for kind in ("underflow", "subnormal", "overflow")
        }


def test_forward_record_matches_logits(attention_case: Case) -> None:
    model, batch, records = attention_case
    logits = model.logits(tf.constant(batch["tokens"]))  # (b, s, vocab)
    assert_stats(by_name(records, "forward")["head"], logits.numpy())
    assert by_name(records, "forward")["head"].dtype == "float32"


def test_backward_record_is_loss_gradient_wrt_logits(attention_case: Case) -> None:
    model, batch, records = attention_case
    tokens, mask = tf.constant(batch["tokens"]), tf.constant(batch["mask"])
    with tf.GradientTape() as tape:
        logits = model.logits(tokens)
        tape.watch(logits)
        loss_sum, count = masked_cross_entropy(logits, tokens, mask)
        loss = loss_sum / count
    expected = tape.gradient(loss, logits).numpy()  # (b, s, vocab)
    backward = by_name(records, "backward")
    assert_stats(backward[LOSS_GRADIENT_NAME], expected)
    assert_stats(backward["head"], expected)
    assert backward["head"].zero_fraction == pytest.approx(3 / SEQ)  # unscored positions


def test_weight_gradient_records_match_plain_tape(attention_case: Case) -> None:
    model, batch, records = attention_case
    with tf.GradientTape() as tape:
        loss = model(tf.constant(batch["tokens"]), tf.constant(batch["mask"]))["loss"]
    named = model.named_weights()
    wanted = ["head/kernel", "embedding/embeddings", "layer_1_token/ffn/up/bias"]
    grads = tape.gradient(loss, [named[n] for n in wanted])
    assert isinstance(grads[1], tf.IndexedSlices)  # densified by the tool
    weight_grads = by_name(records, "weight_gradient")
    for name, grad in zip(wanted, grads):
        assert_stats(weight_grads[name], tf.convert_to_tensor(grad).numpy())


def test_call_methods_restored(attention_case: Case) -> None:
    model, batch, _ = attention_case
    tokens, mask = tf.constant(batch["tokens"]), tf.constant(batch["mask"])
    before = model(tokens, mask)["loss"].numpy()
    collect_scales(model, batch)
    layers = list(model._flatten_layers(include_self=True))  # pylint: disable=protected-access
    assert all("call" not in layer.__dict__ for layer in layers)
    assert model(tokens, mask)["loss"].numpy() == before
    # Restored on error too: a mask of the wrong shape fails in the loss, after every layer ran.
    with pytest.raises(Exception):
        collect_scales(model, {"tokens": batch["tokens"], "mask": batch["mask"][:, :5]})
    assert all("call" not in layer.__dict__ for layer in layers)
    assert model(tokens, mask)["loss"].numpy() == before


def test_mixed_float16_model_records_compute_dtype() -> None:
    model = make_model("conv", dtype="float16")
    records = collect_scales(model, one_batch())
    assert by_name(records, "forward")["head"].dtype == "float16"
    assert by_name(records, "backward")["layer_0_sequence"].dtype == "float16"
    assert by_name(records, "weight_gradient")["head/kernel"].dtype == "float32"
    # Float16 values are exactly representable in float16: nothing under/overflows.
    for record in select(records, "forward"):
        assert record.formats["underflow_float16"] == record.formats["overflow_float16"] == 0


def test_format_fractions_on_crafted_tensor() -> None:
    values = np.array([1e-9, 1e-4, 1.0, 500.0, 1e6, 0.0, -1e6])  # 6 nonzero
    fractions = format_fractions(values)
    expected = {
        "float16": (1, 2),  # 1e-9 flushes; |1e6| > 65504
        "bfloat16": (0, 0),
        "float8_e4m3fn": (2, 3),  # 1e-4 < 2^-10 flushes too; 500 > 448
        "float8_e5m2": (1, 2),  # 1e-4 > 2^-17 survives; max 57344
    }
    for fmt, (under, over) in expected.items():
        assert fractions[f"underflow_{fmt}"] == pytest.approx(under / 6), fmt
        assert fractions[f"overflow_{fmt}"] == pytest.approx(over / 6), fmt
    assert all(v == 0 for v in format_fractions(np.zeros(4)).values())


def test_subnormal_fractions_on_crafted_tensor() -> None:
    values = np.array([1e-6, 1e-4, 1e-9, 1.0, 3e-5])  # 5 nonzero
    fractions = format_fractions(values)
    expected = {  # (underflow, subnormal): float16 normals start at 2^-14 ~ 6.1e-5
        "float16": (1, 2),
        "bfloat16": (0, 0),
        "float8_e4m3fn": (4, 0),  # subnormals start at 2^-9: all three tiny values flush
        "float8_e5m2": (2, 1),  # 3e-5 lies in [2^-16, 2^-14)
    }
    for fmt, (under, subnormal) in expected.items():
        assert fractions[f"underflow_{fmt}"] == pytest.approx(under / 5), fmt
        assert fractions[f"subnormal_{fmt}"] == pytest.approx(subnormal / 5), fmt


def test_tensor_record_statistics_and_dtypes() -> None:
    value = tf.constant([[0.0, 2.0], [0.0, -4.0]], tf.bfloat16)
    record = tensor_record("x", "forward", value, step=2)
    assert record.dtype == "bfloat16" and record.shape == (2, 2) and record.step == 2
    assert record.zero_fraction == 0.5 and record.abs_max == 4.0
    assert record.rms == pytest.approx(np.sqrt(5.0)) and record.mean == pytest.approx(-0.5)
    assert record.std == pytest.approx(np.std(as_float64(value)))
    with pytest.raises(ValueError, match="pass must be"):
        tensor_record("x", "sideways", value)


def test_json_round_trip_and_append(tmp_path: pathlib.Path, attention_case: Case) -> None:
    _, _, records = attention_case
    path = str(tmp_path / "scales.json")
    write_scales_json(path, records)
    assert load_scales_json(path) == records
    with open(path, encoding="utf-8") as file:
        first = json.load(file)[0]
    assert first["pass"] == "forward" and "underflow_float8_e4m3fn" in first
    odd = tensor_record("nan", "backward", np.array([np.nan, 1.0]), step=8)
    write_scales_json(path, [odd], append=True)
    loaded = load_scales_json(path)
    assert loaded[:-1] == records and len(loaded) == len(records) + 1
    assert np.isnan(loaded[-1].rms) and loaded[-1].nonfinite_fraction == 0.5
    assert os.listdir(tmp_path) == ["scales.json"]  # no temporary file left behind


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as file:
        header = file.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def test_plot_scales_writes_png(tmp_path: pathlib.Path, attention_case: Case) -> None:
    _, batch, records = attention_case
    other = collect_scales(make_model("rnn"), batch, step=7)
    later = [ScaleRecord.from_dict({**r.to_dict(), "step": 9}) for r in records]
    path = plot_scales(
        records + later,
        str(tmp_path / "figures" / "scales.png"),
        title="attention vs rnn",
        compare=other,
        labels=("attention", "rnn"),
    )
    width, height = png_size(path)
    assert 800 <= width <= 6000 and 800 <= height <= 3000
    assert os.path.getsize(path) > 20_000
    std_path = plot_scales(records, str(tmp_path / "std.png"), statistic="std")
    assert png_size(std_path)[0] >= 800


def test_a_failed_redraw_keeps_the_previous_figure(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    records = [tensor_record("layer", p, np.full(8, 0.5)) for p in PASSES]
    path = plot_scales(records, str(tmp_path / "scales.png"))
    before = pathlib.Path(path).read_bytes()

    def half_a_png(_: Figure, file: Any, **__: Any) -> None:
        file.write(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_a_png)
    with pytest.raises(OSError, match="disk full"):
        plot_scales(records, path)
    assert pathlib.Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["scales.png"]  # no temporary file left behind


def test_command_line_summarises_and_compares_runs(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scmm.analysis.__main__ import main as analysis_main

    rng = np.random.default_rng(0)
    for run, scale in (("unit", 1.0), ("base", 2.0**-12)):
        (tmp_path / run).mkdir()
        records = [
            tensor_record(f"layer_{i}", pass_, rng.normal(size=4096) * scale * 2.0**i)
            for i in range(3)
            for pass_ in ("forward", "backward", "weight_gradient")
        ]
        write_scales_json(str(tmp_path / run / "scales.json"), records)
    out = tmp_path / "compare.png"
    assert analysis_main([str(tmp_path / "unit"), str(tmp_path / "base"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # Three layers at 2^0, 2^1, 2^2: a spread of 2 octaves in every pass of both runs.
    assert text.count("spread 2.0 octaves") == 6
    assert "log2 median -11.0" in text  # the base run sits 12 octaves lower (median at 2^1)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert analysis_main([str(tmp_path / "missing")]) == 2
