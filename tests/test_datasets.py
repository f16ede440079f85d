"""Tests for scmm.datasets: vocab, folder/embedded loading with caching, batching."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from scmm.datasets import (
    DataError,
    DataSettings,
    TrainBatchStream,
    Vocab,
    count_eval_batches,
    embedded_corpus,
    eval_batches,
    load_dataset,
)
from scmm.datasets import corpus as corpus_module
from scmm.datasets.loading import count_and_collect, encode_file
from scmm.io import TEMP_PREFIX

TEXTS = {
    "train": "Hello, world!\nThe quick brown fox. Ünïcödé ✓ 😀\r\n" * 20,
    "valid": "A fox; a world.\n",
    "test": "Quick hello 😀\n",
}


@pytest.fixture(name="cache_dir")
def fixture_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache; $SCMM_CACHE points there too so nothing reaches ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SCMM_CACHE", str(path))
    return path


def write_folder(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / f"{split}.txt").write_text(text, encoding="utf-8", newline="")
    return folder


# Vocab ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,dtype",
    [(1, np.uint8), (256, np.uint8), (257, np.uint16), (65536, np.uint16), (65537, np.uint32)],
)
def test_vocab_dtype_boundaries(size: int, dtype: type) -> None:
    # Skip the surrogate block, which str.encode("utf-32") cannot represent.
    codepoints = [c for c in range(size + 2048) if not 0xD800 <= c < 0xE000][:size]
    vocab = Vocab([chr(c) for c in codepoints])
    assert vocab.size == size
    assert vocab.dtype == np.dtype(dtype)
    text = "".join(chr(c) for c in codepoints[-3:])
    ids = vocab.encode(text)
    assert ids.dtype == np.dtype(dtype)
    assert ids.tolist() == [size - 3, size - 2, size - 1][-len(text) :]


def test_vocab_round_trip_and_sorted_from_texts() -> None:
    vocab = Vocab.from_texts(TEXTS.values())
    assert list(vocab.chars) == sorted(set("".join(TEXTS.values())))
    for text in TEXTS.values():
        ids = vocab.encode(text)
        assert ids.shape == (len(text),)
        assert vocab.decode(ids) == text
    assert vocab.decode(np.zeros(0, np.uint8)) == ""


def test_vocab_unknown_character_message() -> None:
    vocab = Vocab.from_texts(["abc"])
    with pytest.raises(DataError) as info:
        vocab.encode("abcaéb", split="valid", offset=100)
    message = str(info.value)
    assert "'é'" in message and "U+00E9" in message
    assert "'valid'" in message and "offset 104" in message
    with pytest.raises(DataError, match=r"U\+1F600"):
        vocab.encode("a😀")  # above the largest vocab code point


def test_vocab_invalid_chars_rejected() -> None:
    with pytest.raises(DataError, match="duplicate"):
        Vocab(["a", "b", "a"])
    with pytest.raises(DataError, match="single character"):
        Vocab(["a", "bc"])
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        Vocab(["a", "b"]).decode([0, 2])


def test_vocab_save_load(tmp_path: Path) -> None:
    vocab = Vocab(["z", "\n", "é", "😀"])  # unsorted order is preserved
    path = vocab.save(tmp_path)
    assert path == tmp_path / "vocab.json"
    assert json.loads(path.read_text(encoding="utf-8")) == {"chars": ["z", "\n", "é", "😀"]}
    assert Vocab.load(path) == vocab
    (tmp_path / "list.json").write_text(json.dumps(["x", "y"]), encoding="utf-8")
    assert Vocab.load(tmp_path / "list.json").chars == ("x", "y")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


# Chunked encoding -------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 10_000])
def test_chunked_encoding_matches_one_shot(tmp_path: Path, chunk_chars: int) -> None:
    text = TEXTS["train"]
    path = tmp_path / "train.txt"
    path.write_text(text, encoding="utf-8", newline="")
    n_chars, codepoints = count_and_collect(path, chunk_chars)
    assert n_chars == len(text)
    vocab = Vocab.from_codepoints(codepoints)
    assert vocab == Vocab.from_texts([text])
    encode_file(path, vocab, tmp_path / "ids.npy", "train", chunk_chars=chunk_chars)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), vocab.encode(text))


def test_chunked_encoding_reports_global_offset(tmp_path: Path) -> None:
    path = tmp_path / "valid.txt"
    path.write_text("ab" * 50 + "é", encoding="utf-8")
    with pytest.raises(DataError, match="'valid' at character offset 100"):
        encode_file(path, Vocab(["a", "b"]), tmp_path / "ids.npy", "valid", chunk_chars=8)
    assert not (tmp_path / "ids.npy").exists()
    assert not list(tmp_path.glob(TEMP_PREFIX + "*"))


# Folder loading and caching --------------------------------------------------------------


def test_folder_load_without_vocab(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_folder(tmp_path / "data", TEXTS)
    data = load_dataset(DataSettings(path=str(folder)))
    assert not data.from_cache
    assert data.description == str(folder)
    assert data.vocab == Vocab.from_texts(TEXTS.values())
    for split, text in TEXTS.items():
        assert data.vocab.decode(data.splits[split]) == text
    # Derived vocab goes to the cache, never into the user's folder.
    assert not (folder / "vocab.json").exists()
    assert len(list(cache_dir.glob("*/vocab.json"))) == 1


def test_folder_load_with_vocab(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_folder(tmp_path / "data", TEXTS)
    chars = sorted(set("".join(TEXTS.values())) | set("XYZ"), reverse=True)
    Vocab(chars).save(folder)
    data = load_dataset(DataSettings(path=str(folder), cache_dir=str(cache_dir)))
    assert data.vocab.chars == tuple(chars)
    assert data.vocab.decode(data.splits["test"]) == TEXTS["test"]
    assert data.splits["test"][0] == chars.index("Q")


def test_folder_vocab_missing_character(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_folder(tmp_path / "data", TEXTS)
    Vocab(sorted(set(TEXTS["train"]))).save(folder)
    with pytest.raises(DataError) as info:
        load_dataset(DataSettings(path=str(folder), cache_dir=str(cache_dir)))
    # "A" is the first character of valid.txt and does not occur in train.txt.
    assert "'A' (U+0041)" in str(info.value) and "'valid'" in str(info.value)
    assert "offset 0" in str(info.value)


def test_missing_folder_and_file(tmp_path: Path, cache_dir: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope.*train.txt, valid.txt, test.txt"):
        load_dataset(DataSettings(path=str(missing), cache_dir=str(cache_dir)))
    folder = write_folder(tmp_path / "data", {"train": "ab", "valid": "ab"})
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_dataset(DataSettings(path=str(folder), cache_dir=str(cache_dir)))


def test_cache_reuse_and_invalidation(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_folder(tmp_path / "data", TEXTS)
    settings = DataSettings(path=str(folder), cache_dir=str(cache_dir))
    first = load_dataset(settings)
    (npy,) = cache_dir.glob("*/train.npy")
    mtime = npy.stat().st_mtime_ns
    second = load_dataset(settings)
    assert second.from_cache and not first.from_cache
    assert isinstance(second.splits["train"], np.memmap)
    assert npy.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.splits["valid"], first.splits["valid"])

    # An edit (new size and mtime) must not be served from the old entry.
    (folder / "valid.txt").write_text("Zebra!\n", encoding="utf-8")
    third = load_dataset(settings)
    assert not third.from_cache
    assert third.vocab.decode(third.splits["valid"]) == "Zebra!\n"
    assert "Z" in third.vocab.chars
    assert len(list(cache_dir.glob("*/meta.json"))) == 2


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_folder(tmp_path / "data", TEXTS)
    settings = DataSettings(path=str(folder), cache_dir=str(cache_dir))
    load_dataset(settings)
    (npy,) = cache_dir.glob("*/test.npy")
    npy.unlink()
    data = load_dataset(settings)
    assert not data.from_cache
    assert data.vocab.decode(data.splits["test"]) == TEXTS["test"]


# Embedded corpus --------------------------------------------------------------------------


def test_embedded_corpus_deterministic_and_sane() -> None:
    first = embedded_corpus()
    second = embedded_corpus()
    assert first == second
    assert set(first) == {"train", "valid", "test"}
    sizes = {split: len(text.encode("utf-8")) for split, text in first.items()}
    assert 1_000_000 <= sum(sizes.values()) <= 4_000_000
    assert all(size > 10_000 for size in sizes.values())
    assert sizes["train"] > 5 * (sizes["valid"] + sizes["test"])
    assert 60 <= len(set("".join(first.values()))) <= 200
    # Docstrings only: the corpus is prose, not the code of e.g. os.py.
    assert "def " not in first["train"][:2000]


def test_embedded_corpus_skips_tests_and_respects_split_rule(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    (root / "pkg" / "tests").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text('"""Package doc."""\n', encoding="utf-8")
    (root / "pkg" / "tests" / "test_x.py").write_text('"""Test doc."""\n', encoding="utf-8")
    (root / "bad.py").write_text("def (:\n", encoding="utf-8")
    (root / "mod.py").write_text(
        '"""Module.\n\n    Indented."""\nclass A:\n    """Class A."""\n'
        '    def f(self):\n        """Method f."""\n',
        encoding="utf-8",
    )
    texts = embedded_corpus(root)
    everything = "".join(texts.values())
    assert "Test doc" not in everything
    # Source order, cleandoc'd, blank-line separated.
    assert (
        "Module.\n\nIndented.\n\nClass A.\n\nMethod f." in texts[corpus_module.split_of("mod.py")]
    )
    assert "Package doc." in texts[corpus_module.split_of("pkg/__init__.py")]


def test_embedded_load_uses_cache(cache_dir: Path) -> None:
    first = load_dataset(DataSettings(cache_dir=str(cache_dir)))
    second = load_dataset(DataSettings(cache_dir=str(cache_dir)))
    assert not first.from_cache and second.from_cache
    assert "stdlib" in second.description
    assert second.vocab == first.vocab and second.vocab.dtype == np.uint8
    for split in ("train", "valid", "test"):
        assert len(second.splits[split]) > 0
        np.testing.assert_array_equal(second.splits[split], first.splits[split])
    # Too short for the run: the error names the split of the embedded corpus (the cache
    # holds every length, so the check runs on every load).
    too_long = DataSettings(cache_dir=str(cache_dir), sequence_length=10**8, overlap_length=0)
    with pytest.raises(DataError, match=r"^train split \(embedded stdlib-docstring corpus"):
        load_dataset(too_long)


# Batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,sequences,length,overlap",
    [
        (1, 1, 8, 0),
        (5, 3, 8, 2),  # shorter than one window
        (8, 2, 8, 3),  # exactly one window
        (13, 2, 8, 3),  # exactly two windows (8 + 5)
        (28, 5, 8, 3),  # exact multiple of the stride after the first window
        (100, 4, 10, 0),
        (101, 3, 16, 15),  # stride 1
        (1000, 7, 32, 8),
    ],
)
def test_eval_batches_predict_each_character_once(
    n: int, sequences: int, length: int, overlap: int
) -> None:
    ids = np.arange(n, dtype=np.uint32) % 251 + 1  # nonzero, so padding (0) is recognisable
    positions = np.arange(n)
    counts = np.zeros(n, dtype=int)
    batches = list(eval_batches(ids, sequences, length, overlap))
    assert len(batches) == count_eval_batches(n, sequences, length, overlap)
    window = 0
    for batch in batches:
        assert batch["tokens"].shape == batch["mask"].shape == (sequences, length)
        assert batch["tokens"].dtype == np.int32 and batch["mask"].dtype == np.bool_
        for row in range(sequences):
            start = window * (length - overlap)
            span = positions[start : start + length]
            tokens, mask = batch["tokens"][row], batch["mask"][row]
            # A window is padding once it would predict nothing new (start + overlap >= n).
            real = min(len(span), length) if window == 0 or start + overlap < n else 0
            span = span[:real]
            np.testing.assert_array_equal(tokens[:real], ids[span])
            assert not tokens[real:].any() and not mask[real:].any()  # padding
            if window > 0 and real > 0:
                assert not mask[:overlap].any()  # context positions are masked
            counts[span[mask[:real]]] += 1
            window += 1
    np.testing.assert_array_equal(counts, np.ones(n, dtype=int))
    # The first window has no earlier context, so all of its positions count.
    assert batches[0]["mask"][0, : min(n, length)].all()


def test_count_eval_batches_edge_cases() -> None:
    assert count_eval_batches(0, 4, 8, 2) == 0
    assert count_eval_batches(8, 1, 8, 2) == 1
    assert count_eval_batches(9, 1, 8, 2) == 2
    assert count_eval_batches(14, 1, 8, 2) == 2
    assert count_eval_batches(15, 2, 8, 2) == 2
    with pytest.raises(DataError, match="overlap_length"):
        count_eval_batches(10, 1, 8, 8)


def test_train_stream_shapes_mask_and_content() -> None:
    ids = np.arange(1000, dtype=np.uint16)
    stream = TrainBatchStream(ids, sequences=4, sequence_length=16, overlap_length=5, seed=1)
    batch = stream.next(3)
    assert batch["tokens"].shape == batch["mask"].shape == (3, 4, 16)
    assert batch["tokens"].dtype == np.int32 and batch["mask"].dtype == np.bool_
    assert not batch["mask"][..., :5].any() and batch["mask"][..., 5:].all()
    # Windows are contiguous slices of the split.
    np.testing.assert_array_equal(np.diff(batch["tokens"], axis=-1), 1)
    assert stream.next()["tokens"].shape == (1, 4, 16)


def test_train_stream_seeding_and_resume() -> None:
    ids = np.arange(5000, dtype=np.uint32)

    def stream(seed: int) -> TrainBatchStream:
        return TrainBatchStream(ids, sequences=3, sequence_length=8, overlap_length=2, seed=seed)

    a, b, c = stream(7), stream(7), stream(8)
    batch_a, batch_b = a.next(5), b.next(5)
    np.testing.assert_array_equal(batch_a["tokens"], batch_b["tokens"])
    assert not np.array_equal(batch_a["tokens"], c.next(5)["tokens"])

    state = json.loads(json.dumps(a.state()))  # must survive JSON (checkpoints)
    expected = [a.next(2)["tokens"] for _ in range(3)]
    resumed = stream(12345)
    resumed.set_state(state)
    for tokens in expected:
        np.testing.assert_array_equal(resumed.next(2)["tokens"], tokens)


def test_train_stream_covers_all_starts() -> None:
    ids = np.arange(20, dtype=np.uint8)
    stream = TrainBatchStream(ids, sequences=50, sequence_length=16, overlap_length=0, seed=0)
    starts = stream.next(20)["tokens"][..., 0]
    assert set(starts.ravel().tolist()) == set(range(5))  # starts 0..n-L, both ends reachable


def test_train_stream_errors() -> None:
    with pytest.raises(DataError, match="at least sequence_length \\+ 1 = 9"):
        TrainBatchStream(np.arange(8), sequences=1, sequence_length=8, overlap_length=0, seed=0)
    with pytest.raises(DataError, match="sequences"):
        TrainBatchStream(np.arange(80), sequences=0, sequence_length=8, overlap_length=0, seed=0)
    with pytest.raises(DataError, match="1-D"):
        TrainBatchStream(np.zeros((9, 9)), 1, 8, 0, 0)
    stream = TrainBatchStream(np.arange(80), 1, 8, 0, 0)
    with pytest.raises(DataError, match="count"):
        stream.next(0)
    with pytest.raises(DataError, match="PCG64"):
        stream.set_state({"bit_generator": "MT19937"})


def test_settings_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overlap_length"):
        load_dataset(DataSettings(overlap_length=300, cache_dir=str(tmp_path)))
    assert not os.listdir(tmp_path)


# Bad data found when it loads ------------------------------------------------------------


@pytest.mark.parametrize(
    "split,text,need",
    [
        ("valid", "", "need at least 1 "),
        ("test", "", "need at least 1 "),
        # 300 bytes but 100 characters: the exact count after encoding catches it.
        ("train", "✓" * 100, "need at least 257 (data.sequence_length + 1"),
        ("train", "x" * 256, "need at least 257 (data.sequence_length + 1"),
    ],
    ids=["empty-valid", "empty-test", "multibyte-train", "train-one-short"],
)
def test_short_split_names_the_split_and_its_file(
    tmp_path: Path, cache_dir: Path, split: str, text: str, need: str
) -> None:
    """A split too short for the run is an error on load naming the split, its file, its length
    and the minimum, however the cache stands (a second load hits the cache when the first
    got as far as encoding)."""
    folder = write_folder(tmp_path / "data", {**TEXTS, split: text})
    for _ in range(2):
        with pytest.raises(DataError) as info:
            load_dataset(DataSettings(path=str(folder)))
        message = str(info.value)
        assert message.startswith(f"{split} split ({folder / f'{split}.txt'}) has {len(text)} ")
        assert need in message
    if text == "":  # found from the file size, before anything was encoded
        assert not list(cache_dir.glob("*/meta.json"))


@pytest.mark.usefixtures("cache_dir")
def test_one_character_evaluation_split_is_enough(tmp_path: Path) -> None:
    """The true minimum of valid/test is 1 character: evaluation predicts it."""
    folder = write_folder(tmp_path / "data", {**TEXTS, "valid": "A"})
    data = load_dataset(DataSettings(path=str(folder)))
    (batch,) = eval_batches(data.splits["valid"], 4, 256, 32)
    assert int(batch["mask"].sum()) == 1


@pytest.mark.usefixtures("cache_dir")
def test_byte_order_mark_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A leading UTF-8 BOM (in a split or vocab.json) is not text: it never becomes a
    vocabulary character; each file that has one is named once on stderr."""
    folder = write_folder(tmp_path / "data", TEXTS)
    (folder / "train.txt").write_bytes(b"\xef\xbb\xbf" + TEXTS["train"].encode("utf-8"))
    data = load_dataset(DataSettings(path=str(folder)))
    assert "\ufeff" not in data.vocab.chars
    assert data.vocab == Vocab.from_texts(TEXTS.values())
    assert data.vocab.decode(data.splits["train"]) == TEXTS["train"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ")
    assert str(folder / "train.txt") in lines[0] and "byte-order mark" in lines[0]

    vocab = sorted(set("".join(TEXTS.values())))
    json_text = json.dumps({"chars": vocab})
    (folder / "vocab.json").write_bytes(b"\xef\xbb\xbf" + json_text.encode("utf-8"))
    given = load_dataset(DataSettings(path=str(folder)))
    assert given.vocab.chars == tuple(vocab)
    assert str(folder / "vocab.json") in capsys.readouterr().err
