"""Character vocabulary: a fixed, ordered tuple of characters; an id is an index into it.

Encoding is vectorised: text -> UTF-32 code points (one numpy view, no per-character Python
loop) -> a dense code-point lookup table. The table spans 0..max code point of the vocab, so it is
at most ~4.4 MB (uint32 entries up to U+10FFFF) and usually tiny for mostly-ASCII vocabularies.

File format of ``vocab.json`` (written by :meth:`Vocab.save`)::

    {"chars": ["\\n", " ", "!", ...]}

i.e. a JSON object whose ``"chars"`` member lists the characters in id order. :meth:`Vocab.load`
also accepts a bare JSON list of characters.
"""

import collections
import json
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np

from ..io import PathLike, atomic_write_text
from .storage import DataError

VOCAB_FILENAME = "vocab.json"

# Marks "not in vocab" in the lookup table; ids are always < 2**32 - 1 so it cannot collide.
_MISSING = np.uint32(0xFFFFFFFF)


def _char_description(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X})"


def smallest_id_dtype(size: int) -> np.dtype:
    """Smallest unsigned integer dtype that can hold ids 0..size-1."""
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def text_codepoints(text: str) -> np.ndarray:
    """Code points of `text` as a read-only uint32 array, shape (len(text),), without copying."""
    try:
        data = text.encode("utf-32-le")
    except UnicodeEncodeError as exc:
        # Only lone surrogates (e.g. from errors="surrogateescape") get here.
        raise DataError(
            f"text contains a lone surrogate {_char_description(text[exc.start])} at"
            f" character offset {exc.start}; expected well-formed Unicode text"
        ) from exc
    return np.frombuffer(data, dtype="<u4")


class Vocab:
    """An ordered set of single characters; ``chars[i]`` has id ``i``."""

    def __init__(self, chars: Sequence[str]):
        chars = tuple(chars)
        for index, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1:
                raise DataError(
                    f"vocab entry {index} is {char!r}; expected a single character (str of len 1)"
                )
        if len(set(chars)) != len(chars):
            duplicates = sorted(c for c, n in collections.Counter(chars).items() if n > 1)
            raise DataError(
                f"vocab has duplicate characters {[_char_description(c) for c in duplicates]};"
                " expected each character once"
            )
        if not chars:
            raise DataError("vocab is empty; expected at least one character")
        self.chars: tuple[str, ...] = chars
        self.size: int = len(chars)
        self.dtype: np.dtype = smallest_id_dtype(self.size)
        # shape (size,): code point of each id, used by decode()
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
        # shape (max_codepoint + 2,): id of each code point or _MISSING. The extra trailing
        # _MISSING entry lets encode() clip out-of-range code points onto it (no branch needed).
        self._table = np.full(int(self._codepoints.max()) + 2, _MISSING, dtype=np.uint32)
        self._table[self._codepoints] = np.arange(self.size, dtype=np.uint32)

    # Construction -------------------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "Vocab":
        """Vocab of the sorted (by code point) set of characters in `texts`."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        return cls(sorted(chars))

    @classmethod
    def from_codepoints(cls, codepoints: np.ndarray) -> "Vocab":
        """Vocab from an array of distinct code points (sorted here)."""
        return cls([chr(int(c)) for c in np.unique(codepoints)])

    @classmethod
    def load(cls, path: PathLike) -> "Vocab":
        """Read a vocab.json file (or the vocab.json inside folder `path`)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"vocab file {str(path)!r} does not exist")
        try:
            # utf-8-sig: a byte-order mark is the file's encoding signature, not JSON text.
            data: Any = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"vocab file {str(path)!r} is not valid UTF-8 JSON: {exc}") from exc
        if isinstance(data, dict):
            data = data.get("chars")
        if not isinstance(data, list):
            raise DataError(
                f"vocab file {str(path)!r} must hold a JSON list of characters or"
                f' {{"chars": [...]}}; got {type(data).__name__}'
            )
        try:
            return cls(data)
        except DataError as exc:
            raise DataError(f"vocab file {str(path)!r}: {exc}") from exc

    def save(self, path: PathLike) -> Path:
        """Write ``{"chars": [...]}`` atomically to `path` (a file, or a folder -> vocab.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILENAME
        # ensure_ascii keeps the file pure ASCII, so it survives any editor/locale unchanged.
        atomic_write_text(path, json.dumps({"chars": list(self.chars)}, indent=0) + "\n")
        return path

    # Encoding -----------------------------------------------------------------------------

    def encode(self, text: str, split: str = "?", offset: int = 0) -> np.ndarray:
        """Ids of `text`, shape (len(text),), dtype self.dtype.

        `split` and `offset` (the character offset of `text` within its split, for chunked
        encoding) only serve the error message for a character that is not in the vocab.
        """
        codepoints = text_codepoints(text)  # (n,) uint32
        # Anything above the largest vocab code point lands on the trailing _MISSING entry.
        ids = self._table[np.minimum(codepoints, self._table.size - 1)]  # (n,) uint32
        missing = ids == _MISSING
        if missing.any():
            position = int(np.argmax(missing))
            raise DataError(
                f"character {_char_description(text[position])} in split {split!r} at character"
                f" offset {offset + position} is not in the vocabulary ({self.size} characters);"
                " expected only characters from the vocab (rebuild or extend vocab.json)"
            )
        return ids.astype(self.dtype)

    def decode(self, ids: Union[np.ndarray, Sequence[int]]) -> str:
        """Text of a 1-D sequence of ids."""
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise DataError(f"decode expects a 1-D id array, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise DataError(
                f"ids must be in [0, {self.size}), got range [{ids.min()}, {ids.max()}]"
            )
        return self._codepoints[ids.astype(np.int64)].astype("<u4").tobytes().decode("utf-32-le")

    # Value semantics ----------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        preview = "".join(self.chars[:40]).encode("unicode_escape").decode("ascii")
        return f"Vocab(size={self.size}, dtype={self.dtype}, chars='{preview}...')"
