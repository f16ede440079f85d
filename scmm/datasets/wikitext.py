"""Prepare WikiText-103 (raw, character level) as a folder that `load_dataset` reads.

Usage::

    python -m scmm.datasets.wikitext OUT_DIR                 # download from the Hugging Face Hub
    python -m scmm.datasets.wikitext OUT_DIR --source SNAP   # use a local snapshot folder

writes ``OUT_DIR/{train,valid,test}.txt``, ``OUT_DIR/vocab.json`` and ``OUT_DIR/wikitext103.json``
(a manifest of what was verified and the SHA-256 of each reconstructed file).

Source: Hub dataset ``Salesforce/wikitext`` (repo_type "dataset"), folder ``wikitext-103-raw-v1``
with parquet shards ``{train,validation,test}-NNNNN-of-MMMMM.parquet`` and one string column
``text``.

How Hub rows map to the original ``wiki.{train,valid,test}.raw`` lines -- what we rely on: the
Hub data was produced by the original HF loading script (huggingface/datasets,
``datasets/wikitext/wikitext.py``), which iterates the file in text mode (universal newlines) and
yields, per line, ``{"text": row}`` if ``row.strip()`` is non-empty (the line *with* its "\\n")
and ``{"text": ""}`` otherwise. So a non-empty row is a line verbatim, and an empty row is a
whitespace-only line. WikiText's blank lines are a single space plus newline (" \\n"), so we write
" \\n" for an empty row. What this cannot restore, and we cannot check without the original
files: a whitespace-only line other than " \\n", and "\\r" line endings (there are none that we
know of; universal newlines would have turned them into line breaks).

Verification (any failure raises DataError and leaves no partial output file):

1. Shard layout: for each split, shards ``00000..MMMMM-1`` of ``MMMMM`` are all present.
2. Shard bytes: SHA-256 of every shard equals the Hub's LFS SHA-256 for it at the resolved
   commit (downloads), or the mapping passed as ``expected_shard_sha256`` (local sources).
3. Parquet structure: readable, a ``text`` column of strings, no nulls.
4. Row structure: a non-empty row ends with its only "\\n" (the split's last row may lack it) and
   is not whitespace-only (those were emptied by the loading script).
5. Row counts: train 1,801,350, valid 3,760, test 4,358 -- the line counts of the original files,
   given identically by the Hub dataset card (``num_examples``) and torchtext's WikiText103
   ``NUM_LINES``.
6. Text SHA-256: compared with :data:`KNOWN_TEXT_SHA256` when that holds a value. We found no
   authoritative SHA-256 of the original .raw files while writing this (no network), so it is
   empty: the command records the hashes it computed in the manifest instead. Fill it in from a
   run you trust to pin future runs.
"""

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..io import PathLike, atomic_path, atomic_write_text
from .storage import DataError
from .vocab import Vocab, text_codepoints

REPO_ID = "Salesforce/wikitext"
CONFIG = "wikitext-103-raw-v1"
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
EXPECTED_ROWS = {"train": 1_801_350, "valid": 3_760, "test": 4_358}
KNOWN_TEXT_SHA256: dict[str, str] = {}
MANIFEST_FILENAME = "wikitext103.json"

_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
# Rows per Arrow batch: ~64k short lines keep memory at a few tens of MB per batch.
_BATCH_ROWS = 1 << 16


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def download_snapshot(revision: Optional[str] = None) -> tuple[Path, str, dict[str, str]]:
    """Download the parquet shards; return (snapshot folder, commit, shard name -> LFS SHA-256)."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    # Pin one commit so the files and the hashes we check them against cannot disagree.
    commit = api.dataset_info(REPO_ID, revision=revision).sha
    if commit is None:
        raise DataError(f"the Hub returned no commit for {REPO_ID!r} at revision {revision!r}")
    folder = snapshot_download(
        REPO_ID, repo_type="dataset", revision=commit, allow_patterns=[f"{CONFIG}/*.parquet"]
    )
    hashes = {
        Path(entry.path).name: entry.lfs.sha256
        for entry in api.list_repo_tree(
            REPO_ID, path_in_repo=CONFIG, repo_type="dataset", revision=commit, expand=True
        )
        if isinstance(entry, RepoFile) and entry.lfs is not None
    }
    return Path(str(folder)), commit, hashes


def find_shards(source: Path) -> dict[str, list[Path]]:
    """Our split name -> its shard paths in order, checking that none is missing."""
    folder = source / CONFIG
    if not folder.is_dir():
        raise FileNotFoundError(
            f"snapshot folder {str(folder)!r} does not exist; expected {CONFIG}/ with"
            " {train,validation,test}-NNNNN-of-MMMMM.parquet inside the source folder"
        )
    shards: dict[str, list[Path]] = {}
    for split, hub_split in HUB_SPLITS.items():
        found = {}
        totals = set()
        for path in folder.glob(f"{hub_split}-*.parquet"):
            match = _SHARD_NAME.match(path.name)
            if match is None or match["split"] != hub_split:
                raise DataError(f"unexpected shard name {path.name!r} in {str(folder)!r}")
            found[int(match["index"])] = path
            totals.add(int(match["total"]))
        if len(totals) != 1:
            raise DataError(
                f"split {hub_split!r} in {str(folder)!r} has shard totals {sorted(totals)};"
                " expected one '-of-MMMMM' count shared by 1 or more shards"
            )
        total = totals.pop()
        if sorted(found) != list(range(total)):
            raise DataError(
                f"split {hub_split!r} in {str(folder)!r} has shards {sorted(found)};"
                f" expected 0..{total - 1}"
            )
        shards[split] = [found[index] for index in range(total)]
    return shards


def verify_shard_hashes(shards: Iterable[Path], expected: Mapping[str, str]) -> dict[str, str]:
    """Check each shard's SHA-256 against `expected` (by file name); return the computed ones."""
    computed = {}
    for path in shards:
        computed[path.name] = sha256_file(path)
        if path.name not in expected:
            raise DataError(f"no expected SHA-256 for shard {path.name!r}; cannot verify it")
        if computed[path.name] != expected[path.name]:
            raise DataError(
                f"shard {str(path)!r} has SHA-256 {computed[path.name]}, expected"
                f" {expected[path.name]}: the file is corrupted or from another revision"
            )
    return computed


def _rows(path: Path, batch_rows: int) -> Iterable[list[str]]:
    """The `text` column of one shard, batch by batch (one row group in memory at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        field = parquet.schema_arrow.field("text") if "text" in parquet.schema_arrow.names else None
        if field is None or not (
            pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
        ):
            raise DataError(
                f"shard {str(path)!r} has schema {parquet.schema_arrow}; expected a string"
                " column 'text'"
            )
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=["text"]):
            column = batch.column(0)
            if column.null_count:
                raise DataError(f"shard {str(path)!r} has {column.null_count} null rows")
            yield column.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"shard {str(path)!r} is not a readable parquet file: {exc}") from exc


def _check_row(row: str, is_last: bool, where: str) -> None:
    """Raise unless `row` is a plausible Hub row (see verification step 4 in the module doc)."""
    if not row:
        return  # a blank line
    body = row[:-1] if row.endswith("\n") else row
    if "\n" in body or (not is_last and body == row):
        raise DataError(f"{where}: row {row[:80]!r} must be one line ending in '\\n'")
    if not row.strip():
        raise DataError(f"{where}: whitespace-only row {row!r}; expected such rows to be ''")


def reconstruct_split(
    split: str, shards: Sequence[Path], out_path: Path, expected_rows: Optional[int]
) -> dict[str, Any]:
    """Write one split's original text to `out_path` (atomically); return its statistics."""
    digest = hashlib.sha256()
    seen = np.zeros(0x110000, dtype=bool)  # code points present (a set over all of Unicode)
    n_rows = n_chars = n_bytes = 0

    def emit(out: BinaryIO, text: str) -> None:
        nonlocal n_chars, n_bytes
        seen[text_codepoints(text)] = True
        data = text.encode("utf-8")
        digest.update(data)
        out.write(data)
        n_chars += len(text)
        n_bytes += len(data)

    with atomic_path(out_path) as temp, open(temp, "wb") as out:
        # One row of look-behind: only the split's very last row may lack its "\n".
        pending: Optional[tuple[str, str]] = None  # (row, where)
        for shard in shards:
            for rows in _rows(shard, _BATCH_ROWS):
                pieces = []
                for row in rows:
                    if pending is not None:
                        _check_row(pending[0], False, pending[1])
                        pieces.append(pending[0] or " \n")  # "" stood for a blank " \n" line
                    pending = (row, f"split {split!r} row {n_rows} ({shard.name})")
                    n_rows += 1
                emit(out, "".join(pieces))
        if pending is not None:
            _check_row(pending[0], True, pending[1])
            emit(out, pending[0] or " \n")
        if expected_rows is not None and n_rows != expected_rows:
            raise DataError(f"split {split!r} has {n_rows} rows; expected {expected_rows}")
        sha256 = digest.hexdigest()
        known = KNOWN_TEXT_SHA256.get(split)
        if known is not None and sha256 != known:
            raise DataError(f"split {split!r} text has SHA-256 {sha256}; expected {known}")
    return {
        "rows": n_rows,
        "chars": n_chars,
        "bytes": n_bytes,
        "sha256": sha256,
        "sha256_verified": known is not None,
        "codepoints": np.flatnonzero(seen),
    }


def prepare_wikitext103(
    out_dir: PathLike,
    source: Optional[PathLike] = None,
    *,
    revision: Optional[str] = None,
    expected_shard_sha256: Optional[Mapping[str, str]] = None,
    expected_rows: Optional[Mapping[str, int]] = None,
) -> dict[str, Any]:
    """Build OUT_DIR/{train,valid,test}.txt + vocab.json from the Hub (or a local snapshot).

    `source`: a local snapshot folder (holding ``wikitext-103-raw-v1/``); None downloads.
    `expected_rows`: per-split row counts (default: the real WikiText-103 counts; {}: unchecked).
    Returns the manifest that is also written to OUT_DIR/wikitext103.json.
    """
    commit: Optional[str] = None
    if source is None:
        snapshot, commit, hub_hashes = download_snapshot(revision)
        expected_shard_sha256 = expected_shard_sha256 or hub_hashes
    else:
        snapshot = Path(source)
    rows = EXPECTED_ROWS if expected_rows is None else expected_rows
    shards = find_shards(snapshot)
    all_shards = [path for paths in shards.values() for path in paths]
    # Check bytes before writing anything, so a corrupted download leaves OUT_DIR untouched.
    shard_sha256 = (
        verify_shard_hashes(all_shards, expected_shard_sha256)
        if expected_shard_sha256 is not None
        else {path.name: sha256_file(path) for path in all_shards}
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {
        split: reconstruct_split(split, paths, out / f"{split}.txt", rows.get(split))
        for split, paths in shards.items()
    }
    vocab = Vocab.from_codepoints(
        np.concatenate([stats.pop("codepoints") for stats in splits.values()])
    )
    vocab.save(out / "vocab.json")
    manifest: dict[str, Any] = {
        "repo_id": REPO_ID,
        "config": CONFIG,
        "commit": commit,
        "source": str(snapshot),
        "shard_sha256": shard_sha256,
        "shard_sha256_verified": expected_shard_sha256 is not None,
        "splits": splits,
        "vocab_size": vocab.size,
    }
    atomic_write_text(out / MANIFEST_FILENAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m scmm.datasets.wikitext",
        description="Download, verify and reconstruct WikiText-103 (raw) as train/valid/test.txt.",
    )
    parser.add_argument(
        "out_dir", help="folder to write train.txt, valid.txt, test.txt, vocab.json"
    )
    parser.add_argument(
        "--source", help=f"local snapshot folder containing {CONFIG}/ (default: download)"
    )
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) to download")
    args = parser.parse_args(argv)
    try:
        manifest = prepare_wikitext103(args.out_dir, args.source, revision=args.revision)
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, stats in manifest["splits"].items():
        print(
            f"{split:5s} {stats['rows']:>10,d} rows {stats['chars']:>12,d} chars  {stats['sha256']}"
        )
    print(f"vocab: {manifest['vocab_size']} characters; manifest: {MANIFEST_FILENAME}")
    if not KNOWN_TEXT_SHA256:
        print("note: text SHA-256 not pinned (see KNOWN_TEXT_SHA256); recorded in the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
