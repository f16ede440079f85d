"""``python -m scmm.coord_check``: is the model's parametrisation width-stable?

Trains the model at each ``--widths`` for ``--steps`` optimiser steps (``--seeds`` models per
width), records every sublayer output's RMS and the RMS of its change since init, fits the
slope of log2 RMS against log2 width per layer and step, and writes ``coord_check.json`` and
``coord_check.png`` to ``--out``. Settings come as in ``run_experiment.py``: ``--preset``,
``--config FILE`` and ``--SECTION.FIELD VALUE`` overrides (the width replaces
``model.hidden_size`` and, for attention, ``model.sequence.head_size``).

Exit status: 0 every layer's |slope| <= ``--tolerance`` at every step >= ``--from-step``;
1 a flagged parametrisation (the worst layers are named); 2 bad input, one ``error:`` line
before TensorFlow loads and before anything is computed.
"""

import argparse
import os
import sys
import time
from typing import NoReturn, Optional, Sequence

from .. import datasets
from ..exit_codes import EXIT_OK, EXIT_USAGE
from ..experiments.help_text import settings_help
from ..experiments.overrides import base_tree, merge, overrides_to_tree, parse_value
from ..experiments.overrides import split_overrides
from ..experiments.presets import DEFAULT_PRESET
from ..experiments.resume import default_out_dir
from ..experiments.settings import from_dict, to_dict
from ..quiet_import import import_tensorflow_quietly
from .plan import (
    DEFAULT_FROM_STEP,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    DEFAULT_TOLERANCE,
    DEFAULT_WIDTHS,
    Plan,
    make_plan,
)

EXIT_FLAGGED = 1
"""Some layer's output scale moves with width: the parametrisation is not width-stable."""
JSON_NAME, PNG_NAME = "coord_check.json", "coord_check.png"

SETTINGS_NOTE = """\
Settings (any field by dotted path, as in run_experiment.py, e.g. --model.depth 2
--model.scaling.type regular --training.optimiser.learning_rate 0.01; the width replaces
model.hidden_size and, for attention, head_size = width / model.sequence.heads):
"""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are our one ``error:`` line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    """The tool's own options (settings overrides are taken out before this parser runs)."""
    parser = _Parser(
        prog="python -m scmm.coord_check",
        add_help=False,
        allow_abbrev=False,
        description="Coordinate check: train at several widths for a few steps and test that"
        " every layer's output RMS is flat in width.",
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs="*",
        default=list(DEFAULT_WIDTHS),
        metavar="W",
        help=f"model widths (hidden sizes); default {' '.join(map(str, DEFAULT_WIDTHS))}",
    )
    parser.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, metavar="N", help="models per width (3)"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, metavar="T", help="optimiser steps (3)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="X",
        help="largest |slope| of log2 RMS on log2 width that passes (0.15)",
    )
    parser.add_argument(
        "--from-step",
        type=int,
        default=DEFAULT_FROM_STEP,
        metavar="T",
        help="first step the verdict checks (1: under u-muP the readout's logits at init are"
        " deliberately fan_in^-1/2, slope -0.5, until its Adam updates outgrow that init)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (out/<time>-coord_check)")
    parser.add_argument("--preset", metavar="NAME", help=f"settings preset ({DEFAULT_PRESET})")
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON settings file")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    return parser


def parse(argv: Sequence[str]) -> Optional[tuple[Plan, str]]:
    """The checked plan and output folder; None when --help was printed. ValueError (and
    its SettingsError / DataError kinds) or FileNotFoundError on bad input."""
    own, pairs = split_overrides(argv)
    parser = build_parser()
    options = parser.parse_args(own)
    preset = options.preset or DEFAULT_PRESET
    if options.help:
        print(parser.format_help() + "\n" + SETTINGS_NOTE)
        print(settings_help(base_tree(preset, options.config), preset))
        return None
    tree = merge(
        base_tree(preset, options.config),
        overrides_to_tree((path, parse_value(raw)) for path, raw in pairs),
    )
    plan = make_plan(
        from_dict(tree),
        options.widths,
        seeds=options.seeds,
        steps=options.steps,
        tolerance=options.tolerance,
        from_step=options.from_step,
    )
    out = options.out or default_out_dir("coord_check")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} exists and is not a folder")
    return plan, out


def run(plan: Plan, dataset: datasets.Dataset, out: str) -> int:
    """Measure, print the slope table, write the JSON and PNG; the exit status."""
    import_tensorflow_quietly()  # TensorFlow loads only now, after every input check
    # pylint: disable=import-outside-toplevel
    from ..analysis.coordinates import judge, plot_check, slope_table, summarise
    from ..analysis.coordinates import verdict_line, write_check_json
    from .measure import measure

    start = time.perf_counter()
    times: dict[str, float] = {}
    runs = measure(plan, dataset, progress=lambda line: print(line, file=sys.stderr), times=times)
    check = summarise(runs)
    verdict = judge(check, plan.tolerance, plan.from_step)
    extra = {
        "settings": to_dict(plan.settings),
        "scaled": plan.scaled_fields(),
        "model_seeds": list(plan.model_seeds),
        "seconds": {"total": time.perf_counter() - start, "per_model": times},
    }
    os.makedirs(out, exist_ok=True)
    write_check_json(os.path.join(out, JSON_NAME), check, verdict, extra)
    title = plan.settings.metadata.name or (
        f"{plan.settings.model.sequence.kind}, {plan.settings.model.scaling.kind},"
        f" {plan.settings.training.optimiser.kind}"
        f" lr {plan.settings.training.optimiser.learning_rate:g}"
    )
    plot_check(check, verdict, os.path.join(out, PNG_NAME), title=title)
    print(slope_table(check, verdict))
    print(f"wrote {os.path.join(out, JSON_NAME)} and {os.path.join(out, PNG_NAME)}")
    if not verdict.passed:
        print(f"error: {verdict_line(verdict)}", file=sys.stderr)
    return EXIT_OK if verdict.passed else EXIT_FLAGGED


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse and check everything (bad input: one ``error:`` line, exit 2), then ``run``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parsed = parse(argv)
        if parsed is None:
            return EXIT_OK
        plan, out = parsed
        # The data loads (and is checked) before TensorFlow: a bad corpus is bad input too.
        dataset = datasets.load_dataset(plan.settings.data)
        plan = plan.with_vocab_size(dataset.vocab.size)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return run(plan, dataset, out)
