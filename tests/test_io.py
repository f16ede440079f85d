"""scmm.io: the one temp-file-then-os.replace implementation every writer goes through.

The crash-safety of ``atomic_open``/``write_json``/``write_npz``/``read_jsonl`` in a real run is
tested in test_experiments.py (section 10); these tests pin the shared primitives themselves.
"""

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from scmm import io as scmm_io
from scmm.io import (
    TEMP_PREFIX,
    atomic_memmap,
    atomic_open,
    atomic_path,
    atomic_save_npy,
    atomic_write_text,
    finite_or_none,
    read_jsonl,
    write_json,
)


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_scmm_io_does_not_shadow_the_standard_library_io() -> None:
    import io  # pylint: disable=import-outside-toplevel

    assert io.StringIO is not None and not hasattr(io, "atomic_open")
    assert scmm_io.__name__ == "scmm.io"


def test_the_temporary_file_sits_beside_the_target_and_names_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "cache.npy"  # the folder is created on demand
    with atomic_path(target) as temp:
        assert temp.parent == target.parent
        assert temp.name.startswith(f"{TEMP_PREFIX}cache.npy.")
        assert stat.S_IMODE(temp.stat().st_mode) == 0o644  # not mkstemp's 0600
        temp.write_bytes(b"new")
        assert not target.exists()  # nothing is visible before the block ends
    assert target.read_bytes() == b"new"
    assert not temp_files(target.parent)


@pytest.mark.parametrize("error", [RuntimeError("crash"), KeyboardInterrupt()])
def test_a_failed_atomic_path_keeps_the_previous_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "meta.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(type(error)):
        with atomic_path(target) as temp:
            temp.write_text("half", encoding="utf-8")
            raise error
    assert target.read_text(encoding="utf-8") == "old\n"
    assert not temp_files(tmp_path)


def test_atomic_write_text_keeps_newlines_exactly(tmp_path: Path) -> None:
    target = tmp_path / "split.txt"
    atomic_write_text(target, "a\r\nb\nc")
    assert target.read_bytes() == b"a\r\nb\nc"


def test_atomic_save_npy_and_memmap_round_trip(tmp_path: Path) -> None:
    atomic_save_npy(tmp_path / "ids.npy", np.arange(5, dtype=np.uint16))
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), np.arange(5))
    with atomic_memmap(tmp_path / "big.npy", np.dtype(np.uint8), 6) as out:
        out[:3] = 7
        out[3:] = 9
        assert not (tmp_path / "big.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "big.npy"), [7, 7, 7, 9, 9, 9])
    with atomic_memmap(tmp_path / "empty.npy", np.dtype(np.uint8), 0) as out:
        assert out.shape == (0,)
    assert np.load(tmp_path / "empty.npy").shape == (0,)
    assert not temp_files(tmp_path)


def test_a_failed_memmap_leaves_neither_target_nor_temp(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad chunk"):
        with atomic_memmap(tmp_path / "ids.npy", np.dtype(np.uint8), 4) as out:
            out[:2] = 1
            raise ValueError("bad chunk")
    assert not (tmp_path / "ids.npy").exists()
    assert not temp_files(tmp_path)


def test_atomic_open_rejects_modes_that_do_not_start_a_new_file(tmp_path: Path) -> None:
    for mode in ("a", "r", "w+"):
        with pytest.raises(ValueError, match=re.escape(f"got {mode!r}")):
            with atomic_open(tmp_path / "x.txt", mode):
                pass
    assert not list(tmp_path.iterdir())


def test_relative_paths_are_fixed_before_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    with atomic_open("out.txt") as file:
        os.chdir(tmp_path / "elsewhere")  # the rename must still land in the original folder
        file.write("here\n")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "here\n"
    assert not (tmp_path / "elsewhere" / "out.txt").exists()


def test_write_json_is_strict_json_and_read_jsonl_skips_a_missing_file(tmp_path: Path) -> None:
    data = {"loss": float("nan"), "curve": (1.0, float("inf")), "nested": [{"x": -float("inf")}]}
    assert finite_or_none(data) == {"loss": None, "curve": [1.0, None], "nested": [{"x": None}]}
    write_json(tmp_path / "summary.json", data)
    text = (tmp_path / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text and text.endswith("}\n")
    assert json.loads(text) == finite_or_none(data)
    assert not read_jsonl(tmp_path / "never-written.jsonl")
