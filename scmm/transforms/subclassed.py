"""``unit_scale`` for subclassed models: swap each known layer's class in place.

A subclassed model's ``call`` is Python, so there is no graph: its adds and ``keras.ops``
calls are invisible (they are named in the report's notes). Known layers are turned into their
``scmm.uu`` twins by assigning ``layer.__class__`` (Keras uses the new ``call`` from the next
call on and the weight paths stay). The twin's own attributes (scheme, constraint, role, ...)
come from a fresh twin built from the layer's config.

The input model is not modified unless ``inplace=True``: a copy is made from its config when
the class supports ``get_config``/``from_config``; otherwise a clear error says to pass
``inplace=True``.
"""

from typing import Any

import keras

from .registry import LAYER_TWINS, NEUTRAL_LAYERS, keras_class, uu_class
from .report import Entry, Status, TransformReport
from .twins import make_twin, unit_std

# What a fresh twin sets that the swapped layer must take over even if it has the attribute.
_UNIT_ATTRIBUTES = ("scheme", "constraint", "_explicit_constraint", "precision")


def copy_of(model: keras.Model) -> keras.Model:
    """A separate model with the same config and weights, or ValueError."""
    try:
        clone = type(model).from_config(model.get_config())
        clone.build_from_config(model.get_build_config())
        clone.set_weights(model.get_weights())
    except Exception as error:  # pylint: disable=broad-exception-caught
        raise ValueError(
            f"cannot copy the subclassed model {model.name!r} ({type(model).__name__}) from its"
            f" config ({type(error).__name__}: {error}); pass inplace=True to unit-scale it in"
            " place, or implement get_config/from_config"
        ) from error
    return clone


def swap_class(layer: keras.layers.Layer, twin_layer: keras.layers.Layer) -> None:
    """Turn ``layer`` into ``twin_layer``'s class, keeping its variables."""
    layer.__class__ = type(twin_layer)
    for key, value in vars(twin_layer).items():
        if key in _UNIT_ATTRIBUTES or (key not in vars(layer) and not _is_state(value)):
            object.__setattr__(layer, key, value)


def _is_state(value: Any) -> bool:
    return isinstance(value, (keras.Variable, keras.layers.Layer))


def reinitialise(layer: keras.layers.Layer, twin_layer: keras.layers.Layer) -> None:
    """Give ``layer`` the fresh unit-scale weights of ``twin_layer`` built at its shapes."""
    twin_layer.build_from_config(layer.get_build_config())
    layer.set_weights(twin_layer.get_weights())


def unit_scale_subclassed(
    model: keras.Model,
    scheme: str,
    replace: Any,
    weights: str,
    inplace: bool,
    report: TransformReport,
) -> keras.Model:
    """Swap every known layer of a subclassed ``model`` (or of its copy) for its twin."""
    target = model if inplace else copy_of(model)
    report.notes.append(
        "subclassed model: adds and keras.ops calls inside call() are not visible, so residual"
        " adds are not rewritten; write them with scmm.uu.Residual or scmm.U.residual_add"
    )
    # pylint: disable-next=protected-access
    for layer in target._flatten_layers(include_self=False, recursive=True):
        name = keras_class(layer)
        user = replace.get(layer.name) or replace.get(type(layer))
        if user is not None:
            if not isinstance(user, type):
                raise ValueError(
                    f"replace[{layer.name!r}]: a subclassed model is changed in place, so the"
                    f" replacement must be a layer class to swap in, got {user!r}"
                )
            twin = make_twin(layer, user, scheme)
        elif name in LAYER_TWINS:
            twin = make_twin(layer, uu_class(name), scheme)
        else:
            status: Status = "scale-neutral" if name in NEUTRAL_LAYERS else "unhandled"
            report.add(Entry(layer.name, type(layer).__name__, status))
            continue
        kind = type(layer).__name__
        if weights == "init":
            reinitialise(layer, twin)
        elif weights == "rescale":
            layer.set_weights([unit_std(v) if v.ndim >= 2 else v for v in layer.get_weights()])
        swap_class(layer, twin)
        report.add(Entry(layer.name, kind, "replaced", f"uu.{type(twin).__name__}"))
    return target
