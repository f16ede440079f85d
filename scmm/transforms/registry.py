"""What the transforms know about each Keras layer class and ``keras.ops`` op.

Three kinds:

- *twins*: Keras layers with a ``scmm.uu`` subclass of the same name (swapped by
  ``unit_scale``), and ``keras.ops`` ops with a ``scmm.U`` function (a ``FunctionalOp``);
- *scale-neutral*: layers and ops that move values without changing their scale (reshapes,
  transposes, slices, concatenation, casts): kept as they are;
- everything else is *unhandled*: kept, and named in the report with a warning.

Only exact classes match: a user's subclass of ``Dense`` may compute something else, so it is
unhandled unless the user's ``replace`` map names it.
"""

from typing import Any, Optional

import keras

# Keras layer class name -> scmm.uu class name (same name: the drop-in rule).
LAYER_TWINS = (
    "Dense",
    "EinsumDense",
    "Embedding",
    "LayerNormalization",
    "RMSNormalization",
    "MultiHeadAttention",
    "Conv1D",
    "Dropout",
    "Activation",
    "ReLU",
    "Softmax",
    "Add",
)

# Layers that change no scale (or are bookkeeping).
NEUTRAL_LAYERS = (
    "InputLayer",
    "Reshape",
    "Flatten",
    "Permute",
    "Identity",
    "Concatenate",
    "RepeatVector",
    "Cropping1D",
    "Masking",
)

# keras.ops op class name -> (scmm.U function, constructor arguments passed on as options).
OP_TWINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Matmul": ("matmul", ()),
    "Einsum": ("einsum", ("subscripts",)),
    "Add": ("add", ()),
    "Relu": ("relu", ()),
    "Gelu": ("gelu", ("approximate",)),
    "Silu": ("silu", ()),
    "Softmax": ("softmax", ("axis",)),
}

NEUTRAL_OPS = (
    "Reshape",
    "Transpose",
    "ExpandDims",
    "Squeeze",
    "Concatenate",
    "GetItem",
    "Cast",
    "Split",
    "Stack",
    "Unstack",
    "Flip",
    "Roll",
    "MoveAxis",
    "SwapAxes",
)

# What marks a residual branch as mixing across positions (u-mup's "attention" branches).
SEQUENCE_LAYERS = ("MultiHeadAttention", "Conv1D", "Softmax")
SEQUENCE_OPS = ("Softmax", "DotProductAttention", "Conv")

# Layers whose kernel is a matmul operand (simulate_fp8 rounds them; the readout is one).
MATMUL_LAYERS = ("Dense", "EinsumDense", "Conv1D", "MultiHeadAttention")


def is_layer(operation: Any) -> bool:
    """A layer (as opposed to a ``keras.ops`` op recorded in a Functional graph)."""
    return isinstance(operation, keras.layers.Layer)


def keras_class(operation: Any) -> Optional[str]:
    """The class name when ``operation`` is exactly a Keras built-in (not a subclass), or the
    Keras class a ``simulated_layers`` twin stands for."""
    simulates = getattr(type(operation), "simulates", "")
    if simulates:
        return str(simulates)
    module = type(operation).__module__
    if not module.startswith("keras.src."):
        return None
    return type(operation).__name__


def uu_class(name: str) -> Any:
    """The ``scmm.uu`` class called ``name``."""
    from .. import uu  # pylint: disable=import-outside-toplevel

    if not hasattr(uu, name):
        raise NotImplementedError(f"scmm.uu has no {name} yet")
    return getattr(uu, name)


def op_options(operation: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The constructor arguments ``names`` of a ``keras.ops`` op object."""
    config = operation.get_config() if hasattr(operation, "get_config") else {}
    options = {}
    for name in names:
        value = config.get(name, getattr(operation, name, None))
        if value is not None:
            options[name] = value
    return options
