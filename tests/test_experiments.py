"""The experiment runner end to end: run_experiment.py in subprocesses (outputs, exit codes,
unseen data, kill and resume, WandB offline and broken, divergence) and crash-safe writes.

Independent runs start together (module fixture ``runs``) so that their TensorFlow start-up and
XLA compilation overlap; each test then waits for its own run.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from experiment_helpers import (
    REPO_ROOT,
    describe,
    finish_run,
    is_finite_number,
    read_log,
    read_summary,
    read_wandb_records,
    run,
    run_env,
    start_run,
    train_losses,
    unigram_entropy_bits,
    wandb_env,
    write_grammar_folder,
)

from scmm.experiments import checkpoints, from_dict
from scmm.io import TEMP_PREFIX, atomic_open, read_jsonl, write_json, write_npz
from scmm.experiments.trackers import CompositeTracker, JsonlTracker, SafeTracker, repair_log

# Small and fast: XLA off where the compiled path is not what is being tested.
FAST = ["--preset", "smoke", "--execution.xla", "false", "--output.progress", "off"]


@pytest.fixture(name="cache_dir", scope="module")
def fixture_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One $SCMM_CACHE for every run of this module (the embedded corpus is built once)."""
    return tmp_path_factory.mktemp("scmm-cache")


@pytest.fixture(name="grammar_data", scope="module")
def fixture_grammar_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, learnable data folder without vocab.json."""
    folder = tmp_path_factory.mktemp("grammar-data")
    write_grammar_folder(folder)
    return folder


class RunPool:
    """Runs started together; ``result(name)`` waits for one."""

    def __init__(self) -> None:
        self.processes: dict[str, "subprocess.Popen[str]"] = {}
        self.results: dict[str, "subprocess.CompletedProcess[str]"] = {}
        self.outs: dict[str, Path] = {}
        self.extra: dict[str, Any] = {}

    def start(self, name: str, out: Path, args: list[str], env: dict[str, str]) -> None:
        """Start ``run_experiment.py ARGS --out OUT``."""
        self.outs[name] = out
        self.processes[name] = start_run([*args, "--out", str(out)], env)

    def result(self, name: str) -> tuple["subprocess.CompletedProcess[str]", Path]:
        """The finished run ``name`` and its output folder."""
        if name not in self.results:
            self.results[name] = finish_run(self.processes[name])
        return self.results[name], self.outs[name]

    def close(self) -> None:
        """Stop whatever is still running (only when a test failed before waiting)."""
        for name, process in self.processes.items():
            if name not in self.results:
                process.kill()  # no-op for a process that already ended
                self.results[name] = finish_run(process)


@pytest.fixture(name="runs", scope="module")
def fixture_runs(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, grammar_data: Path
) -> Iterator[RunPool]:
    root = tmp_path_factory.mktemp("runs")
    pool = RunPool()
    env = run_env(cache_dir)
    # 4. The smoke preset as a user runs it (embedded corpus, XLA on).
    pool.start(
        "smoke", root / "smoke", ["--preset", "smoke", "--output.wandb", "off", "--analyse"], env
    )
    # 5. A folder no run has seen (fresh text, no vocab.json, not in the cache).
    unseen = root / "unseen-data"
    pool.extra["unseen_texts"] = write_grammar_folder(unseen, train_chars=300_000)
    pool.start(
        "unseen",
        root / "unseen",
        [
            *FAST,
            "--execution.xla",
            "true",
            "--data.path",
            str(unseen),
            "--training.steps",
            "512",
            "--training.valid_interval",
            "256",
            "--seed",
            "1",
            "--output.wandb",
            "off",
        ],
        env,
    )
    # 7. WandB offline (private HOME: no credentials, nothing written outside the run).
    pool.start(
        "wandb_offline",
        root / "wandb-offline",
        [
            *FAST,
            "--data.path",
            str(grammar_data),
            "--training.steps",
            "32",
            "--training.valid_interval",
            "16",
            "--metadata.name",
            "offline-test",
            "--metadata.tags",
            "[alpha, beta]",
            "--model.hidden_size",
            "48",
            "--model.sequence.head_size",
            "24",
            "--output.wandb",
            "offline",
        ],
        wandb_env(cache_dir, root / "home-offline"),
    )
    # 8. WandB online without credentials (and an unreachable server): must not stop training.
    pool.start(
        "wandb_broken",
        root / "wandb-broken",
        [
            *FAST,
            "--data.path",
            str(grammar_data),
            "--training.steps",
            "16",
            "--training.valid_interval",
            "8",
            "--output.wandb",
            "online",
        ],
        wandb_env(
            cache_dir,
            root / "home-broken",
            WANDB_BASE_URL="http://127.0.0.1:9",
            WANDB_INIT_TIMEOUT="20",
        ),
    )
    # 9. Divergence: SGD with a learning rate of 1e8.
    pool.start(
        "diverge",
        root / "diverge",
        [
            *FAST,
            "--data.path",
            str(grammar_data),
            "--training.optimiser.type",
            "sgdm",
            "--training.optimiser.learning_rate",
            "1e8",
            "--training.iterations_per_loop",
            "2",
            "--training.valid_interval",
            "2",
            "--seed",
            "5",
            "--training.divergence_loss",  # the non-finite rule (explosions: test_training)
            "null",
            "--output.wandb",
            "off",
        ],
        env,
    )
    yield pool
    pool.close()


# 4. End to end ------------------------------------------------------------------------------


def test_smoke_run_end_to_end(runs: RunPool) -> None:
    result, out = runs.result("smoke")
    assert result.returncode == 0, describe(result)
    assert "finished at step 64" in result.stdout

    summary = read_summary(out)
    assert summary["status"] == "finished"
    assert summary["step"] == 64
    for key in ("valid_bpc", "train_bpc", "test_bpc", "tokens_per_second", "wall_seconds"):
        assert is_finite_number(summary[key]) and summary[key] > 0, (key, summary[key])
    assert isinstance(summary["parameters"], int) and summary["parameters"] > 1000
    # Better than uniform over the vocabulary after 64 steps.
    records = read_log(out)
    stats = next(r for r in records if r["kind"] == "stats")
    assert summary["valid_bpc"] < math.log2(stats["vocab_size"])
    assert summary["parameters"] == stats["parameters"]

    for record in records:
        assert isinstance(record["kind"], str) and isinstance(record["step"], int), record
    kinds = [r["kind"] for r in records]
    for kind in ("settings", "stats", "train_step", "eval_valid", "eval_train", "eval_test"):
        assert kind in kinds, kind
    assert kinds[:2] == ["settings", "stats"] and kinds[-1] == "summary"
    # --analyse: scale statistics at initialisation, as JSON records and a figure.
    assert [r["step"] for r in records if r["kind"] == "analysis"] == [0]
    scales = json.loads((out / "scales.json").read_text(encoding="utf-8"))
    assert {r["pass"] for r in scales} == {"forward", "backward", "weight_gradient"}
    assert {r["step"] for r in scales} == {0}
    for record in scales:
        assert {"name", "std", "rms", "abs_max", "zero_fraction"} <= set(record), record
    names = {r["name"] for r in scales if r["pass"] == "forward"}
    assert {"embedding", "head", "final_norm"} <= names
    assert (out / "scales.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(train_losses(records)) == [16, 32, 48, 64]
    valids = [r for r in records if r["kind"] == "eval_valid"]
    assert [r["step"] for r in valids] == [32, 64]
    assert summary["valid_bpc"] == valids[-1]["bpc"]
    assert summary["best_valid_loss"] == min(r["loss"] for r in valids)

    # settings.json is the whole resolved tree, and decodes strictly.
    stored = json.loads((out / "settings.json").read_text(encoding="utf-8"))
    settings = from_dict(stored)
    assert settings.preset == "smoke" and settings.output.wandb == "off"
    assert settings.seed is not None and settings.model.seed is not None
    assert settings.model.vocab_size == stats["vocab_size"]
    assert stored == records[0]["settings"]
    assert json.loads((out / "checkpoints" / "settings.json").read_text("utf-8")) == stored

    # Checkpoints: last at the final step, best at the lowest validation loss, finite weights.
    model, optimiser, state = checkpoints.load(str(out / "checkpoints" / "last.npz"))
    assert state["step"] == 64 and state["seed"] == settings.seed
    assert model and optimiser
    assert all(np.all(np.isfinite(a)) for a in model.values())
    _, _, best_state = checkpoints.load(str(out / "checkpoints" / "best.npz"))
    best_step = min(valids, key=lambda r: r["loss"])["step"]
    assert best_state["step"] == best_step
    assert not (out / "wandb").exists()
    assert not list(out.rglob(TEMP_PREFIX + "*"))


# 5. Unseen data folder ----------------------------------------------------------------------


def test_training_on_an_unseen_folder_learns(runs: RunPool, cache_dir: Path) -> None:
    result, out = runs.result("unseen")
    assert result.returncode == 0, describe(result)
    texts = runs.extra["unseen_texts"]
    summary = read_summary(out)
    entropy = unigram_entropy_bits(texts["valid"])
    assert entropy > 3.5  # sanity: the text is not trivial per character
    # The model learnt the sequence structure, not just character frequencies.
    assert summary["valid_bpc"] < 0.5 * entropy, (summary["valid_bpc"], entropy)
    assert summary["test_bpc"] < 0.5 * entropy
    stats = next(r for r in read_log(out) if r["kind"] == "stats")
    assert stats["vocab_size"] == len(set("".join(texts.values())))
    assert stats["train_chars"] == len(texts["train"])
    # The vocabulary went to the cache, never into the data folder.
    data_path = from_dict(json.loads((out / "settings.json").read_text())).data.path
    assert data_path is not None
    data_folder = Path(data_path)
    assert sorted(p.name for p in data_folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert list(cache_dir.glob("folder-*/vocab.json"))


# 7. WandB offline ---------------------------------------------------------------------------


def test_wandb_offline_run_is_written_in_the_run_folder(runs: RunPool) -> None:
    result, out = runs.result("wandb_offline")
    assert result.returncode == 0, describe(result)
    assert not [l for l in result.stderr.splitlines() if l.startswith("warning:")], result.stderr
    assert read_summary(out)["status"] == "finished"
    run_dirs = list((out / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1, list((out / "wandb").iterdir())
    run_dir = run_dirs[0]
    assert (run_dir / "files").is_dir()
    run_id = (out / "wandb_id.txt").read_text(encoding="utf-8").strip()
    wandb_file = run_dir / f"run-{run_id}.wandb"
    assert wandb_file.stat().st_size > 0

    records = read_wandb_records(wandb_file)
    by_type: dict[str, list[Any]] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)
    run_record = by_type["run"][0].run
    assert run_record.run_id == run_id
    assert run_record.display_name == "offline-test"
    assert list(run_record.tags) == ["alpha", "beta"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"]["hidden_size"] == 48
    assert config["model"]["sequence"] == {
        "type": "attention",
        "heads": 2,
        "head_size": 24,
        "frequencies": 16,
        "max_period": 64.0,
    }
    assert config["output"]["wandb"] == "offline"
    assert config["seed"] == json.loads((out / "settings.json").read_text())["seed"]

    # Metrics: every train_step / eval record of log.jsonl is in the history, by step.
    history: dict[int, dict[str, Any]] = {}
    for record in by_type["history"]:
        items = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        history.setdefault(items["_step"], {}).update(items)
    for entry in read_log(out):
        if entry["kind"] in ("train_step", "eval_valid", "eval_test"):
            logged = history[entry["step"]][f"{entry['kind']}/loss"]
            assert logged == pytest.approx(entry["loss"], rel=1e-12), entry
    summary_items = {}
    for record in by_type["summary"]:
        for item in record.summary.update:
            summary_items[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert summary_items["status"] == "finished"
    assert summary_items["valid_bpc"] == pytest.approx(read_summary(out)["valid_bpc"])
    assert by_type["exit"][0].exit.exit_code == 0


# Start-up quiet: TensorFlow's log lines and WandB deprecation warnings ------------------------

# An absl log line (I0000 00:00:1796171823.029026 23143 port.cc:153] ...) or its banner.
_TF_NOISE = re.compile(r"^[IWEF]\d{4} |absl::|oneDNN|\w+Warning: ")


def test_a_run_prints_no_tensorflow_start_up_lines(runs: RunPool) -> None:
    result, _ = runs.result("smoke")  # TF_CPP_MIN_LOG_LEVEL=2, as the entry points set it
    assert result.returncode == 0, describe(result)
    noise = [line for line in result.stderr.splitlines() if _TF_NOISE.search(line)]
    assert not noise, result.stderr
    assert "valid bpc" in result.stderr  # our own progress lines still get through


_CHECK_LOGIN = "from scmm.experiments.trackers import wandb_logged_in; print(wandb_logged_in())"


def test_wandb_credentials_check_is_silent_and_offline(tmp_path: Path, cache_dir: Path) -> None:
    home = tmp_path / "home"
    # An unreachable server: a check that went online would fail or hang, not pass.
    env = wandb_env(cache_dir, home, WANDB_BASE_URL="http://127.0.0.1:9")
    del env["WANDB_SILENT"]  # WandB's deprecation warnings are terminal output silent hides

    def logged_in() -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-c", _CHECK_LOGIN],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    result = logged_in()
    assert (result.returncode, result.stdout, result.stderr) == (0, "False\n", ""), describe(result)
    netrc = home / ".netrc"
    netrc.write_text(
        f"machine 127.0.0.1:9\n  login user\n  password {'a' * 40}\n", encoding="utf-8"
    )
    netrc.chmod(0o600)
    result = logged_in()
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", ""), describe(result)


# 8. WandB failure ---------------------------------------------------------------------------


def test_wandb_failure_never_stops_training(runs: RunPool) -> None:
    result, out = runs.result("wandb_broken")
    assert result.returncode == 0, describe(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "WandB (online)" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    summary = read_summary(out)
    assert summary["status"] == "finished" and summary["step"] == 16
    assert is_finite_number(summary["valid_bpc"])
    kinds = [r["kind"] for r in read_log(out)]
    assert kinds.count("eval_valid") == 2 and kinds[-1] == "summary"


class FailingSink:
    """Stands in for a WandB run whose network/backend breaks mid-training."""

    def __init__(self, fail_after: int) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if len(self.calls) > self.fail_after:
            raise ConnectionError("backend went away")

    def log(self, _record: dict[str, Any]) -> None:
        self._call("log")

    def summary(self, _summary: dict[str, Any]) -> None:
        self._call("summary")

    def finish(self, _status: str) -> None:
        self._call("finish")


def test_safe_tracker_drops_a_failing_tracker_and_jsonl_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = FailingSink(fail_after=2)
    log_path = tmp_path / "log.jsonl"
    tracker = CompositeTracker([JsonlTracker(str(log_path)), SafeTracker(sink, "WandB (test)")])
    for step in range(1, 6):
        tracker.log({"kind": "train_step", "step": step, "loss": 1.0 / step})
    tracker.summary({"status": "finished", "step": 5, "valid_bpc": float("nan")})
    tracker.finish("finished")
    assert sink.calls == ["log", "log", "log"]  # dropped after the first failure
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "ConnectionError" in err and "JSONL" in err
    records = read_jsonl(str(log_path))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 5]
    assert records[-1]["kind"] == "summary" and records[-1]["valid_bpc"] == "nan"
    assert all("time" in r for r in records[:5])


# 9. Divergence ------------------------------------------------------------------------------


def test_divergence_exits_3_and_keeps_the_last_finite_results(runs: RunPool) -> None:
    result, out = runs.result("diverge")
    assert result.returncode == 3, describe(result)
    assert "Traceback" not in result.stderr
    summary = read_summary(out)
    assert summary["status"] == "diverged"
    records = read_log(out)
    diverged = [r for r in records if r["kind"] == "diverged"]
    assert len(diverged) == 1
    step = diverged[0]["step"]
    assert step >= 2 and diverged[0]["tensor"] == "loss"
    assert summary["diverged"]["step"] == step
    assert summary["step"] == step - 1  # the last step whose loss was finite
    # Everything logged before the divergence is finite, and the summary keeps it.
    trained = train_losses(records)
    assert trained and max(trained) < step
    assert all(math.isfinite(loss) for pair in trained.values() for loss in pair)
    last_finite = summary["diverged"]["last_finite"] or summary["last_train"]
    assert is_finite_number(last_finite["loss"])
    assert summary["last_train"]["loss"] == trained[max(trained)][0]
    valids = [r for r in records if r["kind"] == "eval_valid"]
    assert valids and all(is_finite_number(r["bpc"]) for r in valids)
    assert summary["valid_bpc"] == valids[-1]["bpc"]
    # The last checkpoint is from before the divergence and holds finite weights.
    model, _, state = checkpoints.load(str(out / "checkpoints" / "last.npz"))
    assert state["step"] == valids[-1]["step"] < step
    assert all(np.all(np.isfinite(a)) for a in model.values())
    assert records[-1]["kind"] == "summary" and records[-1]["status"] == "diverged"


# 6. Kill and resume -------------------------------------------------------------------------


def _wait_for_checkpoint(
    process: "subprocess.Popen[str]", out: Path, min_step: int, timeout: float = 240.0
) -> None:
    """Poll until the run has logged a train step after a checkpoint at >= ``min_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        records = read_jsonl(str(out / "log.jsonl"))
        valid_steps = [r["step"] for r in records if r["kind"] == "eval_valid"]
        train_steps = [r["step"] for r in records if r["kind"] == "train_step"]
        path = out / "checkpoints" / "last.npz"
        if valid_steps and max(valid_steps) >= min_step and path.exists():
            if max(train_steps) > checkpoints.load(str(path))[2]["step"] >= min_step:
                return
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout} s")


@pytest.mark.slow  # ~30 s; the default suite resumes from kill states in test_run_integrity
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "data"
    # A larger validation split makes each validation take a while: room to kill mid-run.
    write_grammar_folder(data, train_chars=100_000, eval_chars=32_000)
    env = run_env(cache_dir)
    args = [
        *FAST,
        "--execution.xla",
        "true",
        "--data.path",
        str(data),
        "--training.steps",
        "256",
        "--training.valid_interval",
        "32",
        "--training.iterations_per_loop",
        "8",
        "--seed",
        "123",
        "--output.wandb",
        "off",
    ]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    victim = start_run([*args, "--out", str(killed)], env)
    uninterrupted = start_run([*args, "--out", str(reference)], env)
    try:
        _wait_for_checkpoint(victim, killed, min_step=64)
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        finish_run(victim)
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()
    checkpoint_step = checkpoints.load(str(killed / "checkpoints" / "last.npz"))[2]["step"]
    assert 64 <= checkpoint_step < 256
    # Usually steps after the checkpoint were logged before the kill; the resumed run redoes
    # them, and must not log them twice (checked below).
    before = train_losses(read_jsonl(str(killed / "log.jsonl")))
    assert max(before) >= checkpoint_step

    resumed = run(["--resume", str(killed), "--output.progress", "off"], env)
    assert resumed.returncode == 0, describe(resumed)
    reference_result = finish_run(uninterrupted)
    assert reference_result.returncode == 0, describe(reference_result)

    records = read_log(killed)
    steps = [r["step"] for r in records if r["kind"] == "train_step"]
    assert steps == sorted(set(steps)), "duplicated or out-of-order steps after resume"
    assert steps == list(range(8, 257, 8))
    valid_steps = [r["step"] for r in records if r["kind"] == "eval_valid"]
    assert valid_steps == list(range(32, 257, 32))
    resumes = [r for r in records if r["kind"] == "resume"]
    assert [r["step"] for r in resumes] == [checkpoint_step]
    assert [r["kind"] for r in records].count("summary") == 1

    # Bitwise the same training as the uninterrupted run, before and after the checkpoint.
    expected = train_losses(read_log(reference))
    got = train_losses(records)
    assert sorted(got) == sorted(expected)
    after = [s for s in expected if s > checkpoint_step]
    assert after and all(got[s] == expected[s] for s in after), [
        (s, got[s], expected[s]) for s in after if got[s] != expected[s]
    ]
    assert all(got[s] == expected[s] for s in expected)
    expected_valid = {
        r["step"]: r["loss"] for r in read_log(reference) if r["kind"] == "eval_valid"
    }
    assert {r["step"]: r["loss"] for r in records if r["kind"] == "eval_valid"} == expected_valid
    summary, expected_summary = read_summary(killed), read_summary(reference)
    assert summary["status"] == expected_summary["status"] == "finished"
    for key in ("valid_bpc", "test_bpc", "train_bpc", "best_valid_loss", "step"):
        assert summary[key] == expected_summary[key], key
    assert json.loads((killed / "settings.json").read_text()) == json.loads(
        (reference / "settings.json").read_text()
    )


# 10. Crash-safe writes ----------------------------------------------------------------------


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_atomic_open_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    with atomic_open(str(path)) as file:
        file.write("complete\n")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_open(str(path)) as file:
            file.write("half of a new vers")
            file.flush()
            assert len(_temp_files(tmp_path)) == 1  # the partial write goes elsewhere
            raise RuntimeError("crash mid-write")
    assert path.read_text(encoding="utf-8") == "complete\n"
    assert not _temp_files(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(str(path), "wb") as binary:
            binary.write(b"\0" * 10)
            raise KeyboardInterrupt
    assert path.read_text(encoding="utf-8") == "complete\n"
    assert not _temp_files(tmp_path)


def test_write_json_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(str(path), {"status": "finished", "valid_bpc": 1.5})
    with pytest.raises(TypeError):
        # json.dump streams: "status" is written before the set fails to serialise.
        write_json(str(path), {"status": "failed", "bad": {1, 2}})
    assert json.loads(path.read_text(encoding="utf-8")) == {"status": "finished", "valid_bpc": 1.5}
    assert not _temp_files(tmp_path)


class ExplodingArray:
    """An array-like that fails when numpy converts it (mid-way through np.savez)."""

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise MemoryError("out of memory while writing")


def test_checkpoint_save_failure_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.npz"
    weights = {"layer/kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}
    checkpoints.save(str(path), weights, {"m": np.ones(3)}, {"step": 10})
    big: dict[str, Any] = {"layer/kernel": np.zeros((1000, 1000), np.float32)}
    big["zz"] = ExplodingArray()  # written after the 4 MB kernel
    with pytest.raises(MemoryError):
        checkpoints.save(str(path), big, {}, {"step": 20})
    model, optimiser, state = checkpoints.load(str(path))
    assert state == {"step": 10}
    np.testing.assert_array_equal(model["layer/kernel"], weights["layer/kernel"])
    np.testing.assert_array_equal(optimiser["m"], np.ones(3))
    assert not _temp_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoints.load(str(tmp_path / "missing.npz"))
    assert checkpoints.latest(str(tmp_path)) is None  # looks in OUT/checkpoints/
    write_npz(os.path.join(checkpoints.checkpoint_dir(str(tmp_path)), "last.npz"), {})
    assert checkpoints.latest(str(tmp_path)) == str(tmp_path / "checkpoints" / "last.npz")


_WRITER = """
import sys
import numpy as np
from scmm.experiments import checkpoints
path = sys.argv[1]
for i in range(1, 10**6):
    weights = {"w": np.full(4_000_000, i, dtype=np.float32)}
    checkpoints.save(path, weights, {"m": np.full(1_000_000, -i, np.float32)}, {"step": i})
    print(i, flush=True)
"""


def test_sigkill_during_checkpoint_writes_leaves_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "last.npz"
    writer = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, "-c", _WRITER, str(path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        assert writer.stdout is not None
        completed = [int(writer.stdout.readline()) for _ in range(3)]
        time.sleep(0.05)  # well inside the next 20 MB write
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        completed += [int(line) for line in writer.stdout.read().split()]
    finally:
        writer.kill()
        writer.wait()
    assert completed[:3] == [1, 2, 3]
    model, optimiser, state = checkpoints.load(str(path))
    step = state["step"]
    # The last reported save, or the one after it if the kill came between save and print.
    assert completed[-1] <= step <= completed[-1] + 1
    assert model["w"].shape == (4_000_000,) and np.all(model["w"] == step)
    assert optimiser["m"].shape == (1_000_000,) and np.all(optimiser["m"] == -step)
    # A kill mid-write leaves at most the one temporary file it was writing, never the target.
    assert len(_temp_files(tmp_path)) <= 1


def test_read_jsonl_skips_a_torn_last_line_and_repair_log_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    lines = [
        {"kind": "settings", "step": 0},
        {"kind": "train_step", "step": 8, "loss": 2.0},
        {"kind": "eval_valid", "step": 8, "loss": 2.1},
        {"kind": "train_step", "step": 16, "loss": 1.5},
        {"kind": "summary", "step": 16},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(text + '{"kind": "train_st', encoding="utf-8")  # killed mid-line
    assert read_jsonl(str(path)) == lines
    repair = repair_log(str(path), None, 8)  # a checkpoint without a line count: by step
    assert read_jsonl(str(path)) == lines[:3]
    assert path.read_text(encoding="utf-8").endswith("\n")
    assert not _temp_files(tmp_path)
    # Nothing is lost: the two records after step 8 and the torn line are set aside.
    assert (repair.kept, repair.after_checkpoint, len(repair.unreadable)) == (3, 2, 1)
    archived = (tmp_path / "log.jsonl.dropped").read_text(encoding="utf-8").splitlines()
    assert archived[1:] == [json.dumps(lines[3]), json.dumps(lines[4]), '{"kind": "train_st']
