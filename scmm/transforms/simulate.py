"""``simulate_fp8(model)`` / ``simulate_format(model, ...)``: any Keras model with simulated
number formats on every matmul, einsum and convolution.

The forward format rounds both operands of each product (activations and weights; both einsums
of attention), the backward format the gradient arriving at each product's output, with the
OCP-exact casts of ``scmm.formats`` (bit-exact against ``ml_dtypes``). The arithmetic itself
stays in the compute dtype: this is what an FP8 matmul with higher-precision accumulation sees,
not a speed-up. Keras's matmul layers become the ``simulated_layers`` twins; ``scmm.uu`` layers
get the formats as their ``precision`` argument, so ``unit_scale(simulate_fp8(m))`` and
``simulate_fp8(unit_scale(m))`` are the same model. ``head=False`` leaves the readout (the
last weight layer before an output) in the compute dtype.
"""

from typing import Any

import keras

from ..precision_settings import PrecisionSettings
from .graph import model_graph
from .readout import readout_layers
from .registry import MATMUL_LAYERS, is_layer, keras_class
from .report import Entry, Status, TransformReport
from .rewrite import CallSite, rewrite
from .registry import OP_TWINS, op_options
from .simulated_layers import SIMULATED, SimulatedOp
from .twins import copy_weights

# keras.ops products in a Functional graph: matmul and einsum become ``SimulatedOp`` layers;
# the others are not rounded (reported unhandled: write them as layers).
SIMULATED_OPS = ("Matmul", "Einsum")
PRODUCT_OPS = (*SIMULATED_OPS, "Dot", "Tensordot", "DotProductAttention", "Conv")


def simulate_fp8(
    model: keras.Model,
    forward: str = "e4m3",
    backward: str = "e5m2",
    rounding: str = "nearest",
    head: bool = True,
) -> keras.Model:
    """``simulate_format`` with OCP E4M3 forward and E5M2 backward formats."""
    return simulate_format(model, forward, backward, rounding, head)


def simulate_format(
    model: keras.Model,
    forward: str,
    backward: str,
    rounding: str = "nearest",
    head: bool = True,
) -> keras.Model:
    """A copy of ``model`` whose products round operands to ``forward`` and gradients to
    ``backward`` (``rounding``: "nearest" | "stochastic"); ``result.scmm_report`` lists what
    was simulated."""
    settings = _settings(forward, backward, rounding)
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError("simulate_format takes a built keras.Model (call it once first)")
    if not hasattr(model, "_nodes_by_depth") or isinstance(model, keras.Sequential):
        if not isinstance(model, keras.Sequential):
            raise ValueError(
                f"simulate_format walks Functional and Sequential models; {type(model).__name__}"
                " is subclassed: build it from scmm.uu layers with precision=..., or wrap its"
                " call in scmm.precision.scope(...)"
            )
    report = TransformReport(transform="simulate_format", scheme=f"{forward}/{backward}")
    functional = (
        model
        if not isinstance(model, keras.Sequential)
        else keras.Model(model.inputs, model.outputs)
    )
    heads = readout_layers(functional, {n.key: n for n in model_graph(functional)})
    pairs: list[tuple[Any, Any]] = []

    def clone(operation: Any) -> Any:
        if not is_layer(operation):
            return operation
        plain = PrecisionSettings() if (not head and id(operation) in heads) else settings
        new = _simulated(operation, plain, report)
        pairs.append((operation, new))
        return new

    def call(site: CallSite, mapping: dict[int, Any]) -> Any:
        del mapping
        if not is_layer(site.original):
            kind = type(site.original).__name__
            if kind in SIMULATED_OPS and not site.kwargs and len(site.args) == 2:
                function, names = OP_TWINS[kind]
                report.add(Entry(site.node.name, f"ops.{kind}", "replaced", "SimulatedOp"))
                layer = SimulatedOp(
                    function, op_options(site.original, names), settings, name=site.node.name
                )
                return layer(*site.args)
            status: Status = "unhandled" if kind in PRODUCT_OPS else "unchanged"
            report.add(Entry(site.node.name, f"ops.{kind}", status))
        return site.default()

    new = rewrite(functional, clone, call)
    for original, replacement in pairs:
        copy_weights(original, replacement, "copy")
    if isinstance(model, keras.Sequential):
        new = keras.Sequential(new.layers, name=model.name)
    report.warn_unhandled()
    new.scmm_report = report
    return new


def _settings(forward: str, backward: str, rounding: str) -> PrecisionSettings:
    options: dict[str, Any] = {
        "activations": forward,
        "weights": forward,
        "gradients": backward,
    }
    if rounding != "nearest":
        options["rounding"] = rounding
    try:
        settings = PrecisionSettings(**options)
    except TypeError as error:
        raise ValueError(f"rounding={rounding!r} is not supported here: {error}") from error
    settings.validate()
    return settings


def _has_products(layer: Any) -> bool:
    """A ``scmm.uu`` layer (or ``FunctionalOp``) that multiplies: only those take formats, so
    that both orders of ``unit_scale`` and ``simulate_fp8`` give the same layers."""
    for base in type(layer).__mro__:
        if base.__module__.startswith("keras.src.") and base.__name__ in MATMUL_LAYERS:
            return True
    return getattr(layer, "function", None) in ("matmul", "einsum", "dot_product_attention")


def _simulated(layer: Any, settings: PrecisionSettings, report: TransformReport) -> Any:
    config = layer.get_config()
    name = keras_class(layer)
    if name in SIMULATED:
        report.add(Entry(layer.name, name, "replaced", SIMULATED[name].__name__))
        return SIMULATED[name].from_config({**config, "precision": settings})
    if _has_products(layer) and "precision" in config:
        # scmm.uu layers (and already-simulated ones) take the formats as an argument.
        report.add(Entry(layer.name, type(layer).__name__, "replaced", "precision set"))
        return type(layer).from_config({**config, "precision": settings})
    own = type(layer).__module__.startswith("scmm.")
    if name is None and not own and layer.weights:
        report.add(Entry(layer.name, type(layer).__name__, "unhandled", detail="unknown layer"))
    else:
        report.add(Entry(layer.name, type(layer).__name__, "unchanged", detail="no product"))
    return layer.__class__.from_config(config)
