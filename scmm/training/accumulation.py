"""Gradient accumulation: one optimiser step's batch as M micro-batches, the full-batch result.

How the parts combine depends on how the model's loss reduces its tokens in the backward pass
(``model.loss_reduction``, "mean" unless the model says otherwise):

- ``"mean"`` (an ordinary masked-mean cross-entropy): part m's gradient is that of its own
  mean over n_m tokens, so the full-batch gradient is sum_m n_m g_m / N, N = sum_m n_m: exact
  whatever the parts' token counts (masks, padding).
- ``"sum"`` (the unit-scaled cross-entropy, whose backward undoes the mean's 1/count so every
  scored token's logit gradient is ~1): the parts simply add, *provided* each part's parameter
  gradients are scaled by the global batch's rows, not its own. The parts are traced under
  ``scmm.uscale.batch_split(M)``, which makes every rows^-1/2 count M x the local rows; without
  it the sum would be sqrt(M) x the full-batch gradient (a mean 1/sqrt(M): the defect measured
  at 0.7071 for M = 2).

Metrics combine like the loss: ``loss`` and other per-token averages token-weighted,
``n_tokens`` summed, ``*_rms`` as the root of the mean square over the (equal-sized) parts,
``perplexity`` as exp of the combined ``xentropy``.
"""

from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf

from ..uscale.batch_split import batch_split

REDUCTIONS = ("mean", "sum")

# (tokens, mask, micro-batch index) -> (model outputs, gradients of the scaled loss, one per
# variable); the index lets a stochastic model (dropout) draw a different mask per part.
PartGradients = Callable[[tf.Tensor, tf.Tensor, int], tuple[dict[str, tf.Tensor], list[Any]]]


def loss_reduction(model: Any) -> str:
    """How ``model``'s loss reduces tokens in its backward pass ("mean" when undeclared)."""
    reduction = getattr(model, "loss_reduction", "mean")
    if reduction not in REDUCTIONS:
        raise ValueError(f"model.loss_reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return str(reduction)


def split_batch(
    tokens: tf.Tensor, mask: tf.Tensor, parts: int
) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """(sequences, length) -> ``parts`` consecutive (sequences / parts, length) micro-batches."""
    sequences = tokens.shape[0]
    if sequences is None or sequences % parts:
        raise ValueError(
            f"{parts} micro-batches need a batch size that they divide, got {sequences}"
        )
    size = sequences // parts
    return [
        (tokens[i * size : (i + 1) * size], mask[i * size : (i + 1) * size]) for i in range(parts)
    ]


def _dense(gradient: Any) -> Any:
    # An embedding's IndexedSlices becomes dense: parts touch different rows.
    return None if gradient is None else tf.convert_to_tensor(gradient)


def accumulated_gradients(
    part_gradients: PartGradients,
    tokens: tf.Tensor,
    mask: tf.Tensor,
    parts: int,
    reduction: str,
    mode: str = "mean",
) -> tuple[dict[str, tf.Tensor], list[Any]]:
    """(combined outputs, combined gradients) of ``parts`` micro-batches (module docstring).

    ``mode`` "mean" gives the full-batch gradient; "sum" ``parts`` times it (the sum of the
    parts' full-batch-normalised contributions, Graphcore's Sum accumulation).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    outputs: list[dict[str, tf.Tensor]] = []
    total: list[Any] = []
    with batch_split(parts):
        for index, (part_tokens, part_mask) in enumerate(split_batch(tokens, mask, parts)):
            part_outputs, grads = part_gradients(part_tokens, part_mask, index)
            weight = part_outputs["n_tokens"] if reduction == "mean" else None
            grads = [_dense(g) for g in grads]
            if weight is not None:
                grads = [None if g is None else g * tf.cast(weight, g.dtype) for g in grads]
            total = grads if not total else [_add(a, b) for a, b in zip(total, grads)]
            outputs.append(part_outputs)
    combined = combine_outputs(outputs)
    factor = float(parts) if mode == "sum" else 1.0
    if reduction == "mean":
        count = tf.maximum(combined["n_tokens"], 1.0)
        total = [None if g is None else g * tf.cast(factor / count, g.dtype) for g in total]
    elif factor != 1.0:
        total = [None if g is None else g * tf.cast(factor, g.dtype) for g in total]
    return combined, total


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a + b


def combine_outputs(parts: Sequence[Mapping[str, tf.Tensor]]) -> dict[str, tf.Tensor]:
    """The parts' scalar outputs as the full batch's (module docstring)."""
    counts = [tf.cast(p["n_tokens"], tf.float32) for p in parts]
    total = tf.add_n(counts)
    safe = tf.maximum(total, 1.0)
    combined: dict[str, tf.Tensor] = {"n_tokens": total}
    for key in parts[0]:
        if key == "n_tokens":
            continue
        values = [tf.cast(p[key], tf.float32) for p in parts]
        if key.endswith("_rms"):
            combined[key] = tf.sqrt(tf.add_n([tf.square(v) for v in values]) / len(values))
        else:
            combined[key] = tf.add_n([v * n for v, n in zip(values, counts)]) / safe
    if "perplexity" in combined and "xentropy" in combined:
        # exp of the mean cross-entropy, not the mean of the parts' exps.
        combined["perplexity"] = tf.exp(combined["xentropy"])
    return combined
