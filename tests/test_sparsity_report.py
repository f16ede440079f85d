"""The rigl-small report aggregates repeats and draws the schedule from the trials' settings."""

import dataclasses
import json
from pathlib import Path

import pytest

from scmm.sweeps.sparsity_report import table, write_report, _trials
from scmm.training.sparsity_settings import SparsitySettings


def _trial(folder: Path, config: str, repeat: int, valid_bpc: float, ever: float) -> None:
    out = folder / "trials" / config / f"lr-4.00-r{repeat}"
    out.mkdir(parents=True)
    sparsity = dataclasses.asdict(SparsitySettings(sparsity=0.9, update_interval=20))
    settings = {"training": {"steps": 400, "sparsity": sparsity}}
    kernels = {
        "a/kernel": {"density": 0.1, "active_blocks": 10, "blocks": 100, "ever_active": ever}
    }
    summary = {
        "status": "finished",
        "valid_bpc": valid_bpc,
        "test_bpc": valid_bpc + 0.1,
        "valid_perplexity": 2**valid_bpc,
        "test_perplexity": 2 ** (valid_bpc + 0.1),
        "sparsity": kernels,
    }
    (out / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def test_the_report_gives_mean_and_std_over_repeats_and_the_ever_active_fraction(
    tmp_path: Path,
) -> None:
    config = "method=rigl,block=1,variant=unit"
    _trial(tmp_path, config, 0, 3.0, 0.3)
    _trial(tmp_path, config, 1, 3.2, 0.5)
    markdown = table(_trials(tmp_path))
    row = next(line for line in markdown.splitlines() if config in line)
    assert "3.1000 ± 0.1414" in row  # valid BPC: mean and sample std of 3.0, 3.2
    assert "3.0000, 3.2000" in row and row.endswith("| 0.400 |")
    written = write_report(tmp_path)
    assert all(path.stat().st_size > 0 for path in written)


def test_a_folder_without_finished_trials_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no finished trials"):
        write_report(tmp_path)
