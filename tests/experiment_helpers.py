"""Shared helpers for the experiment-runner tests: subprocess runs, logs, data, WandB files."""

import collections
import json
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "run_experiment.py"

# Every subprocess run is bounded: a hang fails the test instead of stalling the suite.
RUN_TIMEOUT = 300.0

# Quiet, network-free, home-free settings for every subprocess.
_DROPPED_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_BASE_URL", "SCMM_CACHE")


def run_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment for ``run_experiment.py``: our cache, no WandB credentials or mode."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        SCMM_CACHE=str(cache_dir),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        WANDB_SILENT="true",
    )
    env.update(extra)
    return env


def wandb_env(cache_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """``run_env`` plus a private HOME/WandB config so no credentials or files leak in or out."""
    home.mkdir(parents=True, exist_ok=True)
    return run_env(
        cache_dir,
        HOME=str(home),
        WANDB_CONFIG_DIR=str(home / "wandb-config"),
        WANDB_CACHE_DIR=str(home / "wandb-cache"),
        WANDB_DATA_DIR=str(home / "wandb-data"),
        **extra,
    )


def start_run(args: Sequence[str], env: dict[str, str]) -> "subprocess.Popen[str]":
    """Start ``python run_experiment.py ARGS`` in the repository root."""
    return subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, SCRIPT, *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_run(
    process: "subprocess.Popen[str]", timeout: float = RUN_TIMEOUT
) -> "subprocess.CompletedProcess[str]":
    """Wait for a started run (killing it on timeout) and collect its output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"run {process.args!r} did not finish in {timeout} s\nstdout:\n{stdout}\n"
            f"stderr:\n{stderr}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run(args: Sequence[str], env: dict[str, str]) -> "subprocess.CompletedProcess[str]":
    """Run ``python run_experiment.py ARGS`` to completion."""
    return finish_run(start_run(args, env))


def describe(result: "subprocess.CompletedProcess[str]") -> str:
    """Exit code and output tails, for assertion messages."""
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n"
        f"--- stderr\n{result.stderr[-6000:]}"
    )


def read_log(out_dir: Path) -> list[dict[str, Any]]:
    """Every line of ``log.jsonl`` parsed strictly (NaN/Infinity are not JSON)."""

    def reject(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant} in log.jsonl")

    lines = (out_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line, parse_constant=reject) for line in lines]


def read_summary(out_dir: Path) -> dict[str, Any]:
    """``summary.json``."""
    data = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def train_losses(records: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """step -> (mean loss of the call, loss of its last step) for every train_step record."""
    return {r["step"]: (r["loss"], r["loss_last"]) for r in records if r["kind"] == "train_step"}


def is_finite_number(value: Any) -> bool:
    """A real, finite int/float (not bool, not a "nan" string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Data ---------------------------------------------------------------------------------------

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "her sister", "the small bird"]
_SUBJECTS += ["our teacher", "a child"]
_VERBS = ["sees", "likes", "finds", "watches", "follows", "calls", "helps", "meets"]
_OBJECTS = ["the red ball", "a green tree", "the river", "his house", "the yellow car"]
_OBJECTS += ["a quiet garden", "the market", "a long road"]
_ENDINGS = [" today", " again", " every morning", " in the rain", "", " at night"]


def grammar_text(n_chars: int, seed: int) -> str:
    """Deterministic sentences from a tiny grammar: very learnable, ~0.3 bits/char of entropy."""
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < n_chars:
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(_ENDINGS) + "."
        sentence += "\n" if rng.random() < 0.2 else " "
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)[:n_chars]


def write_grammar_folder(
    folder: Path, train_chars: int = 200_000, eval_chars: int = 8_000, vocab: Optional[str] = None
) -> dict[str, str]:
    """A data folder with train/valid/test.txt (and vocab.json if ``vocab`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = {
        "train": grammar_text(train_chars, seed=1),
        "valid": grammar_text(eval_chars, seed=2),
        "test": grammar_text(eval_chars, seed=3),
    }
    for split, text in texts.items():
        (folder / f"{split}.txt").write_text(text, encoding="utf-8", newline="")
    if vocab is not None:
        (folder / "vocab.json").write_text(json.dumps({"chars": list(vocab)}), encoding="utf-8")
    return texts


def unigram_entropy_bits(text: str) -> float:
    """Entropy of the character frequencies of ``text``, in bits per character."""
    counts = collections.Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


# WandB --------------------------------------------------------------------------------------

_WANDB_BLOCK = 32 * 1024
_WANDB_HEADER = 7  # b":W&B", magic 0xBEE1 (2 bytes), version (1 byte)
_WANDB_RECORD_HEADER = 7  # crc32 (4), length (2), type (1): LevelDB-log framing


def read_wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``run-*.wandb`` file (the LevelDB-log format WandB writes)."""
    from wandb.proto import wandb_internal_pb2  # pylint: disable=import-error

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a WandB transaction log"
    records = []
    position, pending = _WANDB_HEADER, b""
    while position + _WANDB_RECORD_HEADER <= len(data):
        left_in_block = _WANDB_BLOCK - position % _WANDB_BLOCK
        if left_in_block < _WANDB_RECORD_HEADER:
            position += left_in_block  # block trailer padding
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding at the end of a block
            position += left_in_block
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end it
            record = getattr(wandb_internal_pb2, "Record")()  # generated: no static attribute
            record.ParseFromString(pending)
            records.append(record)
    return records
