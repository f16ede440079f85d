"""The nanoGPT FP8 demo: a plain-Keras GPT in FP32, in simulated FP8, and unit-scaled in FP8.

    python examples/nanogpt_fp8.py --out docs/results/nanogpt_fp8            # embedded corpus
    python examples/nanogpt_fp8.py --text my_corpus.txt --out /tmp/fp8_demo   # any text file

Three models from one GPT (``nanogpt_model.build_gpt``: nanoGPT's N(0, 0.02) init), each trained
with Adam at its own best learning rate from a small grid:

1. ``fp32``: the GPT as written;
2. ``fp8``: ``simulate_fp8(gpt)``, every matmul's operands in E4M3 and the gradients arriving
   at them in E5M2 (OCP formats, round to nearest) — the regular model's small gradients
   underflow (the mean cross-entropy's non-target logit gradients are about 1/(vocab x tokens));
3. ``unit_fp8``: ``unit_scale(simulate_fp8(gpt))`` — the same model unit-scaled, in the same FP8;
4. ``unit_fp32``: ``unit_scale(gpt)`` in FP32, the control that isolates what FP8 costs the
   unit-scaled model (``--variants`` picks a subset; all four by default).

It prints a table of final validation loss (nats/char) per model and LR, writes
``results.json``, ``loss_curves.png`` and the scale analysis at initialisation of the regular
and the unit-scaled FP8 models (``scales_fp8.png``, ``scales_unit_fp8.png``).
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_text(path: str | None) -> tuple[dict[str, np.ndarray], int, str]:
    """(train/valid ids, vocabulary size, description): a text file split 90/5/5, or scmm's
    embedded corpus."""
    if path is None:
        from scmm.datasets import DataSettings, load_dataset

        data = load_dataset(DataSettings())
        splits = {k: np.asarray(v, dtype=np.int32) for k, v in data.splits.items()}
        return splits, len(data.vocab), data.description
    text = Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.array([lookup[c] for c in text], dtype=np.int32)
    n = len(ids)
    cut_valid, cut_test = int(0.9 * n), int(0.95 * n)
    splits = {"train": ids[:cut_valid], "valid": ids[cut_valid:cut_test], "test": ids[cut_test:]}
    return splits, len(chars), f"{path} ({n:,} characters)"


def windows(ids: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (len(starts), length)."""
    index = starts[:, None] + np.arange(length + 1)[None, :]
    chunk = ids[index]
    return chunk[:, :-1], chunk[:, 1:]


def train(
    model: Any,
    loss_fn: Callable[..., Any],
    splits: dict[str, np.ndarray],
    args: argparse.Namespace,
    learning_rate: float,
) -> dict[str, Any]:
    """Adam for ``args.steps`` steps on random windows; the loss curve and final valid loss."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate)
    rng = np.random.default_rng(args.seed)
    train_ids, valid_ids = splits["train"], splits["valid"]
    valid_starts = np.linspace(0, len(valid_ids) - args.seq - 2, args.eval_windows).astype(int)
    valid_x, valid_y = windows(valid_ids, valid_starts, args.seq)

    @tf.function(jit_compile=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function(jit_compile=True)
    def evaluate(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        logits = tf.cast(model(x, training=False), tf.float32)
        return tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )

    def valid_loss() -> float:
        losses = [
            float(evaluate(valid_x[i : i + args.batch], valid_y[i : i + args.batch]))
            for i in range(0, len(valid_x) - args.batch + 1, args.batch)
        ]
        return float(np.mean(losses))

    curve, started = [], time.time()
    for t in range(args.steps):
        starts = rng.integers(0, len(train_ids) - args.seq - 2, size=args.batch)
        x, y = windows(train_ids, starts, args.seq)
        loss = float(step(x, y))
        curve.append(loss)
        if not math.isfinite(loss):
            return {
                "curve": curve,
                "valid": float("nan"),
                "diverged_at": t,
                "seconds": time.time() - started,
            }
    return {"curve": curve, "valid": valid_loss(), "seconds": time.time() - started}


VARIANTS = ("fp32", "fp8", "unit_fp8", "unit_fp32")


def build_variants(
    vocab: int, args: argparse.Namespace
) -> dict[str, tuple[Any, Callable[..., Any]]]:
    """The three models (fresh weights from one seed) and their losses."""
    import keras

    import scmm
    from nanogpt_model import build_gpt
    from scmm.uu.losses import SparseCategoricalCrossentropy

    gpt = build_gpt(
        vocab, args.seq, args.width, args.depth, args.heads, batch=args.batch, seed=args.seed
    )
    plain_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return {
        "fp32": (gpt, plain_loss),
        "fp8": (scmm.simulate_fp8(gpt), plain_loss),
        "unit_fp8": (
            scmm.unit_scale(scmm.simulate_fp8(gpt)),
            SparseCategoricalCrossentropy(from_logits=True),
        ),
        "unit_fp32": (scmm.unit_scale(gpt), SparseCategoricalCrossentropy(from_logits=True)),
    }


def best_lr_key(runs: dict[str, dict[str, Any]]) -> str:
    """The LR key of the lowest finite valid loss (a diverged run counts as 1e9)."""
    return min(runs, key=lambda k: runs[k]["valid"] if math.isfinite(runs[k]["valid"]) else 1e9)


def main() -> int:
    """Train the variants over their LR grids; print the table, write the results and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", default=None, help="a UTF-8 text file (default: scmm's embedded corpus)"
    )
    parser.add_argument("--out", default="docs/results/nanogpt_fp8")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-fp32", type=float, nargs="+", default=[2**-10, 2**-9, 2**-8, 2**-7])
    parser.add_argument(
        "--lr-fp8", type=float, nargs="+", default=None, help="default: the --lr-fp32 grid"
    )
    parser.add_argument("--lr-unit", type=float, nargs="+", default=[2**-8, 2**-7, 2**-6, 2**-5])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="which models to train (the summary compares against fp32 when it is run)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits, vocab, description = load_text(args.text)
    print(
        f"data: {description}, vocabulary {vocab}; GPT {args.width} wide x {args.depth} deep",
        flush=True,
    )

    from scmm.analysis import analyse

    grids = {
        "fp32": args.lr_fp32,
        "fp8": args.lr_fp8 or args.lr_fp32,
        "unit_fp8": args.lr_unit,
        "unit_fp32": args.lr_unit,
    }
    grids = {name: grid for name, grid in grids.items() if name in args.variants}
    results: dict[str, Any] = {
        "settings": vars(args),
        "data": description,
        "vocab": vocab,
        "runs": {},
    }
    for name in grids:
        for lr in grids[name]:
            model, loss_fn = build_variants(vocab, args)[name]
            if lr == grids[name][0] and name != "fp32":
                x, y = windows(splits["train"], np.arange(args.batch) * args.seq, args.seq)
                analyse(model, x, y, loss=loss_fn, out_dir=str(out / f"scales_{name}"))
            run = train(model, loss_fn, splits, args, lr)
            results["runs"].setdefault(name, {})[str(lr)] = run
            print(
                f"{name:9s} lr 2^{math.log2(lr):+.0f}: valid {run['valid']:.4f} nats"
                f" ({run['seconds']:.0f} s)",
                flush=True,
            )
    summary = {}
    for name, runs in results["runs"].items():
        best_lr = best_lr_key(runs)
        summary[name] = {"best_lr": float(best_lr), "valid": runs[best_lr]["valid"]}
    results["summary"] = summary
    base = summary["fp32"]["valid"] if "fp32" in summary else float("nan")
    print("\nmodel      best LR   valid nats   vs fp32")
    for name, row in summary.items():
        print(
            f"{name:9s} 2^{math.log2(row['best_lr']):+.0f}     {row['valid']:.4f}"
            f"      {row['valid'] - base:+.4f}"
        )
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot_curves(results, out / "loss_curves.png")
    return 0


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Training loss of each model at its best LR (smoothed over 20 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in results["summary"].items():
        curve = np.asarray(results["runs"][name][str(row["best_lr"])]["curve"], dtype=float)
        smooth = np.convolve(curve, np.ones(20) / 20, mode="valid")
        ax.plot(smooth, label=f"{name} (lr 2^{math.log2(row['best_lr']):+.0f})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/char)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
