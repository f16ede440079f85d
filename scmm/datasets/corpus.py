"""The embedded corpus: English docstrings of the Python standard library.

Every Python install ships this text, so tests, examples and smoke runs need no download. It is
collected with :mod:`ast` from the stdlib's source files, never by importing them (importing
``antigravity`` opens a browser, ``this`` prints, others touch the platform).

Determinism: files are visited in sorted relative-path order and docstrings in source order, so
one Python version gives the same bytes on every machine (the stdlib sources are identical).

Split rule: each *file* goes wholly to one split, chosen by the SHA-256 of its relative POSIX
path: first digest byte mod 20 == 0 -> "valid", == 1 -> "test", else "train" (~90/5/5 by file
count). Splitting by file rather than by a contiguous cut keeps every split a mix of modules
(a contiguous tail would be all ``xml``/``zipfile``/``zoneinfo``) and keeps a docstring from
straddling two splits.
"""

import ast
import hashlib
import inspect
import sys
import sysconfig
from pathlib import Path
from typing import Iterator, Optional, Union

SPLITS = ("train", "valid", "test")

# Bump when the extraction or split rule changes, so cached id arrays are rebuilt.
CORPUS_FORMAT_VERSION = 1

# Folder names skipped anywhere in the tree: third-party code, test suites (huge, full of
# deliberately odd strings), GUI/demo code, and the deprecated 2to3 machinery with its test data.
_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "ensurepip",
        "pydoc_data",
        "__pycache__",
        "__phello__",
    }
)

_DocNode = Union[ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef]


def stdlib_dir() -> Path:
    """Folder of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_description() -> str:
    """Human-readable identity of the corpus, e.g. for Dataset.description."""
    version = ".".join(map(str, sys.version_info[:3]))
    return f"embedded stdlib-docstring corpus (Python {version}, {stdlib_dir()})"


def corpus_fingerprint() -> dict[str, object]:
    """What the corpus bytes depend on; used as the cache key without parsing any source."""
    return {
        "corpus": "stdlib-docstrings",
        "format": CORPUS_FORMAT_VERSION,
        "python": sys.version,
        "stdlib": str(stdlib_dir().resolve()),
    }


def source_files(root: Optional[Path] = None) -> list[Path]:
    """Sorted .py files under `root` (default: the stdlib) outside the skipped folders."""
    root = stdlib_dir() if root is None else root
    if not root.is_dir():
        raise FileNotFoundError(f"standard library folder {str(root)!r} does not exist")
    files = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        parts = relative.parts[:-1]
        # "config-3.11-x86_64-linux-gnu" and the like hold build scripts, not library docs.
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in parts):
            continue
        files.append(relative)
    return [root / relative for relative in sorted(files, key=lambda p: p.as_posix())]


def split_of(relative_path: str) -> str:
    """Split a file belongs to, from a stable hash of its relative POSIX path."""
    bucket = hashlib.sha256(relative_path.encode("utf-8")).digest()[0] % 20
    return "valid" if bucket == 0 else "test" if bucket == 1 else "train"


def _doc_nodes(node: ast.AST) -> Iterator[_DocNode]:
    """Module/class/function nodes in source order (depth first), unlike BFS ast.walk."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _doc_nodes(child)


def file_docstrings(path: Path) -> list[str]:
    """Cleaned (inspect.cleandoc) non-empty docstrings of one source file, in source order."""
    try:
        # Bytes, so ast honours the file's own coding cookie instead of the locale.
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        # A few stdlib files are deliberately unparsable samples; skipping them is deterministic.
        return []
    docs = []
    for node in _doc_nodes(tree):
        doc = ast.get_docstring(node, clean=False)
        if doc:
            doc = inspect.cleandoc(doc)
            if doc:
                docs.append(doc)
    return docs


def embedded_corpus(root: Optional[Path] = None) -> dict[str, str]:
    """{"train", "valid", "test"} -> text: stdlib docstrings joined with blank lines.

    `root` overrides the stdlib folder (tests); the default is the running interpreter's.
    """
    root = stdlib_dir() if root is None else root
    docs: dict[str, list[str]] = {split: [] for split in SPLITS}
    for path in source_files(root):
        docs[split_of(path.relative_to(root).as_posix())].extend(file_docstrings(path))
    return {split: "\n\n".join(parts) for split, parts in docs.items()}


def _main() -> None:
    """Print corpus statistics: ``python -m scmm.datasets.corpus``."""
    corpus = embedded_corpus()
    chars = set("".join(corpus.values()))
    total = sum(len(text) for text in corpus.values())
    print(corpus_description())
    for split, text in corpus.items():
        print(f"  {split:5s} {len(text):>10,d} chars {len(text.encode('utf-8')):>10,d} bytes")
    print(f"  total {total:>10,d} chars, {len(chars)} distinct")
    print("  non-ASCII:", "".join(sorted(c for c in chars if ord(c) > 127)))


if __name__ == "__main__":
    _main()
