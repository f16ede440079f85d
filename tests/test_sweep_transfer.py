"""Learning-rate transfer sweeps: the fixed LR grid (``lr_search.mode: grid``), the transfer
report (``transfer.md``, ``transfer.png``) on a synthetic sweep against hand-computed numbers,
its re-creation from a finished folder (``python -m scmm.sweeps.report``), and the presets."""

import json
import math
import pathlib
import random
from typing import Any

import numpy as np
import pytest
from test_sweeps import FakeExecutor, bowl

from scmm.experiments.settings import SettingsError
from scmm.sweeps import cli as sweep_cli
from scmm.sweeps import report, transfer
from scmm.sweeps.definition import (
    LrSearch,
    axis_labels,
    definition_from_dict,
    expand,
    load_definition,
)
from scmm.sweeps.index import SweepIndex, TrialRecord
from scmm.sweeps.results import summarise
from scmm.sweeps.runner import EXIT_OK, Sweep, SweepOptions
from scmm.sweeps.search import next_point, points_to_run

# -- the grid ------------------------------------------------------------------------------------


def test_a_grid_runs_every_point_whatever_they_score() -> None:
    grid = LrSearch(start=2**-6, factor=2.0, threshold=0.0, max_points=4, mode="grid")
    assert points_to_run(grid, {}) == [0, 1, 2, 3]
    # A diverged point, and points far worse than the best, stop nothing.
    scores = {0: 2.0, 1: math.inf}
    assert points_to_run(grid, scores) == [2, 3] and next_point(grid, scores) == 2
    assert next_point(grid, {0: 1.0, 1: 9.0, 2: 9.0, 3: 9.0}) is None
    assert points_to_run(grid, {k: 1.0 for k in range(4)}) == []
    # A search still runs one point at a time.
    search = LrSearch(start=2**-6, factor=2.0, threshold=0.1, max_points=4)
    assert points_to_run(search, {}) == [0] and points_to_run(search, {0: 1.0}) == [1]


def test_an_unknown_search_mode_is_named() -> None:
    with pytest.raises(SettingsError, match="mode"):
        definition_from_dict({"name": "t", "lr_search": {"mode": "bisect"}}, "test")


def transfer_definition(**fields: Any) -> dict[str, Any]:
    """A small transfer sweep on the smoke model (regular and unit stand in for the schemes)."""
    return {
        "name": "t",
        "base": "smoke",
        "axes": {
            "scheme": {
                "regular": {"model.scaling.type": "regular", "lr_search.start": 2**-10},
                "unit": {
                    "model.scaling.type": "unit",
                    "model.residual.weighting": "mean",
                    "lr_search.start": 2**-9,
                },
            },
            "width": {
                "32": {"model.hidden_size": 32, "model.sequence.head_size": 16},
                "64": {"model.hidden_size": 64, "model.sequence.head_size": 32},
            },
        },
        "lr_search": {"mode": "grid", "factor": 2, "max_points": 5},
        "transfer_axis": "width",
        "table_rows": ["width"],
        **fields,
    }


def test_a_grid_sweep_lists_its_grid_and_exact_trial_count(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(transfer_definition()))
    assert sweep_cli.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("LR grid 2^-10.00 .. 2^-6.00 x2 (5 points)") == 2
    assert out.count("LR grid 2^-9.00 .. 2^-5.00 x2 (5 points)") == 2
    assert "4 configurations; 20 trials\n" in out
    configs = {c.key: c for c in expand(definition_from_dict(transfer_definition(), "t"))}
    wide = configs["scheme=unit,width=64"].settings["model"]
    assert (wide["hidden_size"], wide["sequence"]["heads"], wide["sequence"]["head_size"]) == (
        64,
        2,
        32,
    )


def test_an_unknown_transfer_axis_is_named() -> None:
    definition = definition_from_dict(transfer_definition(transfer_axis="depth"), "t")
    with pytest.raises(SettingsError, match="transfer_axis names unknown axis 'depth'"):
        expand(definition)


def run_fake(tmp_path: pathlib.Path, **fields: Any) -> tuple[str, FakeExecutor]:
    definition = definition_from_dict(transfer_definition(**fields), "t")
    out = str(tmp_path / "sweep")
    sweep = Sweep(definition, expand(definition), SweepOptions(out_dir=out))
    executor = FakeExecutor(bowl)
    assert sweep.run(executor, progress=False) == EXIT_OK
    return out, executor


def test_a_grid_sweep_submits_every_point_at_once_and_writes_the_transfer_report(
    tmp_path: pathlib.Path,
) -> None:
    out, executor = run_fake(tmp_path, repeats=2)
    # All of a configuration's grid is submitted before any score is known (a search would
    # alternate between configurations, one point each).
    first = [t.split("/")[0] for t in executor.submitted[:10]]
    assert first == ["scheme=regular,width=32"] * 10
    assert len(executor.submitted) == 4 * 5 * 2
    # bowl: best 2^-8, diverged above 2^-5 (so none on these grids), widths alike.
    results = {r.config: r for r in summarise(list(SweepIndex(f"{out}/sweep.jsonl")))}
    assert {r.best_learning_rate for r in results.values()} == {2**-8}
    assert all(len(r.scores) == 5 for r in results.values())
    text = pathlib.Path(out, "transfer.md").read_text(encoding="utf-8")
    assert "| regular | 1 | +0 (-8 → -8) | +0 | +0.000 |" in text
    assert pathlib.Path(out, "transfer.png").read_bytes()[:4] == b"\x89PNG"
    again = FakeExecutor(bowl)
    definition = definition_from_dict(transfer_definition(repeats=2), "t")
    Sweep(definition, expand(definition), SweepOptions(out_dir=out)).run(again, progress=False)
    assert not again.submitted  # resumed: nothing left to run


def test_the_report_command_recreates_every_output_from_the_folder(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = run_fake(tmp_path)
    names = ["results.csv", "table.md", "transfer.md", "lr_sweep.png", "transfer.png"]
    before = {name: pathlib.Path(out, name).read_bytes() for name in names}
    for name in [*names, "loss_curves.png"]:
        pathlib.Path(out, name).unlink()
    monkeypatch.chdir(tmp_path)  # a relative folder, from elsewhere
    assert report.main(["sweep"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(f"sweep/{n}" for n in [*names, "loss_curves.png"])
    for name in ("results.csv", "table.md", "transfer.md"):
        assert pathlib.Path(out, name).read_bytes() == before[name], name
    assert pathlib.Path(out, "transfer.png").stat().st_size > 1000


def test_the_report_command_refuses_a_folder_without_a_sweep(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report.main([str(tmp_path)]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


# -- the report on a synthetic sweep -------------------------------------------------------------

# Median validation BPC by (scheme, width) and log2 LR; inf: diverged. Written so that the
# numbers the report gives can be read off by hand (see the test).
SYNTHETIC = {
    ("regular", "64"): {-10: 2.60, -9: 2.50, -8: 2.45, -7: 2.40, -6: 2.55},
    ("regular", "128"): {-10: 2.50, -9: 2.40, -8: 2.35, -7: 2.42, -6: math.inf},
    ("regular", "256"): {-10: 2.40, -9: 2.30, -8: 2.34, -7: 2.45, -6: math.inf},
    ("umup", "64"): {-4: 2.60, -3: 2.50, -2: 2.42, -1: 2.44, 0: 2.70},
    ("umup", "128"): {-4: 2.55, -3: 2.40, -2: 2.33, -1: 2.34, 0: 2.60},
    ("umup", "256"): {-4: 2.50, -3: 2.35, -2: 2.26, -1: 2.25, 0: 2.50},
}
ORDER = {"scheme": ["regular", "umup"], "width": ["64", "128", "256"]}


def synthetic_records() -> list[TrialRecord]:
    """Two repeats per point, 0.01 either side of the table's value (median: the value)."""
    records = []
    for (scheme, width), scores in SYNTHETIC.items():
        config = f"scheme={scheme},width={width}"
        for point, (log2_rate, value) in enumerate(sorted(scores.items())):
            for repeat, offset in enumerate((-0.01, 0.01)):
                diverged = math.isinf(value)
                record = TrialRecord(
                    f"{config}/lr{log2_rate}-r{repeat}", config,
                    {"scheme": scheme, "width": width}, 2.0**log2_rate, point, repeat,
                    repeat, "x", state="diverged" if diverged else "finished",
                    valid_bpc=value + offset, test_bpc=value + offset + 0.1,
                )  # fmt: skip
                records.append(record)
    random.Random(0).shuffle(records)  # the report orders by the definition, not the index
    return records


def test_the_transfer_numbers_of_a_synthetic_sweep() -> None:
    panels = transfer.transfer_panels(summarise(synthetic_records()), "width", ORDER)
    assert [p.name for p in panels] == ["scheme=regular", "scheme=umup"]
    regular, umup = panels[0], panels[1]
    assert [c.value for c in regular.curves] == ["64", "128", "256"]
    # Best log2 LR per width: regular -7, -8, -9 (moves down a step per doubling); u-muP
    # -2, -2, -1. Best BPC: the lowest value of each row.
    assert [c.best_log2 for c in regular.curves] == [-7, -8, -9]
    assert [c.best_log2 for c in umup.curves] == [-2, -2, -1]
    assert [c.best_bpc for c in regular.curves] == pytest.approx([2.40, 2.35, 2.30])
    assert [c.best_bpc for c in umup.curves] == pytest.approx([2.42, 2.33, 2.25])
    assert all(c.interior for p in panels for c in p.curves)
    assert regular.step_log2 == umup.step_log2 == 1
    # Shift 64 -> 256: regular -9 - -7 = -2 steps; u-muP -1 - -2 = +1. Span: 2 and 1.
    assert (regular.shift_steps, regular.span_steps) == (-2, 2)
    assert (umup.shift_steps, umup.span_steps) == (1, 1)
    # Gap: width 256 at width 64's best LR minus its own best. regular: 2.45 at -7 - 2.30;
    # u-muP: 2.26 at -2 - 2.25.
    assert regular.gap == pytest.approx(0.15) and umup.gap == pytest.approx(0.01)
    text = transfer.transfer_markdown(panels, "width", "synthetic")
    assert "| regular | 64 | -7 | 2.400 | yes |" in text
    assert "| umup | 256 | -1 | 2.250 | yes |" in text
    assert "## From width=64 to width=256" in text
    assert "| regular | 1 | -2 (-7 → -9) | +2 | +0.150 |" in text
    assert "| umup | 1 | +1 (-2 → -1) | +1 | +0.010 |" in text
    assert (
        "At the last width, best validation BPC: scheme=regular (width=256): 2.300 at log2 LR"
        " -9; scheme=umup (width=256): 2.250 at log2 LR -1. Lowest: scheme=umup." in text
    )
    # The full grid, a row per width, each best in bold, a diverged point named.
    assert "| 128 | 2.500 | 2.400 | **2.350** | 2.420 | diverged |" in text
    assert "| 256 | 2.500 | 2.350 | 2.260 | **2.250** | 2.500 |" in text


def test_an_optimum_at_the_grid_edge_and_an_unrun_rate_are_reported_as_such() -> None:
    records = [
        r
        for r in synthetic_records()
        if r.labels["scheme"] == "regular" and not (r.labels["width"] == "256" and r.point == 4)
    ]
    # Width 256 did not run -6; width 64's best is made its highest rate, -6: an edge.
    for r in records:
        if r.labels["width"] == "64" and r.point == 4:
            r.valid_bpc = 2.0
    panels = transfer.transfer_panels(summarise(records), "width", ORDER)
    assert len(panels) == 1
    panel = panels[0]
    assert [c.interior for c in panel.curves] == [False, True, True]
    assert panel.curves[0].best_log2 == -6 and panel.shift_steps == -3
    assert panel.span_steps == 3 and math.isnan(panel.gap)
    text = transfer.transfer_markdown([panel], "width", "edge")
    assert "| regular | 64 | -6 | 2.000 | **no** |" in text
    assert "| regular | 1 | -3 (-6 → -9) | +3 | n/a |" in text


def test_the_transfer_figure_has_a_panel_per_scheme_and_a_curve_per_width(
    tmp_path: pathlib.Path,
) -> None:
    summary = summarise(synthetic_records())
    panels = transfer.transfer_panels(summary, "width", ORDER)
    figure = transfer.transfer_figure(panels, "width", "synthetic")
    axes = [axis for axis in figure.get_axes() if axis.get_visible()]
    assert [axis.get_title() for axis in axes] == ["scheme=regular", "scheme=umup"]
    regular_lines = axes[0].get_lines()
    assert [line.get_label() for line in regular_lines] == [
        "width=64 (best 2^-7)",
        "width=128 (best 2^-8)",
        "width=256 (best 2^-9)",
    ]
    assert np.asarray(regular_lines[0].get_xdata(), dtype=float).tolist() == [-10, -9, -8, -7, -6]
    # The diverged point of width 128 is drawn at the top of the axis, not left out.
    top = float(np.asarray(regular_lines[1].get_ydata(), dtype=float).max())
    assert math.isfinite(top) and 2.7 < top < axes[0].get_ylim()[1]
    transfer.write_transfer(str(tmp_path), summary, "width", ORDER, "synthetic")
    assert (tmp_path / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "transfer.png").stat().st_size > 10_000
    assert (
        (tmp_path / "transfer.md")
        .read_text(encoding="utf-8")
        .startswith("# synthetic: learning-rate")
    )


def test_axis_labels_keep_the_definitions_order() -> None:
    definition = definition_from_dict(transfer_definition(), "t")
    assert axis_labels(definition) == {"scheme": ["regular", "unit"], "width": ["32", "64"]}


# -- the presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, axis, values",
    [("umup-transfer-small", "width", [64, 128, 256]), ("umup-depth-small", "depth", [2, 4, 8])],
)
def test_the_transfer_presets_expand_to_their_grids(
    name: str, axis: str, values: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    definition = load_definition(name)
    assert definition.transfer_axis == axis and definition.repeats == 1
    configs = {c.key: c for c in expand(definition)}  # every one validated
    assert sorted(configs) == sorted(
        f"scheme={s},{axis}={v}" for s in ("regular", "umup") for v in values
    )
    grids = {"regular": (2**-11, 7), "umup": (2**-3, 5)}
    for config in configs.values():
        settings, search = config.settings, config.lr_search
        model, training = settings["model"], settings["training"]
        scheme = config.labels["scheme"]
        assert search is not None and search.mode == "grid" and search.factor == 2
        assert (search.start, search.max_points) == grids[scheme]
        assert model["scaling"]["type"] == scheme
        assert model["residual"]["weighting"] == "mean"  # umup: read as its residual rule
        value = int(config.labels[axis])
        width, depth = (value, 2) if axis == "width" else (64, value)
        assert (model["hidden_size"], model["depth"]) == (width, depth)
        # Heads fixed, head size width / heads.
        assert (model["sequence"]["heads"], model["sequence"]["head_size"]) == (2, width // 2)
        assert model["sequence"]["type"] == "attention" and model["dtype"] == "float32"
        assert (training["steps"], training["valid_interval"]) == (400, 400)
        assert settings["data"]["path"] is None  # the embedded corpus unless --data.path
    assert sweep_cli.main([name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("LR grid 2^-11.00 .. 2^-5.00 x2 (7 points)") == 3
    assert out.count("LR grid 2^-3.00 .. 2^1.00 x2 (5 points)") == 3
    assert "6 configurations; 36 trials\n" in out


def test_a_transfer_preset_takes_another_corpus_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configs = expand(load_definition("umup-transfer-small"), {"data.path": "elsewhere"})
    assert {c.settings["data"]["path"] for c in configs} == {"elsewhere"}
    assert sweep_cli.main(["umup-transfer-small", "--dry-run", "--data.path", "nowhere"]) == 0
    assert "note:" in capsys.readouterr().err  # the missing folder is named, nothing runs


def test_the_umup_fp8_preset_compares_fp32_and_unscaled_fp8_on_one_grid() -> None:
    definition = load_definition("umup-fp8-small")
    configs = {c.key: c for c in expand(definition)}  # every one validated
    assert sorted(configs) == ["format=float32", "format=fp8"] and definition.repeats == 2
    precision = {key: c.settings["model"]["precision"] for key, c in configs.items()}
    assert (precision["format=fp8"]["activations"], precision["format=fp8"]["weights"]) == (
        "e4m3",
        "e4m3",
    )
    assert precision["format=fp8"]["gradients"] == "e5m2"
    assert precision["format=fp8"]["scaling"] == "none"  # no per-tensor scaling
    assert precision["format=float32"]["activations"] == "float32"  # no rounding
    for config in configs.values():
        model, search = config.settings["model"], config.lr_search
        assert model["scaling"]["type"] == "umup" and model["hidden_size"] == 64
        assert config.settings["training"]["loss_scale"] == 1.0
        assert search is not None and (search.mode, search.start, search.max_points) == (
            "grid",
            2**-2,
            3,
        )
