"""Load a corpus as id arrays, caching them as .npy files so later loads are memory-mapped.

Sources (``DataSettings.path``):

- ``None``: the embedded stdlib-docstring corpus (:mod:`scmm.datasets.corpus`).
- a folder holding ``train.txt``, ``valid.txt``, ``test.txt`` (UTF-8) and optionally
  ``vocab.json``. With vocab.json, its characters and ids are used as given and any other
  character is an error. Without it, the vocab is the sorted set of characters of the three
  files and is written to the *cache* folder, never into the data folder (which may be
  read-only or shared).

Cache layout: ``<cache>/<kind>-<key>/{vocab.json,train.npy,valid.npy,test.npy,meta.json}``
where ``<cache>`` is ``settings.cache_dir``, else $SCMM_CACHE, else ~/.cache/scmm, and ``<key>``
hashes the absolute data path, each file's size and mtime, and the vocab.json content (or the
Python version for the embedded corpus). Editing a file therefore changes the key and the data is
re-encoded; stale entries are left for the user to delete. meta.json is written last and marks an
entry as complete.

A byte-order mark at the start of a file (vocab.json included) is skipped with a one-line
warning naming the file, so it never becomes a vocabulary character. Every split must be long
enough for the run (:mod:`scmm.datasets.checks`); a short one is a ``DataError`` naming the split
and its file, found before a longer split is encoded.

Large folders (WikiText-103: ~540M characters) are processed in chunks of
:data:`~scmm.datasets.storage.DEFAULT_CHUNK_CHARS` characters: pass 1 counts characters and
collects the code points seen (a boolean mask over all of Unicode); pass 2 encodes each chunk into
a preallocated .npy memmap. Peak memory is a few chunks, independent of file size.
"""

import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..io import atomic_memmap, atomic_save_npy, atomic_write_text
from . import corpus
from .checks import check_split_length, check_split_lengths, minimum_chars
from .settings import DataSettings
from .storage import (
    DEFAULT_CHUNK_CHARS,
    UTF8_BOM,
    DataError,
    file_fingerprint,
    read_text_chunks,
    resolve_cache_dir,
    stable_hash,
    warn_if_bom,
)
from .vocab import VOCAB_FILENAME, Vocab, text_codepoints

SPLITS = ("train", "valid", "test")
SPLIT_FILES = {split: f"{split}.txt" for split in SPLITS}

# Bump when the cache layout or encoding rules change, so old entries are not reused.
# 2: a leading byte-order mark is skipped (version 1 encoded it as a character).
CACHE_FORMAT_VERSION = 2

_UNICODE_SIZE = 0x110000
_META_FILENAME = "meta.json"


@dataclasses.dataclass
class Dataset:
    """A character corpus as id arrays."""

    vocab: Vocab
    splits: dict[str, np.ndarray]
    """"train", "valid", "test" -> ids, shape (n_chars,), dtype vocab.dtype (maybe a read-only
    memmap)."""
    description: str
    """Where the text came from (the folder path, or the embedded corpus' description)."""
    sources: dict[str, str]
    """"train", "valid", "test" -> where that split's text came from (its file), for messages."""
    from_cache: bool = False
    """True when the id arrays were memory-mapped from an existing cache entry."""


def count_and_collect(path: Path, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> tuple[int, np.ndarray]:
    """(number of characters, sorted distinct code points) of a UTF-8 file, read in chunks."""
    seen = np.zeros(_UNICODE_SIZE, dtype=bool)  # 1.1 MB: cheaper than sorting every chunk
    n_chars = 0
    for chunk in read_text_chunks(path, chunk_chars):
        seen[text_codepoints(chunk)] = True
        n_chars += len(chunk)
    return n_chars, np.flatnonzero(seen).astype(np.uint32)


def encode_file(
    path: Path,
    vocab: Vocab,
    out_path: Path,
    split: str,
    n_chars: Optional[int] = None,
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
) -> None:
    """Encode the UTF-8 file `path` into the .npy file `out_path` (atomically), chunk by chunk.

    `n_chars` (if known from a previous pass) avoids a counting pass.
    """
    if n_chars is None:
        n_chars = sum(len(chunk) for chunk in read_text_chunks(path, chunk_chars))
    with atomic_memmap(out_path, vocab.dtype, n_chars) as out:  # (n_chars,)
        offset = 0
        for chunk in read_text_chunks(path, chunk_chars):
            if offset + len(chunk) > n_chars:
                raise DataError(f"{str(path)!r} grew while being encoded; expected {n_chars} chars")
            out[offset : offset + len(chunk)] = vocab.encode(chunk, split=split, offset=offset)
            offset += len(chunk)
        if offset != n_chars:
            raise DataError(
                f"{str(path)!r} changed while being encoded: {offset} chars, expected {n_chars}"
            )


# Cache entries -----------------------------------------------------------------------------


def _read_cache(entry: Path) -> Optional[tuple[Vocab, dict[str, np.ndarray]]]:
    """The cached vocab and memory-mapped splits, or None if the entry is missing/incomplete."""
    meta_path = entry / _META_FILENAME
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        vocab = Vocab.load(entry / VOCAB_FILENAME)
        splits = {split: np.load(entry / f"{split}.npy", mmap_mode="r") for split in SPLITS}
        complete = all(
            ids.ndim == 1 and ids.dtype == vocab.dtype and len(ids) == meta["lengths"][split]
            for split, ids in splits.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        # Damaged entry (e.g. a file deleted or edited by hand): rebuild rather than fail.
        return None
    return (vocab, splits) if complete else None


def _write_cache(entry: Path, vocab: Vocab, encode: Callable[[str, Path], int]) -> None:
    """Fill a cache entry; `encode(split, npy_path)` writes one split and returns its length."""
    entry.mkdir(parents=True, exist_ok=True)
    vocab.save(entry / VOCAB_FILENAME)
    lengths = {split: encode(split, entry / f"{split}.npy") for split in SPLITS}
    meta = {"format": CACHE_FORMAT_VERSION, "vocab_size": vocab.size, "lengths": lengths}
    atomic_write_text(entry / _META_FILENAME, json.dumps(meta, indent=1) + "\n")


# Sources -----------------------------------------------------------------------------------


def _check_folder(folder: Path) -> dict[str, Path]:
    expected = ", ".join(SPLIT_FILES.values())
    if not folder.is_dir():
        raise FileNotFoundError(
            f"data folder {str(folder)!r} does not exist (or is not a folder); expected a folder"
            f" holding {expected} (and optionally {VOCAB_FILENAME})"
        )
    paths = {split: folder / name for split, name in SPLIT_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data folder {str(folder)!r} lacks {', '.join(missing)}; expected {expected}"
        )
    return paths


def _check_small_files(paths: dict[str, Path], settings: DataSettings) -> None:
    """Fail on a too-short split before any file is encoded (an empty valid.txt beside the
    540M characters of WikiText-103's train.txt is found in milliseconds, not minutes).

    A UTF-8 character is at least one byte, so a file of at least ``need`` bytes past a
    possible byte-order mark may be long enough; only smaller files are counted here (cheaply:
    they are small). Files with multi-byte characters are checked exactly after loading.
    """
    for split, path in paths.items():
        need, _ = minimum_chars(split, settings)
        if path.stat().st_size < need + len(UTF8_BOM):
            n_chars = sum(len(chunk) for chunk in read_text_chunks(path))
            check_split_length(split, str(path), n_chars, settings)


def _load_folder(
    folder: Path, cache_dir: Path, chunk_chars: int, settings: DataSettings
) -> Dataset:
    paths = _check_folder(folder)
    sources = {split: str(path) for split, path in paths.items()}
    vocab_path = folder / VOCAB_FILENAME
    given_vocab = Vocab.load(vocab_path) if vocab_path.is_file() else None
    key = stable_hash(
        {
            "format": CACHE_FORMAT_VERSION,
            "folder": str(folder.resolve()),
            "files": {split: file_fingerprint(path) for split, path in paths.items()},
            "vocab": list(given_vocab.chars) if given_vocab else None,
        }
    )
    entry = cache_dir / f"folder-{key[:24]}"
    cached = _read_cache(entry)
    if cached is not None:
        return Dataset(cached[0], cached[1], str(folder), sources, from_cache=True)

    _check_small_files(paths, settings)
    # Warned once, when the files are read; a cached load does not read them again.
    for path in (*paths.values(), vocab_path):
        if path.is_file():
            warn_if_bom(path)
    counts: dict[str, int] = {}
    if given_vocab is None:
        seen: list[np.ndarray] = []
        for split, path in paths.items():
            counts[split], codepoints = count_and_collect(path, chunk_chars)
            seen.append(codepoints)
        vocab = Vocab.from_codepoints(np.concatenate(seen))
    else:
        vocab = given_vocab

    def encode(split: str, npy_path: Path) -> int:
        encode_file(paths[split], vocab, npy_path, split, counts.get(split), chunk_chars)
        return int(np.load(npy_path, mmap_mode="r").shape[0])

    _write_cache(entry, vocab, encode)
    return _finish(entry, str(folder), sources)


def _load_embedded(cache_dir: Path) -> Dataset:
    entry = cache_dir / f"embedded-{stable_hash(corpus.corpus_fingerprint())[:24]}"
    description = corpus.corpus_description()
    sources = {split: f"{description}, {split} files" for split in SPLITS}
    cached = _read_cache(entry)
    if cached is not None:
        return Dataset(cached[0], cached[1], description, sources, from_cache=True)
    texts = corpus.embedded_corpus()
    vocab = Vocab.from_texts(texts.values())

    def encode(split: str, npy_path: Path) -> int:
        atomic_save_npy(npy_path, vocab.encode(texts[split], split=split))
        return len(texts[split])

    _write_cache(entry, vocab, encode)
    return _finish(entry, description, sources)


def _finish(entry: Path, description: str, sources: dict[str, str]) -> Dataset:
    # Reload through the cache so a fresh and a cached load return the same (memmap) arrays.
    cached = _read_cache(entry)
    if cached is None:
        raise DataError(f"cache entry {str(entry)!r} is unreadable right after writing it")
    return Dataset(cached[0], cached[1], description, sources, from_cache=False)


def load_dataset(settings: DataSettings, *, chunk_chars: int = DEFAULT_CHUNK_CHARS) -> Dataset:
    """Load (and cache) the corpus `settings` names; see the module docstring.

    Raises DataError when a split is too short for `settings` (``scmm.datasets.checks``), also
    for a cached corpus: the cache does not depend on the sequence length, the check does.
    """
    settings.validate()
    cache_dir = resolve_cache_dir(settings.cache_dir)
    if settings.path is None:
        dataset = _load_embedded(cache_dir)
    else:
        dataset = _load_folder(Path(settings.path).expanduser(), cache_dir, chunk_chars, settings)
    lengths = {split: len(ids) for split, ids in dataset.splits.items()}
    check_split_lengths(lengths, dataset.sources, settings)
    return dataset
