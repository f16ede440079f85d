"""Per-tensor scale statistics of one training step: forward, backward and weight gradients.

``collect_scales(model, batch)`` runs one forward and backward pass of a ``CharLM``-like Keras
model (``model(tokens, mask)`` returning a dict with ``"loss"``, or the loss itself) eagerly and
returns a ``ScaleRecord`` for

- ``"forward"``: the output of every sublayer, found by walking the Keras layer tree (for a
  ``CharLM``: ``embedding``, ``shift``, each residual block ``layer_<i>_<sequence|token>``, the
  norm and mixer inside it (``layer_0_sequence/attention``, ``layer_0_token/ffn/up``, ...),
  ``final_norm`` and ``head``), in the order the outputs are produced;
- ``"backward"``: the gradient of the loss with respect to each of those outputs, i.e. the
  gradient the layer receives in the backward pass, in the same order, followed by
  ``"loss/logits"``: d loss / d logits (the gradient received by the ``head`` layer);
- ``"weight_gradient"``: d loss / d w of every trainable weight, by its ``.path``, in
  ``model.trainable_weights`` order (sparse embedding gradients are densified), times the
  parameter's gradient factor when ``gradient_factors`` are given (as the trainer applies
  them: the gradient the optimiser sees).

How the outputs are captured: each sublayer's ``call`` is shadowed, for the duration of the
pass only, by an instance attribute that calls the original bound method, ``tape.watch``-es the
returned tensors and remembers them; one ``tape.gradient`` call then differentiates the loss
with respect to all of them and to the weights. The model classes are never modified, and the
shadowing attributes are removed in a ``finally`` block, so the model is unchanged afterwards
even if the pass raises. Only calls made eagerly are captured: a sublayer called inside a
``tf.function``/``tf.scan`` body of another layer counts as part of that layer.

Loss semantics: gradients are those of the loss exactly as the model returns it (for the
baseline ``CharLM``, the masked *mean* cross-entropy, so d loss / d logits has a 1/tokens
factor), times ``loss_scale`` if given (as in a loss-scaled training step). Unit-scaled models
define the backward pass of their loss differently (a scaled gradient, computed as if from a
sum over tokens and multiplied by vocab/sqrt(vocab-1)): the records show exactly the gradients
such a model's own backward pass produces, which is what this tool is meant to reveal.

Statistics are computed on the host in float64 from the tensor's own dtype (a float16 output is
analysed as the float16 values the model computed). Weight gradients are those with respect to
the variables (float32 master weights under a ``mixed_*`` policy). For each format in
``FORMATS`` a record also holds ``underflow_<fmt>``, the fraction of the nonzero values that
become zero when cast (round to nearest) to that format, and ``overflow_<fmt>``, the fraction of
the nonzero values with ``|x| >`` the format's largest finite value (E4M3FN has no infinity:
such values saturate or become NaN depending on the cast; both count as overflow here).
"""

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

from ..io import atomic_open, finite_or_none
from ..ops.kernels import apply_gradient_factors

PASSES = ("forward", "backward", "weight_gradient")
LOSS_GRADIENT_NAME = "loss/logits"

# Number formats whose representable range every record is checked against.
FORMATS: dict[str, np.dtype] = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}


@dataclasses.dataclass(frozen=True)
class FormatRange:
    """Positive finite range of a number format."""

    name: str
    smallest_subnormal: float
    smallest_normal: float
    max_finite: float


def format_range(fmt: str) -> FormatRange:
    """Range of one of ``FORMATS`` (from ``ml_dtypes.finfo``)."""
    info = ml_dtypes.finfo(FORMATS[fmt])
    return FormatRange(
        name=fmt,
        smallest_subnormal=float(info.smallest_subnormal),
        smallest_normal=float(info.smallest_normal),
        max_finite=float(info.max),
    )


def format_fractions(values: np.ndarray) -> dict[str, float]:
    """``underflow_<fmt>``, ``subnormal_<fmt>`` and ``overflow_<fmt>`` for ``FORMATS``.

    All are fractions of the nonzero values of ``values`` (0.0 when there are none):
    underflow counts finite nonzero values that round to zero when cast to the format,
    subnormal those that survive the cast but land below its smallest normal (where relative
    precision is lost), overflow counts values with ``|x|`` above the format's largest finite
    value (infinities included; NaNs count in none). Exact zeros already in the tensor (e.g.
    flushed by a float16 computation) are reported by the record's ``zero_fraction``.
    """
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    nonzero = flat[flat != 0]  # NaN != 0, so NaNs stay in the denominator
    count = nonzero.size
    fractions: dict[str, float] = {}
    for fmt, dtype in FORMATS.items():
        if count == 0:
            fractions[f"underflow_{fmt}"] = 0.0
            fractions[f"subnormal_{fmt}"] = 0.0
            fractions[f"overflow_{fmt}"] = 0.0
            continue
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            cast = nonzero.astype(dtype).astype(np.float64)
        finite = np.isfinite(nonzero)
        underflow = np.count_nonzero(finite & (cast == 0))
        limits = format_range(fmt)
        subnormal = np.count_nonzero((cast != 0) & (np.abs(cast) < limits.smallest_normal))
        overflow = np.count_nonzero(np.abs(nonzero) > limits.max_finite)
        fractions[f"underflow_{fmt}"] = underflow / count
        fractions[f"subnormal_{fmt}"] = subnormal / count
        fractions[f"overflow_{fmt}"] = overflow / count
    return fractions


@dataclasses.dataclass(frozen=True)
class ScaleRecord:  # pylint: disable=too-many-instance-attributes
    """Statistics of one tensor at one step. ``to_dict`` names ``pass_`` ``"pass"``."""

    name: str
    pass_: str  # "forward" | "backward" | "weight_gradient"
    step: int
    shape: tuple[int, ...]
    dtype: str
    std: float
    rms: float
    abs_max: float
    mean: float
    zero_fraction: float
    nonfinite_fraction: float
    formats: dict[str, float] = dataclasses.field(default_factory=dict)
    """``underflow_`` / ``subnormal_`` / ``overflow_<fmt>`` fractions (``format_fractions``)."""

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict: fields, ``"pass"`` and the format fractions at top level."""
        data: dict[str, Any] = {
            "name": self.name,
            "pass": self.pass_,
            "step": self.step,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "std": self.std,
            "rms": self.rms,
            "abs_max": self.abs_max,
            "mean": self.mean,
            "zero_fraction": self.zero_fraction,
            "nonfinite_fraction": self.nonfinite_fraction,
        }
        data.update(self.formats)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ScaleRecord":
        """Inverse of ``to_dict`` (``None`` statistics, from strict JSON, become NaN)."""

        def number(key: str) -> float:
            value = data.get(key)
            return float("nan") if value is None else float(value)

        formats = {
            key: number(key)
            for key in data
            if key.startswith(("underflow_", "subnormal_", "overflow_"))
        }
        return cls(
            name=str(data["name"]),
            pass_=str(data["pass"]),
            step=int(data["step"]),
            shape=tuple(int(d) for d in data["shape"]),
            dtype=str(data["dtype"]),
            std=number("std"),
            rms=number("rms"),
            abs_max=number("abs_max"),
            mean=number("mean"),
            zero_fraction=number("zero_fraction"),
            nonfinite_fraction=number("nonfinite_fraction"),
            formats=formats,
        )


def to_float64(x: Any) -> np.ndarray:
    """A tensor, variable, ``tf.IndexedSlices`` (densified) or array as float64 numpy."""
    if isinstance(x, tf.IndexedSlices):
        x = tf.convert_to_tensor(x)
    if hasattr(x, "numpy"):
        x = x.numpy()
    return np.asarray(x).astype(np.float64)


def tensor_record(name: str, pass_: str, value: Any, step: int = 0) -> ScaleRecord:
    """Statistics of ``value`` (any shape and float dtype) as a ``ScaleRecord``."""
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")
    dtype = str(value.dtype.name) if hasattr(value.dtype, "name") else str(value.dtype)
    array = to_float64(value)
    size = array.size
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(np.std(array)) if size else float("nan")
        rms = float(np.sqrt(np.mean(np.square(array)))) if size else float("nan")
        abs_max = float(np.max(np.abs(array))) if size else float("nan")
        mean = float(np.mean(array)) if size else float("nan")
    return ScaleRecord(
        name=name,
        pass_=pass_,
        step=int(step),
        shape=tuple(int(d) for d in array.shape),
        dtype=dtype,
        std=std,
        rms=rms,
        abs_max=abs_max,
        mean=mean,
        zero_fraction=float(np.count_nonzero(array == 0) / size) if size else float("nan"),
        nonfinite_fraction=(
            float(np.count_nonzero(~np.isfinite(array)) / size) if size else float("nan")
        ),
        formats=format_fractions(array),
    )


# Capturing sublayer outputs ------------------------------------------------------------------


def layer_paths(model: keras.layers.Layer) -> list[tuple[str, keras.layers.Layer]]:
    """Every sublayer (depth first, each once) with its path from ``model``, e.g.
    ``layer_0_token/ffn/up``; the model itself is excluded."""
    found: list[tuple[str, keras.layers.Layer]] = []
    seen: set[int] = {id(model)}

    def visit(layer: keras.layers.Layer, prefix: str) -> None:
        for child in getattr(layer, "_layers", []):
            if id(child) in seen or not isinstance(child, keras.layers.Layer):
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            found.append((path, child))
            visit(child, f"{path}/")

    visit(model, "")
    return found


_MISSING = object()


@dataclasses.dataclass
class _Capture:
    """Output tensors of sublayer calls, in the order the calls returned (each watched by
    ``tape`` when one is given: a forward-only capture needs none)."""

    tape: Optional[tf.GradientTape]
    outputs: list[tuple[str, tf.Tensor]] = dataclasses.field(default_factory=list)
    calls: dict[str, int] = dataclasses.field(default_factory=dict)

    def record(self, path: str, outputs: Any) -> None:
        """Watch and remember the floating-point tensors in ``outputs`` (eager calls only)."""
        if not tf.executing_eagerly():
            return
        count = self.calls.get(path, 0)
        self.calls[path] = count + 1
        name = path if count == 0 else f"{path}#{count}"  # a layer called again in one pass
        leaves = [
            t for t in tf.nest.flatten(outputs) if isinstance(t, tf.Tensor) and t.dtype.is_floating
        ]
        for index, tensor in enumerate(leaves):
            if self.tape is not None:
                self.tape.watch(tensor)
            self.outputs.append((name if len(leaves) == 1 else f"{name}[{index}]", tensor))


def _wrap_call(capture: _Capture, path: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        outputs = original(*args, **kwargs)
        capture.record(path, outputs)
        return outputs

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


@contextlib.contextmanager
def _instrumented(model: keras.layers.Layer, capture: _Capture) -> Iterator[None]:
    """Shadow every sublayer's ``call`` by a capturing wrapper; restore on exit."""
    saved: list[tuple[keras.layers.Layer, Any]] = []
    try:
        for path, layer in layer_paths(model):
            saved.append((layer, layer.__dict__.get("call", _MISSING)))
            # object.__setattr__: bypass Keras' attribute tracking.
            object.__setattr__(layer, "call", _wrap_call(capture, path, layer.call))
        yield
    finally:
        for layer, previous in reversed(saved):
            if previous is _MISSING:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", previous)


def _loss_of(outputs: Any, loss_key: str) -> tf.Tensor:
    if isinstance(outputs, Mapping):
        return outputs[loss_key]
    return outputs


def capture_outputs(
    model: keras.layers.Layer, tokens: tf.Tensor, mask: tf.Tensor
) -> tuple[list[tuple[str, tf.Tensor]], Any]:
    """One eager forward pass of ``model(tokens, mask)`` with every sublayer's output kept.

    Returns ``([(path, output tensor), ...], model outputs)``, the outputs in the order the
    calls returned and named as in ``collect_scales``' forward records (``head``,
    ``layer_0_token/ffn/up``, ...). No gradient tape is recorded and the weights are not
    touched: for tools that need the raw tensors rather than their statistics (e.g. a
    coordinate check comparing a layer's output before and after training steps).
    """
    capture = _Capture(tape=None)
    with _instrumented(model, capture):
        outputs = model(tokens, mask)
    return capture.outputs, outputs


def collect_scales(
    model: keras.layers.Layer,
    batch: Mapping[str, Any],
    step: int = 0,
    *,
    loss_key: str = "loss",
    logits_layer: str = "head",
    loss_scale: float = 1.0,
    gradient_factors: Optional[Mapping[str, float]] = None,
) -> list[ScaleRecord]:
    """Scale records of one forward + backward pass on ``batch`` (see the module docstring).

    batch: ``{"tokens": int (b, s), "mask": bool (b, s)}``. ``logits_layer`` is the path of the
    layer whose output is the logits (its backward record is repeated as ``"loss/logits"``).
    The weights are not updated. Runs eagerly, so call it outside ``tf.function``.
    """
    tokens = tf.convert_to_tensor(np.asarray(batch["tokens"]), dtype=tf.int32)  # (b, s)
    mask = tf.convert_to_tensor(np.asarray(batch["mask"]), dtype=tf.bool)  # (b, s)
    weights = list(model.trainable_weights)
    with tf.GradientTape(persistent=False) as tape:
        capture = _Capture(tape)
        with _instrumented(model, capture):
            outputs = model(tokens, mask)
        loss = tf.cast(_loss_of(outputs, loss_key), tf.float32) * loss_scale
    grads = tape.gradient(
        loss,
        {"outputs": [t for _, t in capture.outputs], "weights": weights},
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )

    records = [tensor_record(name, "forward", t, step) for name, t in capture.outputs]
    for (name, _), grad in zip(capture.outputs, grads["outputs"]):
        records.append(tensor_record(name, "backward", grad, step))
        if name == logits_layer:
            records.append(tensor_record(LOSS_GRADIENT_NAME, "backward", grad, step))
    weight_grads = apply_gradient_factors(weights, grads["weights"], gradient_factors or {})
    for variable, grad in zip(weights, weight_grads):
        records.append(tensor_record(variable.path, "weight_gradient", grad, step))
    return records


# Files ---------------------------------------------------------------------------------------


def load_scales_json(path: str) -> list[ScaleRecord]:
    """Records written by ``write_scales_json``."""
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of scale records")
    return [ScaleRecord.from_dict(item) for item in data]


def write_scales_json(path: str, records: Sequence[ScaleRecord], append: bool = False) -> None:
    """Write ``records`` as a strict JSON list (non-finite numbers -> null), atomically.

    ``append=True`` keeps the records already in ``path`` (if it exists) and adds these after
    them; the whole file is still rewritten through a temporary file and ``os.replace``.
    """
    existing = load_scales_json(path) if append and os.path.exists(path) else []
    data = [finite_or_none(r.to_dict()) for r in [*existing, *records]]
    with atomic_open(path) as file:
        json.dump(data, file, indent=1)
        file.write("\n")


def select(
    records: Sequence[ScaleRecord], pass_: Optional[str] = None, step: Optional[int] = None
) -> list[ScaleRecord]:
    """Records of one pass and/or step, in their original order."""
    return [
        r
        for r in records
        if (pass_ is None or r.pass_ == pass_) and (step is None or r.step == step)
    ]
