"""Rebuild a Functional model node by node with ``keras.models.clone_model``.

``clone_model`` calls ``clone_function(layer)`` once per layer (a shared layer stays shared)
and ``call_function(new_layer, *args, **kwargs)`` once per call, with the *new* tensors. A
transform also needs to know *which* call of the original graph it is at (to rewrite one add
as a residual merge, or to give one branch its split input). ``rewrite`` keeps that map: new
symbolic tensor -> the original tensor it stands for, so each call is matched to its original
node by its inputs. Everything else is Keras's own cloning.
"""

import dataclasses
from typing import Any, Callable, Optional

import keras
from keras import tree

from .graph import GraphNode, model_graph

Call = Callable[..., Any]


@dataclasses.dataclass
class CallSite:
    """One call being rebuilt: its original node, the new operation and the new arguments."""

    node: GraphNode
    original: Any
    """The operation (layer or op) of the original model."""
    operation: Any
    """Its replacement (what ``clone_function`` returned)."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def default(self) -> Any:
        """Call the replacement on the new arguments (what clone_model would do)."""
        return self.operation(*self.args, **self.kwargs)

    def original_input_of(self, new_tensor: Any, mapping: dict[int, Any]) -> Any:
        """The original tensor a new argument tensor stands for."""
        return mapping[id(new_tensor)]


CloneFn = Callable[[Any], Any]
CallFn = Callable[[CallSite, dict[int, Any]], Any]


def rewrite(model: keras.Model, clone_function: CloneFn, call_function: CallFn) -> keras.Model:
    """A new Functional model: every operation replaced by ``clone_function`` and every call
    made by ``call_function(site, new_to_original)`` (``site.default()`` for no change)."""
    if isinstance(model, keras.Sequential) or not hasattr(model, "_nodes_by_depth"):
        raise TypeError(f"rewrite needs a Functional model, got {type(model).__name__}")
    nodes = {node.key: node for node in model_graph(model)}
    new_inputs = [
        keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=_input_name(t))
        for t in model.inputs
    ]
    new_to_original: dict[int, Any] = {id(n): o for n, o in zip(new_inputs, model.inputs)}
    clone_to_original: dict[int, Any] = {}

    def clone(operation: Any) -> Any:
        replacement = clone_function(operation)
        clone_to_original[id(replacement)] = operation
        return replacement

    def call(operation: Any, *args: Any, **kwargs: Any) -> Any:
        original = clone_to_original[id(operation)]
        node = _original_node(original, (args, kwargs), new_to_original, nodes)
        site = CallSite(node=node, original=original, operation=operation, args=args, kwargs=kwargs)
        outputs = call_function(site, new_to_original)
        for new, old in zip(tree.flatten(outputs), node.node.output_tensors):
            new_to_original[id(new)] = old
        return outputs

    # input_tensors must have model.input's structure (a tensor, a list or a dict).
    structured = keras.tree.pack_sequence_as(model.input, new_inputs)
    return keras.models.clone_model(
        model, input_tensors=structured, clone_function=clone, call_function=call
    )


def _input_name(tensor: Any) -> Optional[str]:
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else str(history.operation.name)


def _original_node(
    original: Any, arguments: Any, mapping: dict[int, Any], nodes: dict[int, GraphNode]
) -> GraphNode:
    inputs = [mapping[id(t)] for t in tree.flatten(arguments) if id(t) in mapping]
    wanted = [id(t) for t in inputs]
    for node in original._inbound_nodes:  # pylint: disable=protected-access
        if id(node) in nodes and [id(t) for t in node.input_tensors] == wanted:
            return nodes[id(node)]
    raise RuntimeError(f"rewrite: no call of {original.name!r} in the model takes these inputs")
