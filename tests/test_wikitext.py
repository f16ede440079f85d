"""Offline test of the WikiText-103 preparation against a fake Hub snapshot."""

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scmm.datasets import DataError, DataSettings, Vocab, load_dataset
from scmm.datasets import wikitext

# Shaped like wiki.*.raw: " \n" blank lines, " = Title = " headings, non-ASCII text.
ORIGINAL = {
    "train": (
        " \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles is a"
        " game . \n \n = = Gameplay = = \n \n The game 's 1 @,@ 000 units — “ quoted ” . \n"
    )
    * 7,
    "valid": " \n = Homarus gammarus = \n \n Homarus gammarus is a lobster . \n \n",
    "test": " \n = Robert Boulter = \n \n Robert Boulter is an English actor . \n",
}


def hub_rows(text: str) -> list[str]:
    """What the HF loading script made of a file: lines, whitespace-only ones as ''."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def make_snapshot(root: Path, shards_per_split: dict[str, int]) -> Path:
    folder = root / wikitext.CONFIG
    folder.mkdir(parents=True)
    for split, hub_split in wikitext.HUB_SPLITS.items():
        rows = hub_rows(ORIGINAL[split])
        total = shards_per_split.get(split, 1)
        size = -(-len(rows) // total)
        for index in range(total):
            table = pa.table(
                {"text": pa.array(rows[index * size : (index + 1) * size], pa.string())}
            )
            name = f"{hub_split}-{index:05d}-of-{total:05d}.parquet"
            # Small row groups, so the streaming reader crosses row-group boundaries.
            pq.write_table(table, folder / name, row_group_size=5)
    return root


def rows_of(split: str) -> int:
    return len(hub_rows(ORIGINAL[split]))


def shard_hashes(snapshot: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (snapshot / wikitext.CONFIG).glob("*.parquet")
    }


@pytest.fixture(name="snapshot")
def fixture_snapshot(tmp_path: Path) -> Path:
    return make_snapshot(tmp_path / "snapshot", {"train": 3})


def expected_rows() -> dict[str, int]:
    return {split: rows_of(split) for split in ORIGINAL}


def test_prepare_reconstructs_original(snapshot: Path, tmp_path: Path) -> None:
    out = tmp_path / "wt103"
    manifest = wikitext.prepare_wikitext103(
        out,
        snapshot,
        expected_shard_sha256=shard_hashes(snapshot),
        expected_rows=expected_rows(),
    )
    for split, text in ORIGINAL.items():
        assert (out / f"{split}.txt").read_bytes() == text.encode("utf-8")
        stats = manifest["splits"][split]
        assert stats["rows"] == rows_of(split) and stats["chars"] == len(text)
        assert stats["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    chars = sorted(set("".join(ORIGINAL.values())))
    assert json.loads((out / "vocab.json").read_text(encoding="utf-8")) == {"chars": chars}
    assert manifest["shard_sha256_verified"] is True
    assert json.loads((out / wikitext.MANIFEST_FILENAME).read_text(encoding="utf-8")) == manifest

    data = load_dataset(DataSettings(path=str(out), cache_dir=str(tmp_path / "cache")))
    assert data.vocab == Vocab(chars)
    assert data.vocab.decode(data.splits["valid"]) == ORIGINAL["valid"]


def test_cli_with_local_source(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wikitext, "EXPECTED_ROWS", expected_rows())
    out = tmp_path / "cli"
    assert wikitext.main([str(out), "--source", str(snapshot)]) == 0
    assert (out / "test.txt").read_bytes().decode("utf-8") == ORIGINAL["test"]
    # The real row counts do not match the fake snapshot: the CLI reports an error.
    monkeypatch.setattr(wikitext, "EXPECTED_ROWS", {"train": 1_801_350, "valid": 1, "test": 1})
    assert wikitext.main([str(tmp_path / "cli2"), "--source", str(snapshot)]) == 1


def test_corrupted_shard_rejected(snapshot: Path, tmp_path: Path) -> None:
    hashes = shard_hashes(snapshot)
    shard = snapshot / wikitext.CONFIG / "train-00001-of-00003.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # a single flipped bit
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="train-00001-of-00003.parquet.*SHA-256"):
        wikitext.prepare_wikitext103(out, snapshot, expected_shard_sha256=hashes)
    assert not (out / "train.txt").exists()


def test_unreadable_shard_rejected(snapshot: Path, tmp_path: Path) -> None:
    shard = snapshot / wikitext.CONFIG / "test-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])  # truncated: footer gone
    with pytest.raises(DataError, match="test-00000-of-00001.parquet.*not a readable parquet"):
        wikitext.prepare_wikitext103(tmp_path / "out", snapshot, expected_rows=expected_rows())
    assert not (tmp_path / "out" / "test.txt").exists()


def test_row_count_and_structure_checks(tmp_path: Path) -> None:
    snapshot = make_snapshot(tmp_path / "a", {})
    wrong = dict(expected_rows(), valid=rows_of("valid") + 1)
    with pytest.raises(DataError, match=f"'valid' has {rows_of('valid')} rows; expected"):
        wikitext.prepare_wikitext103(tmp_path / "out", snapshot, expected_rows=wrong)

    # A row holding two lines cannot come from the loading script.
    bad = tmp_path / "b"
    shutil.copytree(snapshot, bad)
    table = pa.table({"text": ["ok\n", "two\nlines\n", ""]})
    pq.write_table(table, bad / wikitext.CONFIG / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match="one line"):
        wikitext.prepare_wikitext103(tmp_path / "out", bad, expected_rows={})


def test_missing_shard_rejected(snapshot: Path, tmp_path: Path) -> None:
    (snapshot / wikitext.CONFIG / "train-00002-of-00003.parquet").unlink()
    with pytest.raises(DataError, match=r"shards \[0, 1\]; expected 0..2"):
        wikitext.prepare_wikitext103(tmp_path / "out", snapshot)
    with pytest.raises(FileNotFoundError, match="wikitext-103-raw-v1"):
        wikitext.prepare_wikitext103(tmp_path / "out", tmp_path / "empty")


def test_pinned_text_hash_checked(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = hashlib.sha256(ORIGINAL["test"].encode("utf-8")).hexdigest()
    monkeypatch.setattr(wikitext, "KNOWN_TEXT_SHA256", {"test": good})
    manifest = wikitext.prepare_wikitext103(tmp_path / "ok", snapshot, expected_rows={})
    assert manifest["splits"]["test"]["sha256_verified"] is True
    assert manifest["splits"]["valid"]["sha256_verified"] is False
    monkeypatch.setattr(wikitext, "KNOWN_TEXT_SHA256", {"test": "0" * 64})
    with pytest.raises(DataError, match="'test' text has SHA-256"):
        wikitext.prepare_wikitext103(tmp_path / "bad", snapshot, expected_rows={})
    assert not (tmp_path / "bad" / "test.txt").exists()
