"""A sweep folder's outputs, from its index: ``results.csv``, ``table.md``, ``lr_sweep.png``,
``loss_curves.png`` and, for a definition with a ``transfer_axis``, ``transfer.md`` and
``transfer.png``.

The driver writes them whenever it stops (``Sweep.write_results``); ``python -m
scmm.sweeps.report DIR`` writes them again from the folder alone (its ``sweep.json`` holds the
definition, ``sweep.jsonl`` every trial), e.g. after the report code changed, or on a copy of
a finished sweep. Neither starts TensorFlow.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from ..exit_codes import EXIT_BUSY, EXIT_OK, EXIT_USAGE
from ..folder_lock import FolderBusyError, FolderLock
from ..io import atomic_write_text
from . import results as results_module
from . import transfer
from .definition import SweepDefinition, axis_labels, definition_from_dict
from .index import SweepIndex, TrialRecord


def write_outputs(
    out_dir: str,
    definition: SweepDefinition,
    records: Sequence[TrialRecord],
    failed_configs: Sequence[str] = (),
    invalid_configs: Optional[dict[str, str]] = None,
) -> list[str]:
    """Every output file of the sweep in ``out_dir`` (module docstring); the paths written.

    ``failed_configs`` (stopped after repeated crashes) and ``invalid_configs`` (config ->
    its configuration error) are noted under table.md.
    """
    written = [os.path.join(out_dir, "results.csv")]
    results_module.write_csv(written[0], records)
    summary = results_module.summarise(records)
    if not summary:
        return written
    axes = list(definition.axes)
    rows = definition.table_rows or axes[:1]
    columns = [a for a in axes if a not in rows]
    table = results_module.table_markdown(summary, rows, columns, definition.name)
    if failed_configs:
        table += "\nStopped after repeated crashes: " + ", ".join(sorted(failed_configs))
        table += "\n"
    for config, error in sorted((invalid_configs or {}).items()):
        table += f"\nStopped by a configuration error: {config}: {error}\n"
    paths = [os.path.join(out_dir, name) for name in ("table.md", "lr_sweep.png")]
    atomic_write_text(paths[0], table)
    results_module.plot_lr_sweep(paths[1], records, rows)
    paths.append(os.path.join(out_dir, "loss_curves.png"))
    results_module.plot_loss_curves(paths[-1], records, summary, definition.name)
    written += paths
    if definition.transfer_axis:
        transfer.write_transfer(
            out_dir, summary, definition.transfer_axis, axis_labels(definition), definition.name
        )
        written += [os.path.join(out_dir, transfer.MARKDOWN_NAME)]
        written += [os.path.join(out_dir, transfer.FIGURE_NAME)]
    return written


def rewrite_folder(out_dir: str) -> list[str]:
    """``write_outputs`` from a sweep folder's own ``sweep.json`` and ``sweep.jsonl``.

    Trials whose recorded folder is not found from here (a sweep started with a relative
    ``--out`` in another directory) are read from ``out_dir/trials/<trial>``, where the driver
    put them. Configurations with a failed trial, or a configuration error, are noted as the
    driver notes them. Raises FileNotFoundError for a folder without a sweep.
    """
    description_path = os.path.join(out_dir, "sweep.json")
    if not os.path.isfile(description_path):
        raise FileNotFoundError(f"{out_dir!r} holds no sweep ({description_path} is missing)")
    with open(description_path, encoding="utf-8") as file:
        description = json.load(file)
    definition = definition_from_dict(description["definition"], description_path)
    records = list(SweepIndex(os.path.join(out_dir, "sweep.jsonl")))
    for record in records:
        if not os.path.isdir(record.out_dir):
            here = os.path.join(out_dir, "trials", record.trial)
            if os.path.isdir(here):
                record.out_dir = here
    failed = sorted({r.config for r in records if r.state == "failed"})
    invalid = {r.config: r.error for r in records if r.state == "invalid"}
    return write_outputs(out_dir, definition, records, failed, invalid)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m scmm.sweeps.report DIR``: rewrite a sweep folder's outputs."""
    parser = argparse.ArgumentParser(
        prog="python -m scmm.sweeps.report",
        description="Rewrite a sweep folder's tables and figures (results.csv, table.md,"
        " lr_sweep.png, loss_curves.png; transfer.md and transfer.png when the sweep has a"
        " transfer_axis) from its sweep.json and sweep.jsonl. Runs no trial.",
    )
    parser.add_argument("folder", help="the sweep folder (run_sweep.py's --out)")
    args = parser.parse_args(argv)
    try:
        if not os.path.isfile(os.path.join(args.folder, "sweep.json")):
            raise FileNotFoundError(f"{args.folder!r} holds no sweep (no sweep.json)")
        with FolderLock(args.folder):
            written = rewrite_folder(args.folder)
    except FolderBusyError as error:
        print(f"error: {error} (a run_sweep.py is driving it)", file=sys.stderr)
        return EXIT_BUSY
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    for path in written:
        print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
