"""Building a layer's ``scmm.uu`` twin from its config, and moving weights across.

A ``uu`` class takes its Keras base's constructor arguments, so the twin is
``Twin.from_config(layer.get_config() + unit-scaling arguments)``. The kernel initialisers are
dropped from the config: a unit-scaled kernel starts at N(0, 1) (the twin's default), whatever
the original used (Glorot, nanoGPT's N(0, 0.02)).
"""

import inspect
from typing import Any, Optional

import keras
import numpy as np

# Initialisers the twins replace with their unit-scale defaults.
_UNIT_INITIALIZERS = ("kernel_initializer", "embeddings_initializer")


def _accepts(cls: Any, name: str) -> bool:
    parameters = inspect.signature(cls).parameters
    return name in parameters


def make_twin(
    layer: keras.layers.Layer,
    twin: Any,
    scheme: str,
    constraint: Optional[str] = None,
    role: Optional[str] = None,
) -> keras.layers.Layer:
    """``twin`` configured like ``layer``, plus scheme, constraint, role and formats."""
    config = {k: v for k, v in layer.get_config().items() if k not in _UNIT_INITIALIZERS}
    extra: dict[str, Any] = {"scheme": scheme}
    if constraint is not None:
        extra["constraint"] = constraint
    if role is not None:
        extra["role"] = role
    precision = getattr(layer, "precision", None)
    if precision is not None:
        extra["precision"] = precision
    for key, value in extra.items():
        if _accepts(twin, key):
            config[key] = value
    return twin.from_config(config)


def copy_weights(original: keras.layers.Layer, new: keras.layers.Layer, mode: str) -> None:
    """Give ``new`` the weights of ``original``: "copy" as they are, "rescale" with every
    kernel/table divided by its std, "init" (nothing: the new layer's own unit init)."""
    if mode == "init" or not original.weights:
        return
    values = original.get_weights()
    shapes = [tuple(w.shape) for w in new.weights]
    if shapes != [v.shape for v in values]:
        raise ValueError(
            f"cannot copy the weights of {original.name!r} into {type(new).__name__}: shapes"
            f" {[v.shape for v in values]} vs {shapes}"
        )
    if mode == "rescale":
        values = [unit_std(v) if v.ndim >= 2 else v for v in values]
    new.set_weights(values)


def unit_std(value: np.ndarray) -> np.ndarray:
    """``value`` divided by its std (unchanged when constant)."""
    std = float(np.std(value))
    return value / std if std > 0 else value
