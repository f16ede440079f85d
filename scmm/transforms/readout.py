"""Which layers of a graph are the readout: the weight layers whose output reaches a model
output through scale-free or elementwise nodes only (the logits' projection)."""

from typing import Any

import keras

from .graph import GraphNode, producer
from .registry import NEUTRAL_LAYERS, NEUTRAL_OPS, is_layer, keras_class

# What may sit between the readout and an output (activations, dropout, reshapes).
_PASSTHROUGH = (*NEUTRAL_LAYERS, *NEUTRAL_OPS, "Activation", "Softmax", "Dropout", "ReLU")
_WEIGHT_LAYERS = ("Dense", "EinsumDense")


def readout_layers(model: keras.Model, by_key: dict[int, GraphNode]) -> set[int]:
    """ids of the readout layer objects of ``model`` (``by_key``: its graph by node key)."""
    found: set[int] = set()
    stack: list[Any] = [producer(t) for t in model.outputs]
    while stack:
        node = by_key.get(id(stack.pop()))
        if node is None:
            continue
        name = keras_class(node.operation) or getattr(node.operation, "simulates", None)
        if is_layer(node.operation) and name in _WEIGHT_LAYERS:
            found.add(id(node.operation))
        elif name in _PASSTHROUGH:
            stack.extend(by_key[p].node for p in node.parents)
    return found
