"""``analyse(model, inputs, ...)``: per-layer-call scales of one pass of any Keras model."""

import dataclasses
import os
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from ..plots import plot_scales
from ..scales import ScaleRecord, layer_paths, load_scales_json, tensor_record, write_scales_json
from .capture import LoggedCall, call_sites, logged_calls
from .objective import LossArgument, choose_objective, evaluate_objective, float_leaves
from .report import OUTPUT_GRADIENT_NAME, LayerCall, ModelScales, WeightScales, weight_record


def unit_normal_inputs(model: keras.layers.Layer, batch_size: int, seed: int) -> Any:
    """N(0, 1) float32 inputs in the structure of ``model.input`` (a Functional model's declared
    inputs, batch ``batch_size``); ValueError when the model declares none usable."""
    try:
        declared = model.input
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) has no declared inputs"
            f"{'' if model.built else ' and is not built'}: pass inputs=... (an array of the"
            " shape it expects)"
        ) from error
    rng = np.random.default_rng(seed)

    def draw(spec: Any) -> np.ndarray:
        shape = tuple(spec.shape)[1:]
        if not keras.backend.is_float_dtype(spec.dtype) or any(d is None for d in shape):
            raise ValueError(
                f"cannot draw inputs for model {model.name!r}: input {spec.name!r} has"
                f" shape {tuple(spec.shape)} and dtype {spec.dtype} (N(0,1) inputs need a"
                " float dtype and known non-batch dims): pass inputs=..."
            )
        return rng.standard_normal((batch_size, *shape)).astype(np.float32)

    return tf.nest.map_structure(draw, declared)


def _check_finite(structure: Any, what: str) -> None:
    for index, leaf in enumerate(tf.nest.flatten(structure)):
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            count = int(np.count_nonzero(~np.isfinite(array)))
            raise ValueError(f"{what}[{index}] holds {count} non-finite value(s) of {array.size}")


def _model_state(model: keras.layers.Layer) -> dict[int, tuple[Any, tf.Tensor]]:
    """Copies of every variable: weights, moving statistics, seed-generator and metric states
    (a copy of the model's size: the price of leaving it exactly as it was)."""
    variables = [*model.variables, *getattr(model, "metrics_variables", [])]
    return {id(v): (v, tf.identity(v.value)) for v in variables}


def _restore(model: keras.layers.Layer, saved: dict[int, tuple[Any, tf.Tensor]]) -> None:
    """Assign the saved values back. Metrics created during the pass (a compiled loss builds
    per-output loss trackers on its first call) are reset to their initial state first."""
    for metric in getattr(model, "metrics", []):
        if any(id(v) not in saved for v in metric.variables):
            metric.reset_state()
    for variable, value in saved.values():
        variable.assign(value)


def _weight_owners(model: keras.layers.Layer) -> dict[int, str]:
    """id(variable) -> path of the innermost layer whose trainable weights include it."""
    owners = {id(v): "" for v in model.trainable_weights}
    for path, layer in layer_paths(model):  # depth first: children overwrite their parents
        for variable in layer.trainable_weights:
            owners[id(variable)] = path
    return owners


def _first_nonfinite(report: ModelScales, model_name: str) -> Optional[str]:
    """Where non-finite values first appear: forward in call order, then the objective, then
    the backward pass from the outputs towards the inputs, then the weight gradients."""
    for call in report.calls:
        for record in call.outputs:
            if record.nonfinite_fraction > 0:
                return (
                    f"the forward output {record.name!r} of {call.class_name} layer"
                    f" {call.path!r} (call {call.call_index}) is non-finite"
                    f" ({record.nonfinite_fraction:.3g} of its values)"
                )
    if not np.isfinite(report.objective_value):
        return f"the objective ({report.objective}) of model {model_name!r} is non-finite"
    for call in reversed(report.calls):
        for record in call.gradients:
            if record.nonfinite_fraction > 0:
                return (
                    f"the gradient arriving at the output {record.name!r} of {call.class_name}"
                    f" layer {call.path!r} (call {call.call_index}) is non-finite"
                    f" ({record.nonfinite_fraction:.3g} of its values; it comes from the"
                    " backward pass of the calls after it)"
                )
    for weight in report.weights:
        if weight.gradient.nonfinite_fraction > 0:
            return f"the gradient of weight {weight.path!r} of layer {weight.layer!r} is non-finite"
    return None


def _write_files(report: ModelScales, out_dir: str, title: str) -> ModelScales:
    """scales.json (records of other steps kept, this step's replaced) and scales.png."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "scales.json")
    earlier = load_scales_json(json_path) if os.path.exists(json_path) else []
    kept = [r for r in earlier if r.step != report.step]
    write_scales_json(json_path, [*kept, *report.records])
    png_path = plot_scales(load_scales_json(json_path), os.path.join(out_dir, "scales.png"), title)
    return dataclasses.replace(report, json_path=json_path, png_path=png_path)


def _call_records(
    log: list[LoggedCall], gradients: list[Any], step: int
) -> list[tuple[LoggedCall, list[ScaleRecord], list[ScaleRecord]]]:
    """(call, forward records, backward records) per call; ``gradients`` are those of all
    the calls' tensors, concatenated in call order."""
    grouped = []
    position = 0
    for call in log:
        names = call.tensor_names()
        forward = [tensor_record(n, "forward", t, step) for n, t in zip(names, call.tensors)]
        backward = [
            tensor_record(n, "backward", g, step)
            for n, g in zip(names, gradients[position : position + len(names)])
        ]
        position += len(names)
        grouped.append((call, forward, backward))
    return grouped


def analyse(  # pylint: disable=too-many-arguments,too-many-locals
    model: keras.layers.Layer,
    inputs: Any = None,
    targets: Any = None,
    loss: LossArgument = None,
    out_dir: Optional[str] = None,
    step: int = 0,
    *,
    seed: int = 0,
    training: bool = True,
    batch_size: int = 16,
    include_containers: bool = False,
    allow_nonfinite: bool = False,
    title: Optional[str] = None,
) -> ModelScales:
    """Scales of one eager forward + backward pass of ``model`` on ``inputs``.

    Records, for every call of every leaf layer and Functional operation node (e.g. an ``Add``
    between layers), and of every container layer inside which no call was recorded (e.g. one
    computing with its sublayers' weights; every container with ``include_containers``), in call
    order (``capture.py``): the output's statistics and those of the gradient arriving at it; for
    every trainable weight, its value and its gradient (summed over all the calls of its layer, as
    training sees it). The gradients are those of ``loss(targets, outputs)``, of the compiled loss
    when only ``targets`` are given, or, without targets, of a unit-normal probe: the gradient
    arriving at each model output is N(0, 1) drawn with ``seed`` (``objective.py``).

    ``inputs=None`` draws N(0, 1) inputs (batch ``batch_size``, ``seed``) for a model with
    declared float inputs. ``training`` is passed to the model (dropout, batch-norm statistics);
    every variable (moving statistics, seed-generator and metric states) is restored afterwards
    and every ``call`` un-shadowed, so the model computes exactly as before. An unbuilt model is
    built by one extra ``training=False`` call first. Non-finite values raise ValueError naming
    where they first appear unless ``allow_nonfinite``. With ``out_dir``, writes
    ``scales.json`` (this ``step``'s records replace any earlier ones of the same step) and
    ``scales.png`` (``plot_scales``, as the char LM's ``--analyse``).
    """
    if not isinstance(model, keras.layers.Layer):
        raise ValueError(f"model must be a Keras model or layer, got {type(model).__name__}")
    if not tf.executing_eagerly():
        raise RuntimeError("analyse runs the model eagerly: call it outside tf.function")
    objective = choose_objective(model, targets, loss)
    if inputs is None:
        inputs = unit_normal_inputs(model, batch_size, seed)
    _check_finite(inputs, "inputs")
    if not model.built:
        model(inputs, training=False)  # creates the weights without touching any state

    sites = call_sites(model)
    saved = _model_state(model)
    try:
        with tf.GradientTape() as tape:
            with logged_calls(sites, tape, include_containers) as log:
                outputs = model(inputs, training=training)
            output_tensors = float_leaves(outputs)
            for tensor in output_tensors:
                tape.watch(tensor)
            value = evaluate_objective(objective, model, inputs, outputs, targets, seed)
        weights = list(model.trainable_weights)
        gradients = tape.gradient(
            value,
            {
                "calls": [t for call in log for t in call.tensors],
                "outputs": output_tensors,
                # The backing tf.Variables: an unconnected Keras variable, whose dtype is a
                # string, breaks UnconnectedGradients.ZERO.
                "weights": [w.value for w in weights],
            },
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
    finally:
        _restore(model, saved)
    if not log:
        raise ValueError(
            f"no layer call of model {model.name!r} ran eagerly (is its call a tf.function?)"
        )

    owners = _weight_owners(model)
    calls = tuple(
        LayerCall(
            name=call.name,
            path=call.path,
            call_index=call.call_index,
            class_name=call.class_name,
            outputs=tuple(forward),
            gradients=tuple(backward),
            weights=tuple(w.path for w in weights if owners.get(id(w)) == call.path),
        )
        for call, forward, backward in _call_records(log, gradients["calls"], step)
    )
    output_names = (
        [OUTPUT_GRADIENT_NAME]
        if len(output_tensors) == 1
        else [f"{OUTPUT_GRADIENT_NAME}[{i}]" for i in range(len(output_tensors))]
    )
    report = ModelScales(
        step=int(step),
        objective=objective.kind,
        objective_value=float(value.numpy()),
        calls=calls,
        output_gradients=tuple(
            tensor_record(n, "backward", g, step)
            for n, g in zip(output_names, gradients["outputs"])
        ),
        weights=tuple(
            WeightScales(
                path=w.path,
                layer=owners.get(id(w), ""),
                value=weight_record(w.path, w.value, step),
                gradient=tensor_record(w.path, "weight_gradient", g, step),
            )
            for w, g in zip(weights, gradients["weights"])
        ),
    )
    problem = _first_nonfinite(report, model.name)
    if problem is not None and not allow_nonfinite:
        raise ValueError(f"{problem} (pass allow_nonfinite=True to record it anyway)")
    if out_dir is not None:
        report = _write_files(report, out_dir, title or f"{model.name}: tensor scales")
    return report
