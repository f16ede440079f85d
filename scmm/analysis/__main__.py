"""Summarise and compare scale analyses: ``python -m scmm.analysis RUN [OTHER_RUN] [--out PNG]``.

RUN is a run folder (its ``scales.json``) or a scales.json file. Prints, per pass, the range of
std over records and its spread in octaves (log2 max/min); with a second run, draws both in one
figure (the first as "model", the second as "compare").
"""

import argparse
import math
import os
import sys
from typing import Optional, Sequence

from .plots import plot_scales
from .scales import LOSS_GRADIENT_NAME, PASSES, ScaleRecord, load_scales_json


def _load(path: str) -> list[ScaleRecord]:
    if os.path.isdir(path):
        path = os.path.join(path, "scales.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r}: no scales.json (run with --analyse first)")
    return load_scales_json(path)


def summarise(records: Sequence[ScaleRecord], label: str) -> list[str]:
    """One line per pass: min/median/max std and the spread in octaves."""
    lines = []
    for pass_ in PASSES:
        values = sorted(
            r.std
            for r in records
            if r.pass_ == pass_ and r.name != LOSS_GRADIENT_NAME and r.std > 0
        )
        if not values:
            continue
        low, mid, high = values[0], values[len(values) // 2], values[-1]
        lines.append(
            f"{label:10s} {pass_:16s} std min {low:.3g}  median {mid:.3g}  max {high:.3g}"
            f"  spread {math.log2(high / low):.1f} octaves  (log2 median {math.log2(mid):+.1f})"
        )
        lines.extend(_low_precision_line(records, pass_, label))
    return lines


def _low_precision_line(records: Sequence[ScaleRecord], pass_: str, label: str) -> list[str]:
    """For tensors computed in a 16-bit format: how many values are zero or subnormal in it."""
    chosen = [r for r in records if r.pass_ == pass_ and r.name != LOSS_GRADIENT_NAME]
    dtypes = {r.dtype for r in chosen}
    if len(dtypes) != 1 or f"subnormal_{next(iter(dtypes))}" not in chosen[0].formats:
        return []
    dtype = next(iter(dtypes))
    zeros = sum(r.zero_fraction for r in chosen) / len(chosen)
    subnormal = sum(r.formats[f"subnormal_{dtype}"] for r in chosen) / len(chosen)
    worst = max(r.formats[f"subnormal_{dtype}"] for r in chosen)
    return [
        f"{label:10s} {pass_:16s} in {dtype}: exact zeros {100 * zeros:.2f}%, subnormal"
        f" {100 * subnormal:.2f}% of nonzeros (mean over records; worst record {100 * worst:.1f}%)"
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print summaries; write a comparison figure when --out is given."""
    parser = argparse.ArgumentParser(prog="python -m scmm.analysis", description=__doc__)
    parser.add_argument("run")
    parser.add_argument("other", nargs="?")
    parser.add_argument("--out", help="PNG to write (both runs in one figure)")
    parser.add_argument("--labels", nargs=2, default=None, metavar=("FIRST", "SECOND"))
    args = parser.parse_args(argv)
    try:
        first = _load(args.run)
        second = _load(args.other) if args.other else None
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    labels = tuple(args.labels or (os.path.basename(os.path.normpath(args.run)), args.other or ""))
    for line in summarise(first, labels[0]):
        print(line)
    if second is not None:
        for line in summarise(second, labels[1]):
            print(line)
    if args.out:
        plot_scales(first, args.out, title="tensor scales", compare=second, labels=labels)
        print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
