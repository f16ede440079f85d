"""Which calls a Keras model makes during one eager pass, and the output tensor of each.

A *call site* is something whose ``call`` method is shadowed for the duration of the pass: every
leaf layer (a layer without tracked sublayers; ``InputLayer`` excluded, it is never called),
optionally every container layer too, and every non-layer Keras operation node of a Functional
model (``keras.ops.add(h, x)`` between layers becomes an ``Add`` node that the model calls).

Shadowing: an instance attribute ``call`` that calls the original bound method and then
``tape.watch``-es the floating-point tensors it returned, so one ``tape.gradient`` call can give
the gradient arriving at every output. Keras' ``Operation.__call__`` looks ``self.call`` up on
the instance, so the attribute takes effect without touching any class; it is set with
``object.__setattr__`` (bypassing Keras' attribute tracking) and removed in a ``finally`` block.
Only eager calls are logged: a layer called inside another layer's ``tf.function`` body is part
of that layer. A quantized layer calls ``quantized_call`` instead and is not logged.
"""

import contextlib
import dataclasses
from typing import Any, Callable, Iterator

import keras
import tensorflow as tf

from ..scales import layer_paths


@dataclasses.dataclass(frozen=True)
class CallSite:
    """A layer or operation whose calls are logged, with its path from the model."""

    path: str
    target: Any  # keras.layers.Layer or keras.Operation
    class_name: str


@dataclasses.dataclass(frozen=True)
class LoggedCall:
    """One call of a call site: its floating-point output tensors (``tf.nest.flatten`` order)."""

    name: str  # the path; ``path#k`` for the (k+1)-th call of the same site in one pass
    path: str
    call_index: int
    class_name: str
    tensors: tuple[tf.Tensor, ...]

    def tensor_names(self) -> list[str]:
        """Record names of the tensors: ``name``, or ``name[i]`` for a multi-output call."""
        if len(self.tensors) == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(len(self.tensors))]


def _is_container(layer: keras.layers.Layer) -> bool:
    return bool(getattr(layer, "_layers", []))


def call_sites(model: keras.layers.Layer, include_containers: bool = False) -> list[CallSite]:
    """Leaf layers (and containers if asked), then Functional operation nodes; each once."""
    sites: list[CallSite] = []
    seen: set[int] = set()

    def add(path: str, target: Any) -> None:
        if id(target) not in seen:
            seen.add(id(target))
            sites.append(CallSite(path, target, type(target).__name__))

    sublayers = layer_paths(model)
    for path, layer in sublayers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if include_containers or not _is_container(layer):
            add(path, layer)
    # Non-layer nodes of every Functional graph (the model's own and nested ones). Subclassed
    # models have no ``operations``; a Sequential's are all layers.
    graphs = [("", model), *((f"{path}/", layer) for path, layer in sublayers)]
    for prefix, graph in graphs:
        for operation in getattr(graph, "operations", None) or []:
            if not isinstance(operation, keras.layers.Layer):
                add(f"{prefix}{operation.name}", operation)
    return sites


_MISSING = object()


def _logging_call(
    site: CallSite,
    original: Callable[..., Any],
    tape: tf.GradientTape,
    log: list[LoggedCall],
    counts: dict[str, int],
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        outputs = original(*args, **kwargs)
        if tf.executing_eagerly():  # symbolic (traced) calls have no values to analyse
            index = counts.get(site.path, 0)
            counts[site.path] = index + 1
            tensors = tuple(
                t
                for t in tf.nest.flatten(outputs)
                if isinstance(t, tf.Tensor) and t.dtype.is_floating
            )
            for tensor in tensors:
                tape.watch(tensor)
            name = site.path if index == 0 else f"{site.path}#{index}"
            log.append(LoggedCall(name, site.path, index, site.class_name, tensors))
        return outputs

    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


@contextlib.contextmanager
def logged_calls(sites: list[CallSite], tape: tf.GradientTape) -> Iterator[list[LoggedCall]]:
    """Shadow each site's ``call`` while the block runs; yields the calls, in the order they
    returned (a container's after its children's). Every shadow is removed on exit."""
    log: list[LoggedCall] = []
    counts: dict[str, int] = {}
    saved: list[tuple[Any, Any]] = []
    try:
        for site in sites:
            saved.append((site.target, site.target.__dict__.get("call", _MISSING)))
            shadow = _logging_call(site, site.target.call, tape, log, counts)
            object.__setattr__(site.target, "call", shadow)
        yield log
    finally:
        for target, previous in reversed(saved):
            if previous is _MISSING:
                object.__delattr__(target, "call")
            else:
                object.__setattr__(target, "call", previous)
