"""``python -m scmm.sample RUN_DIR``: text from a trained run's checkpoint.

Everything the command is given (options, run folder, settings, checkpoint path, prompt
characters) is checked before TensorFlow loads: bad input is one ``error:`` line and exit 2.
The text (prompt, then its continuation) goes to stdout, one sample after another with a line
``---`` between them; nothing else is printed there, so it can be piped.
"""

import argparse
import sys
import zipfile
from typing import NoReturn, Optional, Sequence

import numpy as np

from ..exit_codes import EXIT_OK, EXIT_USAGE
from ..experiments import checkpoints
from .choice import Decoding
from .run_files import CHECKPOINTS, encode_prompt, read_run

SAMPLE_SEPARATOR = "---"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is our one ``error:`` line and exit 2 (without the usage
    block, so the message is the last line a script sees)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--help`` lists it)."""
    parser = _Parser(
        prog="python -m scmm.sample",
        description="Generate text from a run's checkpoint (a folder run_experiment.py wrote).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (--out of the run)")
    parser.add_argument(
        "--checkpoint", default="last", choices=CHECKPOINTS, help="which checkpoint (last)"
    )
    parser.add_argument(
        "--prompt",
        default="",
        metavar="TEXT",
        help="text to continue (default: none, start from nothing)",
    )
    parser.add_argument(
        "--length", type=int, metavar="N", default=200, help="characters to generate (200)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        default=1.0,
        help="logit divisor; 0 = greedy (1.0)",
    )
    parser.add_argument(
        "--top-k", type=int, metavar="K", default=None, help="sample among the K likeliest (all)"
    )
    parser.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (0)")
    parser.add_argument(
        "--samples", type=int, metavar="N", default=1, help="independent samples (1)"
    )
    return parser


def _check_counts(options: argparse.Namespace) -> None:
    if options.length < 0:
        raise ValueError(f"--length must be >= 0, got {options.length}")
    if options.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {options.samples}")
    if not 0 <= options.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2^63), got {options.seed}")


def read_weights(path: str) -> dict[str, np.ndarray]:
    """The model arrays of a checkpoint; ValueError naming the file if it cannot be read."""
    try:
        weights, _, _ = checkpoints.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path!r} cannot be read ({type(error).__name__}: {error});"
            " expected an .npz written by run_experiment.py"
        ) from error
    return weights


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse and check (bad input: exit 2), load the model, generate, print; the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = build_parser().parse_args(argv)
        decoding = Decoding(options.temperature, options.top_k)
        decoding.validate()
        _check_counts(options)
        run = read_run(options.run_dir, options.checkpoint)
        prompt = encode_prompt(options.prompt, run.vocab)
        weights = read_weights(run.checkpoint)
        # TensorFlow loads only now, after every check that needs no model passed.
        from .generator import Generator

        generator = Generator(run, weights)  # ValueError: the weights do not fit the model
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    ids = generator.generate(prompt, options.length, decoding, options.seed, options.samples)
    texts = [options.prompt + run.vocab.decode(row) for row in ids]
    print(f"\n{SAMPLE_SEPARATOR}\n".join(texts))
    return EXIT_OK
