"""``unit_scale(model)``: the same Keras model, unit-scaled, in one line.

For a Functional (or Sequential) model the graph is rebuilt with ``keras.models.clone_model``:

1. every layer with a ``scmm.uu`` twin is swapped for it (the user's ``replace`` map first);
   ``keras.ops`` calls with a ``scmm.U`` twin become ``FunctionalOp`` layers;
2. every *residual add* (an add whose inputs are ancestor and descendant in the graph) becomes
   ``ResidualBranch`` on the branch's input and ``ResidualMerge`` in place of the add, with the
   scheme's tau over the number of residual branches found (unit: the running mean
   tau_i = 1/(i + 1); u-mup: its rule over attention-like and MLP-like branches), not a constant;
3. everything after the last residual add is unconstrained (a cut edge), and the readout (the
   last weight layer before an output) gets the readout role;
4. weights are re-initialised at unit scale (``weights="init"``), copied (``"copy"``), or
   copied and divided by their std (``"rescale"``, the PyTorch library's choice);
5. a compiled model's loss is swapped for its unit-scaled twin.

The input model is never modified. Subclassed models have no graph to read: their known layers
are swapped by class in place (``inplace=True`` is required), and their residual adds, being
Python ``+`` inside ``call``, cannot be found (the report says so).
"""

from typing import Any, Callable, Mapping, Optional, Union

import keras

from .graph import GraphNode, ResidualAdd, descendants_of, find_residual_adds, model_graph
from .registry import (
    LAYER_TWINS,
    NEUTRAL_LAYERS,
    NEUTRAL_OPS,
    OP_TWINS,
    SEQUENCE_LAYERS,
    SEQUENCE_OPS,
    is_layer,
    keras_class,
    op_options,
    uu_class,
)
from .readout import readout_layers
from .report import Entry, Status, ResidualReport, TransformReport
from .rewrite import CallSite, rewrite
from .simulated_layers import SimulatedOp
from .twins import copy_weights, make_twin

Replace = Mapping[Union[type, str], Callable[[keras.layers.Layer], keras.layers.Layer]]
WEIGHT_MODES = ("init", "copy", "rescale")


def residual_taus(
    scheme: str, kinds: list[str], residual_mult: float, attn_ratio: float
) -> list[float]:
    """tau of each residual branch (``kinds``: "sequence" | "token", in graph order)."""
    if scheme == "umup":
        from ..schemes.umup_residual import residual_taus as umup_taus

        return list(
            umup_taus(
                ["attention" if k == "sequence" else "ffn" for k in kinds],
                residual_mult,
                attn_ratio,
            )
        )
    # Unit scaling's running mean: the stream stays the mean of the input and every branch.
    return [1.0 / (index + 1) for index in range(1, len(kinds) + 1)]


def unit_scale(
    model: keras.Model,
    scheme: str = "unit",
    replace: Optional[Replace] = None,
    weights: str = "init",
    residual_mult: float = 1.0,
    residual_attn_ratio: float = 1.0,
    inplace: bool = False,
) -> keras.Model:
    """A unit-scaled copy of ``model``; ``result.scmm_report`` says what happened to each layer.

    scheme: "unit" | "umup". replace: ``{Keras class or layer name: fn(layer) -> new layer}``,
    applied before the built-in twins. weights: "init" | "copy" | "rescale". inplace: required
    for subclassed models (swapped in place; Functional/Sequential models are never modified).
    """
    if scheme not in ("unit", "umup"):
        raise ValueError(f"unit_scale: scheme must be 'unit' or 'umup', got {scheme!r}")
    if weights not in WEIGHT_MODES:
        raise ValueError(f"unit_scale: weights must be one of {WEIGHT_MODES}, got {weights!r}")
    if not isinstance(model, keras.Model):
        raise TypeError(f"unit_scale takes a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError("unit_scale: build the model first (call it once or give it an Input)")
    report = TransformReport(transform="unit_scale", scheme=scheme)
    if isinstance(model, keras.Sequential):
        new = _sequential(model, scheme, replace or {}, weights, report)
    elif _is_functional(model):
        new = _functional(
            model, scheme, replace or {}, weights, residual_mult, residual_attn_ratio, report
        )
    else:
        from .subclassed import unit_scale_subclassed

        new = unit_scale_subclassed(model, scheme, replace or {}, weights, inplace, report)
    new.scmm_report = report
    _swap_loss(model, new, scheme, report)
    report.warn_unhandled()
    return new


def _is_functional(model: keras.Model) -> bool:
    return (
        hasattr(model, "_nodes_by_depth")
        and not isinstance(model, keras.Sequential)
        and bool(getattr(model, "_nodes_by_depth", None))
        and type(model).__name__ == "Functional"
    )


class _Plan:
    """The decisions for one Functional graph, made before anything is built."""

    def __init__(self, model: keras.Model, scheme: str, mult: float, ratio: float):
        self.graph = model_graph(model)
        self.by_key = {n.key: n for n in self.graph}
        sequence_classes = tuple(
            type(n.operation)
            for n in self.graph
            if keras_class(n.operation) in SEQUENCE_LAYERS and is_layer(n.operation)
        )
        self.residuals: list[ResidualAdd] = find_residual_adds(
            self.graph, sequence_classes, SEQUENCE_OPS
        )
        self.taus = residual_taus(scheme, [r.kind for r in self.residuals], mult, ratio)
        self.by_add = {r.add: (i, r) for i, r in enumerate(self.residuals)}
        last = self.residuals[-1].add if self.residuals else None
        self.after_last = descendants_of(self.graph, last) if last is not None else set()
        self.readouts = readout_layers(model, self.by_key)
        self.branch_inputs: dict[int, Any] = {}

    def nodes_of(self, operation: Any) -> list[GraphNode]:
        """The calls of ``operation`` in the graph."""
        return [n for n in self.graph if n.operation is operation]

    def unconstrained(self, operation: Any) -> bool:
        """Whether every call of ``operation`` comes after the last residual add."""
        nodes = self.nodes_of(operation)
        return bool(nodes) and all(n.key in self.after_last for n in nodes)


def _functional(
    model: keras.Model,
    scheme: str,
    replace: Replace,
    weights: str,
    mult: float,
    ratio: float,
    report: TransformReport,
) -> keras.Model:
    plan = _Plan(model, scheme, mult, ratio)
    pairs: list[tuple[Any, Any, bool]] = []  # (original layer, new layer, is a twin)

    def clone(operation: Any) -> Any:
        if not is_layer(operation):
            return _clone_op(operation)
        twin = _twin_for(operation, scheme, replace, plan, report)
        new = twin if twin is not None else operation.__class__.from_config(operation.get_config())
        pairs.append((operation, new, twin is not None))
        return new

    def call(site: CallSite, mapping: dict[int, Any]) -> Any:
        args, kwargs = _branch_inputs(site, mapping, plan)
        site.args, site.kwargs = args, kwargs
        if site.node.key in plan.by_add:
            return _merge(site, plan, report)
        if not is_layer(site.original):
            return _op_call(site, scheme, plan, report)
        return site.default()

    new = rewrite(model, clone, call)
    for original, replacement, twin in pairs:
        copy_weights(original, replacement, weights if twin else "copy")
    return new


def _twin_for(
    layer: Any, scheme: str, replace: Replace, plan: Optional[_Plan], report: TransformReport
) -> Any:
    user = replace.get(layer.name) or replace.get(type(layer))
    name = keras_class(layer)
    if user is not None:
        new = user(layer)
        report.add(
            Entry(layer.name, type(layer).__name__, "replaced", type(new).__name__, "user replace")
        )
        return new
    if isinstance(layer, SimulatedOp):  # a keras.ops product simulate_fp8 made a layer
        from ..uu.graph_ops import FunctionalOp

        after = plan is not None and plan.unconstrained(layer)
        report.add(Entry(layer.name, "SimulatedOp", "replaced", f"U.{layer.function}"))
        return FunctionalOp(
            layer.function,
            layer.options,
            scheme=scheme,
            constraint="separate" if after else None,
            precision=layer.precision,
            name=layer.name,
        )
    if name in LAYER_TWINS:
        readout = plan is not None and id(layer) in plan.readouts
        unconstrained = readout or (plan is not None and plan.unconstrained(layer))
        new = make_twin(
            layer,
            uu_class(name),
            scheme,
            "separate" if unconstrained else None,
            "readout" if readout else None,
        )
        detail = (
            "readout"
            if readout
            else ("unconstrained (after the last residual)" if unconstrained else "")
        )
        report.add(Entry(layer.name, name, "replaced", f"uu.{name}", detail))
        return new
    status: Status = "scale-neutral" if name in NEUTRAL_LAYERS else "unhandled"
    report.add(Entry(layer.name, type(layer).__name__, status))
    return None


def _clone_op(operation: Any) -> Any:
    try:
        return type(operation).from_config(operation.get_config())
    except (TypeError, ValueError, NotImplementedError):
        return operation  # stateless: sharing the op object is harmless


def _branch_inputs(
    site: CallSite, mapping: dict[int, Any], plan: _Plan
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with each residual skip replaced by that branch's split input."""
    skips = {}
    for index, residual in enumerate(plan.residuals):
        if site.node.key in residual.branch:
            add = plan.by_key[residual.add]
            skips[id(add.input_tensors[residual.skip_position])] = index

    if not skips:
        return site.args, site.kwargs

    def swap(value: Any) -> Any:
        original = mapping.get(id(value))
        if original is None or id(original) not in skips:
            return value
        index = skips[id(original)]
        if index not in plan.branch_inputs:
            from ..uu.graph_ops import ResidualBranch

            add_name = plan.by_key[plan.residuals[index].add].name
            plan.branch_inputs[index] = ResidualBranch(plan.taus[index], name=f"{add_name}_branch")(
                value
            )
        return plan.branch_inputs[index]

    return keras.tree.map_structure(swap, site.args), keras.tree.map_structure(swap, site.kwargs)


def _merge(site: CallSite, plan: _Plan, report: TransformReport) -> Any:
    from ..uu.graph_ops import ResidualMerge

    index, residual = plan.by_add[site.node.key]
    tensors = list(keras.tree.flatten((site.args, site.kwargs)))
    tensors = [t for t in tensors if hasattr(t, "shape")]
    skip, branch = tensors[residual.skip_position], tensors[1 - residual.skip_position]
    tau = plan.taus[index]
    report.add(
        Entry(site.node.name, _kind(site.original), "residual", "ResidualMerge", f"tau={tau:.4g}")
    )
    report.residual_adds.append(
        ResidualReport(
            site.node.name,
            index + 1,
            residual.kind,
            tau,
            sorted(plan.by_key[k].name for k in residual.branch),
        )
    )
    return ResidualMerge(tau, name=site.node.name)([skip, branch])


def _op_call(site: CallSite, scheme: str, plan: _Plan, report: TransformReport) -> Any:
    from ..uu.graph_ops import FunctionalOp

    name = type(site.original).__name__
    kind = _kind(site.original)
    if all(_is_integer(t) for t in site.node.node.output_tensors):
        report.add(Entry(site.node.name, kind, "scale-neutral", detail="integer values"))
        return site.default()
    if name in OP_TWINS:
        function, option_names = OP_TWINS[name]
        constraint = "separate" if site.node.key in plan.after_last else None
        layer = FunctionalOp(
            function,
            op_options(site.original, option_names),
            scheme=scheme,
            constraint=constraint,
            name=site.node.name,
        )
        report.add(Entry(site.node.name, kind, "replaced", f"U.{function}"))
        return layer(*site.args, **site.kwargs)
    report.add(Entry(site.node.name, kind, "scale-neutral" if name in NEUTRAL_OPS else "unhandled"))
    return site.default()


def _is_integer(tensor: Any) -> bool:
    return str(tensor.dtype).startswith(("int", "uint", "bool"))


def _kind(operation: Any) -> str:
    return type(operation).__name__ if is_layer(operation) else f"ops.{type(operation).__name__}"


def _sequential(
    model: keras.Sequential, scheme: str, replace: Replace, weights: str, report: TransformReport
) -> keras.Model:
    layers = list(model.layers)
    weight_layers = [l for l in layers if keras_class(l) in ("Dense", "EinsumDense")]
    readout = weight_layers[-1] if weight_layers else None
    new_layers, pairs = [], []
    for layer in layers:
        name = keras_class(layer)
        user = replace.get(layer.name) or replace.get(type(layer))
        if user is None and name in LAYER_TWINS:
            role = "readout" if layer is readout else None
            new = make_twin(layer, uu_class(name), scheme, "separate" if role else None, role)
            report.add(Entry(layer.name, name, "replaced", f"uu.{name}", "readout" if role else ""))
            pairs.append((layer, new, weights))
        else:
            new = _twin_for(layer, scheme, replace, None, report) if user is not None else None
            if new is None:
                report.add(
                    Entry(
                        layer.name,
                        type(layer).__name__,
                        "scale-neutral" if name in NEUTRAL_LAYERS else "unhandled",
                    )
                )
                new = layer.__class__.from_config(layer.get_config())
            pairs.append((layer, new, "copy"))
        new_layers.append(new)
    inputs = keras.Input(batch_shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype)
    new = keras.Sequential([inputs, *new_layers], name=model.name)
    for original, replacement, mode in pairs:
        copy_weights(original, replacement, mode)
    return new


def _swap_loss(
    original: keras.Model, new: keras.Model, scheme: str, report: TransformReport
) -> None:
    """Compile ``new`` like ``original`` with the unit-scaled loss (when it was compiled), and
    under u-mup with ``uu.AdamW`` in place of Keras's Adam/AdamW."""
    if not getattr(original, "compiled", False):
        report.notes.append(
            "the model was not compiled: compile it with"
            " scmm.uu.losses.SparseCategoricalCrossentropy"
        )
        return
    from .losses import unit_scaled_loss

    loss, entry = unit_scaled_loss(original.loss)
    report.add(entry)
    optimizer = _optimizer_for(original.optimizer, new, scheme, report)
    new.compile(
        optimizer=optimizer, loss=loss, jit_compile=getattr(original, "jit_compile", "auto")
    )


def _optimizer_for(
    optimizer: Any, new: keras.Model, scheme: str, report: TransformReport
) -> keras.optimizers.Optimizer:
    """A fresh copy of ``optimizer``; under u-mup, Keras's Adam/AdamW becomes ``uu.AdamW`` with
    the per-parameter rates of ``new`` (its residual branches from the report)."""
    copy = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    # Exactly Keras's classes: a subclass may step differently.
    kind = type(optimizer)
    if scheme != "umup" or kind not in (keras.optimizers.Adam, keras.optimizers.AdamW):
        if scheme == "umup" and not type(optimizer).__module__.startswith("scmm."):
            report.notes.append(
                f"optimizer {kind.__name__} kept: u-mup's learning-rate rules are applied only"
                " by scmm.uu.AdamW (Keras's Adam/AdamW are swapped for it)"
            )
        return copy
    from ..uu.optimizers import AdamW
    from ..uu.parameter_table import parameter_table

    config = copy.get_config()
    config.pop("name", None)
    # Keras's Adam has no decay (weight_decay None); its AdamW decays by weight_decay.
    config["weight_decay"] = float(config.get("weight_decay") or 0.0)
    if isinstance(config["learning_rate"], dict):  # a serialised schedule
        config["learning_rate"] = keras.optimizers.schedules.deserialize(config["learning_rate"])
    table = parameter_table(new, branches=report.branches(), allow_unknown=True)
    report.add(
        Entry("optimizer", kind.__name__, "replaced", "uu.AdamW", "u-mup learning-rate rules")
    )
    return AdamW(parameters=table, **config)
