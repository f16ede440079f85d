"""Which calls a Keras model makes during one eager pass, and the output tensor of each.

A *call site* is something whose ``call`` method is shadowed for the duration of the pass: every
sublayer (``InputLayer`` excluded, it is never called) and every non-layer Keras operation node
of a Functional model (``keras.ops.add(h, x)`` between layers becomes an ``Add`` node that the
model calls). Which calls are logged: every call of a leaf layer (no tracked sublayers) or an
operation node; a container layer's call only when no call inside it was logged (it computes
with its sublayers' weights without calling them, or calls them in a traced function: it is
then a leaf in effect, and this avoids a hole in the record), or always with
``include_containers``.

Shadowing: an instance attribute ``call`` that calls the original bound method and then
``tape.watch``-es the floating-point tensors it returned, so one ``tape.gradient`` call can give
the gradient arriving at every output. Keras' ``Operation.__call__`` looks ``self.call`` up on
the instance, so the attribute takes effect without touching any class; it is set with
``object.__setattr__`` (bypassing Keras' attribute tracking) and removed in a ``finally`` block.
Only eager calls are logged: a layer called inside another layer's ``tf.function`` body is part
of that layer (Keras 3 gives no weight gradients through such a body anyway). A Keras RNN layer
runs its cell eagerly once per step: the cell's calls are logged (``lstm/lstm_cell``,
``lstm/lstm_cell#1``, ...), the RNN layer's own output only with ``include_containers``. A
quantized layer calls ``quantized_call`` instead and is not logged.
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

    name: str  # the path; ``path#k`` for the (k+1)-th logged call of the same site
    path: str
    call_index: int
    class_name: str
    tensors: tuple[tf.Tensor, ...]

    def tensor_names(self) -> list[str]:
        """Record names of the tensors: ``name``, or ``name[i]`` for a multi-output call."""
        if len(self.tensors) == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(len(self.tensors))]


def call_sites(model: keras.layers.Layer) -> list[CallSite]:
    """Every sublayer but input layers, then the Functional operation nodes; each once."""
    sites: list[CallSite] = []
    seen: set[int] = set()

    def add(path: str, target: Any) -> None:
        if id(target) not in seen:
            seen.add(id(target))
            sites.append(CallSite(path, target, type(target).__name__))

    sublayers = layer_paths(model)
    for path, layer in sublayers:
        if not isinstance(layer, keras.layers.InputLayer):
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


def _logging_call(  # pylint: disable=too-many-arguments
    site: CallSite,
    original: Callable[..., Any],
    tape: tf.GradientTape,
    log: list[LoggedCall],
    counts: dict[str, int],
    include_containers: bool,
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        logged_before = len(log)
        outputs = original(*args, **kwargs)
        inner_logged = len(log) > logged_before
        # Symbolic (traced) calls have no values to analyse.
        if tf.executing_eagerly() and (include_containers or not inner_logged):
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
def logged_calls(
    sites: list[CallSite], tape: tf.GradientTape, include_containers: bool = False
) -> Iterator[list[LoggedCall]]:
    """Shadow each site's ``call`` while the block runs; yields the logged calls (see the module
    docstring), in the order they returned (a container's after its children's). Every shadow
    is removed on exit."""
    log: list[LoggedCall] = []
    counts: dict[str, int] = {}
    saved: list[tuple[Any, Any]] = []
    try:
        for site in sites:
            saved.append((site.target, site.target.__dict__.get("call", _MISSING)))
            shadow = _logging_call(site, site.target.call, tape, log, counts, include_containers)
            object.__setattr__(site.target, "call", shadow)
        yield log
    finally:
        for target, previous in reversed(saved):
            if previous is _MISSING:
                object.__delattr__(target, "call")
            else:
                object.__setattr__(target, "call", previous)
