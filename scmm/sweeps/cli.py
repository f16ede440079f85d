"""``run_sweep.py``: parse, expand and validate (all before any trial starts), then run."""

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..exit_codes import EXIT_BUSY, EXIT_USAGE
from ..experiments.overrides import parse_value, split_overrides
from ..experiments.settings import SettingsError, check_data_folder, from_dict
from ..folder_lock import FolderBusyError
from .definition import Configuration, SweepDefinition, expand, load_definition

if TYPE_CHECKING:
    from .runner import Executor

DESCRIPTION = """\
Run a sweep of experiments: a sweep preset or YAML/JSON sweep file, expanded into
configurations (cartesian product of its axes minus its filters), each with an optional
learning-rate search and repeats. Trials run as separate processes; DIR/sweep.jsonl records
their states, so re-running the same command resumes. Results: DIR/results.csv, DIR/table.md,
DIR/lr_sweep.png. Any --SECTION.FIELD VALUE (or --FIELD VALUE for a top-level field such as
--seed) applies to every trial, e.g. --data.path DIR; the same dialect as run_experiment.py.
"""


def build_parser() -> argparse.ArgumentParser:
    """The sweep's own options (settings overrides are split off before parsing)."""
    from . import presets  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="run_sweep.py", description=DESCRIPTION)
    parser.add_argument(
        "sweep", help=f"sweep preset ({', '.join(sorted(presets.SWEEPS))}) or sweep file"
    )
    parser.add_argument("--dry-run", action="store_true", help="list every trial; run nothing")
    parser.add_argument("--out", help="sweep folder (default: out/sweeps/<name>)")
    parser.add_argument("--workers", type=int, default=0, help="parallel trials (default: cores)")
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads per trial (default: cores / workers)"
    )
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument(
        "--gpus-per-trial",
        type=float,
        default=-1.0,
        help="Ray GPUs per trial (default: 1 when the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="re-runs of a crashed trial (default 1)"
    )
    return parser


def describe(definition: SweepDefinition, configurations: Sequence[Configuration]) -> str:
    """The dry-run listing: every configuration, its LR search and the trial counts."""
    lines = [f"sweep {definition.name}: {definition.description}".rstrip(": ")]
    most = 0
    first = 0
    for number, config in enumerate(configurations, 1):
        search = config.lr_search
        if search is None:
            rate = config.settings["training"]["optimiser"]["learning_rate"]
            plan = f"lr 2^{math.log2(rate):.2f}"
            most += definition.repeats
            first += definition.repeats
        elif search.mode == "grid":
            last = search.start * search.factor ** (search.max_points - 1)
            plan = (
                f"LR grid 2^{math.log2(search.start):.2f} .. 2^{math.log2(last):.2f}"
                f" x{search.factor:g} ({search.max_points} points)"
            )
            most += definition.repeats * search.max_points
            first += definition.repeats * search.max_points
        else:
            plan = (
                f"LR search from 2^{math.log2(search.start):.2f} x{search.factor:g},"
                f" stop at best+{search.threshold:g}, <= {search.max_points} points"
            )
            most += definition.repeats * search.max_points
            first += definition.repeats
        training = config.settings["training"]
        lines.append(
            f"{number:3d}. {config.key}: {plan}, {definition.repeats} repeat(s),"
            f" {training['steps']} steps, dtype {config.settings['model']['dtype']},"
            f" loss scale {training['loss_scale']:g}"
        )
    if first == most:  # grids and fixed rates only: the count is exact
        lines.append(f"{len(configurations)} configurations; {most} trials")
    else:
        start = "trials at the first LR point (every point of a grid)"
        if all(c.lr_search is None or c.lr_search.mode == "search" for c in configurations):
            start = "trials at the first LR point"
        lines.append(
            f"{len(configurations)} configurations; {first} {start}, at most {most} in all"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of run_sweep.py."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        own, pairs = split_overrides(argv)
        args = build_parser().parse_args(own)
        definition = load_definition(args.sweep)
        extra = {path: parse_value(raw) for path, raw in pairs}
        configurations = expand(definition, extra)
        workers, threads = _parallelism(args.workers, args.threads)
        if args.retries < 0:
            raise SettingsError(f"--retries must be >= 0, got {args.retries}")
        if args.dry_run:
            print(describe(definition, configurations))
            for problem in missing_data(configurations):
                print(f"note: {problem}; a run would stop there", file=sys.stderr)
            return 0
        check_data(configurations)
        from .runner import Sweep, SweepOptions  # pylint: disable=import-outside-toplevel

        out_dir = args.out or os.path.join("out", "sweeps", definition.name)
        sweep = Sweep(
            definition,
            configurations,
            SweepOptions(out_dir=out_dir, threads=threads, retries=args.retries),
            extra,
        )
        executor = _executor(args, workers, threads)
    except (SettingsError, FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        # One line per problem (expansion reports every invalid configuration at once).
        for line in str(message).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    print(f"sweep {definition.name}: {len(configurations)} configurations -> {out_dir}")
    try:
        code = sweep.run(executor)
    except FolderBusyError as error:
        print(f"error: {error} (another run_sweep.py is driving this sweep)", file=sys.stderr)
        return EXIT_BUSY
    print(f"results: {os.path.join(out_dir, 'table.md')}")
    return code


def missing_data(configurations: Sequence[Configuration]) -> list[str]:
    """What is wrong with the data folders the configurations name (a cheap look, no load)."""
    problems: list[str] = []
    for path in dict.fromkeys(c.settings["data"]["path"] for c in configurations):
        if path is None:
            continue
        try:
            check_data_folder(path)
        except FileNotFoundError as error:
            problems.append(str(error))
    return problems


def check_data(configurations: Sequence[Configuration]) -> None:
    """Load each distinct data setting once, as ``run_experiment.py`` does before computing
    (a missing file or a character outside vocab.json is bad input); cached, so the trials'
    own loads are instant."""
    from .. import datasets  # pylint: disable=import-outside-toplevel

    seen: list[Any] = []
    for config in configurations:
        data = config.settings["data"]
        if data in seen:
            continue
        seen.append(data)
        try:
            datasets.load_dataset(from_dict(config.settings).data)
        except (ValueError, FileNotFoundError) as error:
            raise SettingsError(f"configuration {config.key}: {error}") from None


def _parallelism(workers: int, threads: int) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    if workers < 0 or threads < 0:
        raise SettingsError(f"--workers/--threads must be >= 0, got {workers}/{threads}")
    workers = workers or max(1, cores // max(1, threads))
    threads = threads or max(1, cores // workers)
    return workers, threads


def _executor(args: argparse.Namespace, workers: int, threads: int) -> "Executor":
    from . import executors  # pylint: disable=import-outside-toplevel

    if args.executor == "ray":
        return executors.RayExecutor(args.ray_address, threads, args.gpus_per_trial)
    return executors.LocalExecutor(workers)
