"""The call graph of a Functional Keras model, and the residual adds in it.

A Functional model records every layer call and every ``keras.ops`` call on symbolic tensors as
a node; each symbolic tensor remembers the node that made it (``_keras_history``: operation,
node index, output index). That history is the one Keras internal this module reads; everything
else (what to replace, how) is the transform's.

A *residual add* is an add of two tensors where one is an ancestor of the other: ``x + f(x)``,
whatever ``f`` is (one layer or a whole pre-norm block). The ancestor is the skip, the other
input the branch output, and the branch is every node on a path between them.
"""

import dataclasses
from typing import Any, Iterable, Literal, Optional

import keras

BranchKind = Literal["sequence", "token"]
"""What a residual branch mixes: across positions (attention, conv) or within a token (an MLP)."""


@dataclasses.dataclass
class GraphNode:
    """One call of an operation (a layer or a ``keras.ops`` op) in the model's graph."""

    key: int
    node: Any
    operation: Any
    parents: list[int]
    """Keys of the nodes that produced this node's symbolic inputs (in argument order)."""

    @property
    def name(self) -> str:
        """The operation's name (unique within a model)."""
        return str(self.operation.name)

    @property
    def input_tensors(self) -> list[Any]:
        """The symbolic tensors passed in, flattened in argument order."""
        return list(self.node.input_tensors)


def producer(tensor: Any) -> Any:
    """The Keras node that computed a symbolic ``tensor``."""
    history = tensor._keras_history  # pylint: disable=protected-access
    return history.operation._inbound_nodes[history.node_index]  # pylint: disable=protected-access


def model_graph(model: keras.Model) -> list[GraphNode]:
    """Every node between the model's inputs and outputs, parents before children."""
    order: list[GraphNode] = []
    done: set[int] = set()
    # Iterative post-order walk from the outputs (a deep model would overflow recursion).
    stack: list[tuple[Any, bool]] = [(producer(t), False) for t in reversed(model.outputs)]
    while stack:
        node, parents_done = stack.pop()
        if id(node) in done:
            continue
        if not parents_done:
            stack.append((node, True))
            stack.extend((producer(t), False) for t in reversed(node.input_tensors))
            continue
        done.add(id(node))
        parents = [id(producer(t)) for t in node.input_tensors]
        order.append(GraphNode(key=id(node), node=node, operation=node.operation, parents=parents))
    return order


def ancestors(graph: list[GraphNode]) -> dict[int, frozenset[int]]:
    """For each node, the keys of every node it depends on (not itself)."""
    result: dict[int, frozenset[int]] = {}
    for node in graph:
        found: set[int] = set()
        for parent in node.parents:
            found.add(parent)
            found |= result[parent]
        result[node.key] = frozenset(found)
    return result


@dataclasses.dataclass
class ResidualAdd:
    """An add ``skip + branch(skip)`` found in the graph."""

    add: int
    """Key of the add node."""
    skip_position: int
    """Which of the add's two inputs is the skip (0 or 1)."""
    skip_producer: int
    branch: frozenset[int]
    """Keys of the nodes computing the branch output from the skip (the branch output's node
    included)."""
    kind: BranchKind


def is_binary_add(operation: Any, node: Any) -> bool:
    """Whether a node adds exactly two tensors (``x + y``, ``keras.ops.add`` or ``Add()``)."""
    if isinstance(operation, keras.layers.Add):
        return len(node.input_tensors) == 2
    kind = type(operation)
    return kind.__name__ == "Add" and kind.__module__.startswith("keras.src.ops.numpy")


def find_residual_adds(
    graph: list[GraphNode], sequence_mixers: Iterable[type], sequence_ops: Iterable[str]
) -> list[ResidualAdd]:
    """The residual adds of ``graph`` in graph order.

    A branch is a ``sequence`` branch when it holds a layer of a ``sequence_mixers`` class or an
    op whose class name is in ``sequence_ops`` (attention, softmax over positions, conv).
    """
    by_key = {node.key: node for node in graph}
    depends = ancestors(graph)
    mixers, op_names = tuple(sequence_mixers), set(sequence_ops)
    found = []
    for node in graph:
        if not is_binary_add(node.operation, node.node) or len(node.parents) != 2:
            continue
        first, second = node.parents
        skip_position = _skip_position(first, second, depends)
        if skip_position is None:
            continue
        skip, branch_end = (first, second) if skip_position == 0 else (second, first)
        branch = frozenset(
            key for key in depends[branch_end] | {branch_end} if skip in depends[key]
        )
        is_sequence = any(
            isinstance(by_key[key].operation, mixers)
            or type(by_key[key].operation).__name__ in op_names
            for key in branch
        )
        found.append(
            ResidualAdd(
                add=node.key,
                skip_position=skip_position,
                skip_producer=skip,
                branch=branch,
                kind="sequence" if is_sequence else "token",
            )
        )
    return found


def _skip_position(first: int, second: int, depends: dict[int, frozenset[int]]) -> Optional[int]:
    if first == second:
        return None  # x + x: not a residual
    if first in depends[second]:
        return 0
    if second in depends[first]:
        return 1
    return None


def descendants_of(graph: list[GraphNode], key: int) -> set[int]:
    """Keys of every node that depends on node ``key`` (not itself)."""
    depends = ancestors(graph)
    return {node.key for node in graph if key in depends[node.key]}
