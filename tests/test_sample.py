"""``python -m scmm.sample``: the choice rule, generation against the model's own logits, the
run-folder checks and the command line end to end.

Runs are built directly (a model at its seeded initialisation, saved with the checkpoints
module beside a settings.json), not trained: what is tested is that sampling reproduces what
the model computes, which does not need a good model.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import model_settings
from experiment_helpers import REPO_ROOT, run_env, write_grammar_folder

from scmm.datasets import DataSettings, load_dataset
from scmm.exit_codes import EXIT_OK, EXIT_USAGE
from scmm.experiments import ExperimentSettings, checkpoints, to_dict
from scmm.io import write_json
from scmm.models import CharLM
from scmm.pedal import ExecutionSettings
from scmm.schemes import UnitScalingSettings
from scmm.sample import Decoding, choose, encode_prompt, read_run
from scmm.sample.cli import main
from scmm.sample.generator import Generator

SEQUENCE_LENGTH = 16
PROMPT = "The cat sees"

MakeRun = Callable[..., Path]


@pytest.fixture(name="make_run", scope="module")
def fixture_make_run(tmp_path_factory: pytest.TempPathFactory) -> MakeRun:
    """``make_run(kind, xla)``: a run folder with settings.json and checkpoints/last.npz."""
    root = tmp_path_factory.mktemp("sample")
    data_dir = root / "data"
    write_grammar_folder(data_dir, train_chars=3000, eval_chars=500)
    data = DataSettings(
        path=str(data_dir),
        sequence_length=SEQUENCE_LENGTH,
        overlap_length=4,
        cache_dir=str(root / "cache"),
    )
    vocab_size = load_dataset(data).vocab.size
    made: dict[tuple[str, bool], Path] = {}

    def make(kind: str = "attention", xla: bool = False) -> Path:
        if (kind, xla) in made:
            return made[kind, xla]
        out = root / f"run-{kind}-{'xla' if xla else 'graph'}"
        settings = ExperimentSettings(
            data=data,
            model=model_settings(kind, vocab_size=vocab_size, hidden_size=16, depth=1, seed=3),
            execution=ExecutionSettings(device="cpu", xla=xla),
            seed=5,
        )
        model = CharLM(settings.model)
        write_json(out / "settings.json", to_dict(settings))
        checkpoints.save(
            str(out / "checkpoints" / "last.npz"), model.get_weight_arrays(), {}, {"step": 0}
        )
        made[kind, xla] = out
        return out

    return make


def load_generator(run_dir: Path) -> Generator:
    run = read_run(str(run_dir))
    weights, _, _ = checkpoints.load(run.checkpoint)
    return Generator(run, weights)


def next_logits_reference(model: CharLM, context: np.ndarray) -> np.ndarray:
    """Logits of the character after ``context`` from one plain call on exactly that context
    (plus a slot for the prediction): no window, no padding, no compiled step."""
    tokens = np.append(context, 0).astype(np.int32)[None]
    return np.asarray(model.logits(tokens))[0, -1].astype(np.float64)


# The choice rule -------------------------------------------------------------------------


def test_top_k_one_and_temperature_zero_are_argmax_even_with_ties() -> None:
    logits = np.array([[0.0, 2.0, 2.0, 1.0], [5.0, -1.0, 5.0, 4.0]])
    rng = np.random.default_rng(0)
    expected = [1, 0]  # the first of the tied maxima, as argmax picks
    assert list(choose(logits, Decoding(temperature=0.0), rng)) == expected
    assert list(choose(logits, Decoding(temperature=3.0, top_k=1), rng)) == expected


def test_sampling_follows_the_tempered_top_k_distribution() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))[None].repeat(40_000, axis=0)
    cases: list[tuple[Decoding, np.ndarray]] = [
        (Decoding(temperature=1.0), np.array([0.5, 0.3, 0.15, 0.05])),
        (Decoding(temperature=1.0, top_k=2), np.array([0.625, 0.375, 0.0, 0.0])),
        # temperature 0.5 squares the probabilities before renormalising
        (Decoding(temperature=0.5), np.array([25, 9, 2.25, 0.25]) / 36.5),
    ]
    for decoding, expected in cases:
        picked = choose(logits, decoding, np.random.default_rng(1))
        frequencies = np.bincount(picked, minlength=4) / len(picked)
        np.testing.assert_allclose(frequencies, expected, atol=0.01)
    first = choose(logits[:50], Decoding(), np.random.default_rng(7))
    assert np.array_equal(first, choose(logits[:50], Decoding(), np.random.default_rng(7)))


# Generation against the model's own logits ---------------------------------------------------


@pytest.mark.parametrize("kind", ["attention", "conv", "rnn"])
def test_greedy_text_is_the_argmax_of_the_full_sequence_logits(
    make_run: MakeRun, kind: str
) -> None:
    generator = load_generator(make_run(kind))
    vocab = read_run(str(make_run(kind))).vocab
    prompt = encode_prompt("The", vocab)
    length = SEQUENCE_LENGTH - len(prompt)  # the whole generation fits one training window
    generated = generator.generate(prompt, length, Decoding(temperature=0.0))[0]
    # The model is causal, so one call on prompt + generated text gives, at each position,
    # the logits the generator saw when it chose that character.
    full = np.concatenate([prompt, generated]).astype(np.int32)
    logits = np.asarray(generator.model.logits(full[None]))[0]
    assert list(generated) == list(np.argmax(logits[len(prompt) :], axis=-1))


def test_a_long_prompt_keeps_the_last_sequence_length_minus_one_characters(
    make_run: MakeRun,
) -> None:
    run_dir = make_run("attention")
    generator = load_generator(run_dir)
    vocab = read_run(str(run_dir)).vocab
    prompt = encode_prompt("A dog helps the red ball again. The cat sees", vocab)
    generated = generator.generate(prompt, 5, Decoding(temperature=0.0))[0]
    history = list(prompt)
    for chosen in generated:
        context = np.array(history[-(SEQUENCE_LENGTH - 1) :])
        assert chosen == np.argmax(next_logits_reference(generator.model, context))
        history.append(chosen)


def test_same_seed_same_text_different_seeds_differ_and_top_k_one_is_greedy(
    make_run: MakeRun,
) -> None:
    run_dir = make_run("attention")
    generator = load_generator(run_dir)
    prompt = encode_prompt(PROMPT, read_run(str(run_dir)).vocab)
    sampled = Decoding(temperature=1.0)
    first = generator.generate(prompt, 24, sampled, seed=1, samples=2)
    assert np.array_equal(first, generator.generate(prompt, 24, sampled, seed=1, samples=2))
    assert not np.array_equal(first, generator.generate(prompt, 24, sampled, seed=2, samples=2))
    assert not np.array_equal(first[0], first[1])  # samples of one call are independent
    greedy = generator.generate(prompt, 24, Decoding(temperature=0.0))
    top_1 = generator.generate(prompt, 24, Decoding(temperature=1.0, top_k=1), seed=9)
    assert np.array_equal(greedy, top_1)


# Run folders and the command line ------------------------------------------------------------


def test_an_unknown_prompt_character_is_exit_2_naming_it(
    make_run: MakeRun, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(make_run()), "--prompt", "The cat é"]) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --prompt character 'é' (U+00E9) at offset 8")
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize(
    "args, named",
    [
        (["--temperature", "-1"], "--temperature"),
        (["--top-k", "0"], "--top-k"),
        (["--length", "-3"], "--length"),
        (["--samples", "0"], "--samples"),
        (["--checkpoint", "first"], "'first'"),
        (["--checkpoint", "best"], "best.npz"),  # the run has only last.npz
        (["--bogus", "1"], "--bogus"),
    ],
)
def test_bad_options_and_a_missing_checkpoint_are_exit_2(
    make_run: MakeRun, capsys: pytest.CaptureFixture[str], args: list[str], named: str
) -> None:
    assert main([str(make_run()), *args]) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and named in error and len(error.splitlines()) == 1


def test_a_missing_run_folder_or_torn_checkpoint_is_exit_2(
    make_run: MakeRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nowhere")]) == EXIT_USAGE
    assert "nowhere" in capsys.readouterr().err
    torn = tmp_path / "torn"
    (torn / "checkpoints").mkdir(parents=True)
    (torn / "settings.json").write_bytes((make_run() / "settings.json").read_bytes())
    good = (make_run() / "checkpoints" / "last.npz").read_bytes()
    (torn / "checkpoints" / "last.npz").write_bytes(good[: len(good) // 2])
    assert main([str(torn)]) == EXIT_USAGE
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: checkpoint") and "last.npz" in error


def test_old_settings_are_migrated_and_a_stored_vocab_needs_no_data(
    make_run: MakeRun, tmp_path: Path
) -> None:
    run_dir = tmp_path / "old-run"
    tree = json.loads((make_run() / "settings.json").read_text(encoding="utf-8"))
    # The spelling of an older scmm for --model.scaling.type unit --model.scaling.calibrate false
    tree.update(unit_scale=True, calibrate_weight_gradients=False)
    del tree["model"]["scaling"]
    tree["model"]["residual"]["weighting"] = "mean"  # what unit scaling needs
    vocab = read_run(str(make_run())).vocab
    tree["data"]["path"] = str(tmp_path / "data-gone")  # the run's data folder was deleted
    write_json(run_dir / "settings.json", tree)
    vocab.save(run_dir)  # ... but the run folder holds the vocabulary
    (run_dir / "checkpoints").mkdir()
    os.link(make_run() / "checkpoints" / "last.npz", run_dir / "checkpoints" / "last.npz")
    run = read_run(str(run_dir))
    scaling = run.settings.model.scaling
    assert isinstance(scaling, UnitScalingSettings) and not scaling.calibrate
    assert run.vocab == vocab
    os.remove(run_dir / "vocab.json")
    with pytest.raises(FileNotFoundError, match="data-gone"):
        read_run(str(run_dir))


def test_the_command_line_prints_prompt_and_samples(make_run: MakeRun, tmp_path: Path) -> None:
    run_dir = make_run("attention", xla=True)  # the compiled path runs as a user runs it
    args = ["--prompt", PROMPT, "--length", "20", "--seed", "4", "--samples", "2"]
    args += ["--temperature", "0.8", "--top-k", "5"]
    result = subprocess.run(
        [sys.executable, "-m", "scmm.sample", str(run_dir), *args],
        cwd=REPO_ROOT,
        env=run_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == EXIT_OK, result.stderr
    texts = result.stdout.rstrip("\n").split("\n---\n")
    assert len(texts) == 2 and all(
        t.startswith(PROMPT) and len(t) == len(PROMPT) + 20 for t in texts
    )
    # The same generation in-process (graph mode, no XLA) gives the same characters.
    run = read_run(str(run_dir))
    run = dataclasses.replace(
        run, settings=dataclasses.replace(run.settings, execution=ExecutionSettings(xla=False))
    )
    weights, _, _ = checkpoints.load(run.checkpoint)
    ids = Generator(run, weights).generate(
        encode_prompt(PROMPT, run.vocab), 20, Decoding(0.8, 5), seed=4, samples=2
    )
    assert texts == [PROMPT + run.vocab.decode(row) for row in ids]
