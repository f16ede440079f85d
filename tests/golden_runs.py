"""Golden runs: the numbers a refactor must leave bit-identical.

Each case is one small end-to-end experiment (a paper preset at reduced size, regular or
unit-scaled, float32 or simulated FP8) run in-process through the experiment command line.
A case's record holds the loss of each of its 20 training steps, the validation and test loss,
the scale-analysis records at initialisation, the calibration factors and a digest of the final
weights and optimiser state. ``tests/golden/refactor.json`` holds these records as written by
``python tests/golden_runs.py --record`` at the commit before the one-model-family refactor
(c16a6ab); ``tests/test_golden.py`` re-runs the cases and compares exactly. Floats are stored as
JSON numbers (Python's repr round-trips every double exactly).

Also recorded: every sweep preset's ``--dry-run`` listing and the resolved settings tree of every
configuration it expands to.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_PATH = REPO_ROOT / "tests" / "golden" / "refactor.json"
# The same code gives different last bits on CPUs whose TensorFlow/oneDNN kernels differ (an
# AMD EPYC with AVX-512 BF16 differs from the machine refactor.json was recorded on by 1 ulp in
# a few losses). Records made on other machines, from a commit whose results matched
# refactor.json on its machine, live here keyed by ``machine_fingerprint()``. 9728ae605e0afdf6
# (this project's AMD EPYC) holds all 18 cases, run with the pre-refactor code itself (c4ef379,
# the commit refactor.json was recorded at) on that machine.
MACHINES_DIR = REPO_ROOT / "tests" / "golden" / "machines"
_FINGERPRINT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "fma")


def machine_fingerprint() -> str:
    """CPU model, the vector extensions kernels dispatch on, and TensorFlow's version."""
    import tensorflow as tf

    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ",".join(f for f in _FINGERPRINT_FLAGS if f in flags)
    text = f"{model}|{wanted}|{tf.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


PRESETS = {
    "attention-pre": "paper-attention",
    "attention-post": "paper-attention-post",
    "conv": "paper-conv",
    "rnn": "paper-rnn",
}
STEPS = 20

# The reduced size: every preset at hidden 32, depth 2, batch 4 x 64 characters.
_REDUCED = {
    "data.path": "null",
    "data.sequence_length": "64",
    "data.overlap_length": "8",
    "model.hidden_size": "32",
    "model.depth": "2",
    "training.batch_sequences": "4",
    "training.steps": str(STEPS),
    "training.valid_interval": str(STEPS),
    "training.iterations_per_loop": "1",  # one train_step record per step: each step's loss
    "training.optimiser.learning_rate": str(2**-6),
    "output.wandb": "off",
    "output.progress": "off",
    "output.train_eval_chars": str(2**12),
    "output.analyse": "init",
    "seed": "7",
}
_ATTENTION = {
    "model.sequence.heads": "2",
    "model.sequence.head_size": "16",
    "model.sequence.frequencies": "8",
    "model.sequence.max_period": "64",
}
_FP8 = {
    "model.precision.activations": "e4m3",
    "model.precision.weights": "e4m3",
    "model.precision.gradients": "e5m2",
}
PRECISIONS: dict[str, dict[str, str]] = {
    "fp32": {},
    "fp8": _FP8,
    "fp8-dynamic": {**_FP8, "model.precision.scaling": "dynamic"},
}


def case_names() -> list[str]:
    """Every golden case: ``<model>/<scheme>/<precision>``."""
    names = [
        f"{model}/{scheme}/{precision}"
        for model in PRESETS
        for scheme in ("regular", "unit")
        for precision in ("fp32", "fp8")
    ]
    # Dynamic per-tensor scaling is the regular models' FP8 baseline (sweep fp8-small).
    return names + ["attention-pre/regular/fp8-dynamic", "conv/regular/fp8-dynamic"]


def scheme_overrides(scheme: str) -> dict[str, str]:
    """How the settings tree names the scaling scheme (the only spelling a refactor changes)."""
    return {"model.scaling.type": scheme}


def case_argv(name: str) -> list[str]:
    """The run_experiment.py arguments of one case (without --out)."""
    model, scheme, precision = name.split("/")
    overrides = {**_REDUCED, **scheme_overrides(scheme), **PRECISIONS[precision]}
    if model.startswith("attention"):
        overrides.update(_ATTENTION)
    argv = ["--preset", PRESETS[model]]
    for key, value in overrides.items():
        argv += [f"--{key}", value]
    return argv


def _digest(arrays: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(arrays[key].tobytes())
    return digest.hexdigest()


def run_case(name: str, out_dir: str) -> dict[str, Any]:
    """Run one case in-process into ``out_dir``; its golden record."""
    import numpy as np

    from scmm.experiments import checkpoints, cli
    from scmm.experiments.runner import Experiment

    invocation = cli.parse([*case_argv(name), "--out", out_dir])
    assert invocation is not None
    code = Experiment(invocation.settings, out_dir).run()
    if code != 0:
        raise RuntimeError(f"golden case {name} exited {code}")
    with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    losses = [r["loss"] for r in records if r["kind"] == "train_step"]
    evals = {r["kind"]: r["loss"] for r in records if r["kind"].startswith("eval_")}
    with open(os.path.join(out_dir, "scales.json"), encoding="utf-8") as file:
        scales = json.load(file)
    model_arrays, optimiser_arrays, state = checkpoints.load(
        os.path.join(out_dir, "checkpoints", "last.npz")
    )
    return {
        "losses": losses,
        "eval": evals,
        "scales": scales,
        "calibration": state_factors(state),
        "weights_sha256": _digest({k: np.asarray(v) for k, v in model_arrays.items()}),
        "optimiser_sha256": _digest({k: np.asarray(v) for k, v in optimiser_arrays.items()}),
    }


def state_factors(state: dict[str, Any]) -> dict[str, float]:
    """The weight-gradient factors a checkpoint's state holds (by weight path).

    Before the refactor they were ``state["weight_gradient_factors"]``; the scheme now keeps
    them in its own state."""
    return dict(state["scheme"]["gradient_factors"])


@contextlib.contextmanager
def _captured_stdout() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    previous = sys.stdout
    sys.stdout = buffer
    try:
        yield buffer
    finally:
        sys.stdout = previous


def sweep_names() -> list[str]:
    """Every sweep preset's name, sorted."""
    from scmm.sweeps import presets

    return sorted(presets.SWEEPS)


def sweep_expansions(names: Optional[list[str]] = None) -> dict[str, Any]:
    """Sweep presets (default: every one): the --dry-run listing and each configuration's
    settings tree."""
    from scmm.sweeps import cli as sweep_cli
    from scmm.sweeps.definition import expand, load_definition

    result: dict[str, Any] = {}
    for name in sweep_names() if names is None else names:
        with _captured_stdout() as listing:
            code = sweep_cli.main([name, "--dry-run"])
        assert code == 0, name
        configurations = expand(load_definition(name), {})
        result[name] = {
            "dry_run": listing.getvalue(),
            "configurations": {
                c.key: {
                    "settings": c.settings,
                    "lr_search": None if c.lr_search is None else vars(c.lr_search),
                }
                for c in configurations
            },
        }
    return result


def record(names: list[str]) -> dict[str, Any]:
    """Golden records of ``names`` plus the sweep expansions."""
    cases = {}
    for name in names:
        with tempfile.TemporaryDirectory() as out_dir:
            print(f"recording {name}", file=sys.stderr, flush=True)
            cases[name] = run_case(name, out_dir)
    return {"cases": cases, "sweeps": sweep_expansions()}


def main() -> int:
    """``python tests/golden_runs.py --record``: rewrite tests/golden/refactor.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="rewrite the golden file")
    parser.add_argument("--out", default=str(GOLDEN_PATH))
    parser.add_argument(
        "--machine",
        nargs="*",
        metavar="CASE",
        help="record these cases for this machine only (tests/golden/machines/<fingerprint>.json)",
    )
    args = parser.parse_args()
    if not args.record:
        parser.error("nothing to do (pass --record)")
    if args.machine is not None:
        cases = {}
        for name in args.machine:
            with tempfile.TemporaryDirectory() as out_dir:
                cases[name] = run_case(name, out_dir)
        MACHINES_DIR.mkdir(parents=True, exist_ok=True)
        with open(MACHINES_DIR / f"{machine_fingerprint()}.json", "w", encoding="utf-8") as file:
            json.dump({"cases": cases}, file, indent=1, sort_keys=True)
            file.write("\n")
        return 0
    golden = record(case_names())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as file:
        json.dump(golden, file, indent=1, sort_keys=True)
        file.write("\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
