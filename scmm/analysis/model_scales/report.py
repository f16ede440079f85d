"""What ``analyse`` returns: the records of one pass, grouped by layer call and by weight.

The flat ``ModelScales.records`` are the same ``ScaleRecord`` kind the char LM's ``--analyse``
writes (``scales.json``, drawn by ``plot_scales``): ``"forward"`` (each call's output),
``"backward"`` (the gradient arriving at that output, then ``OUTPUT_GRADIENT_NAME``: the
gradient arriving at the model's outputs) and ``"weight_gradient"`` (by ``variable.path``), plus
``WEIGHT_PASS`` records of the weights themselves, which the figure does not draw.
"""

import dataclasses
from typing import Optional

from ..scales import ScaleRecord, tensor_record

WEIGHT_PASS = "weight"
OUTPUT_GRADIENT_NAME = "loss/outputs"


def weight_record(name: str, value: object, step: int) -> ScaleRecord:
    """Statistics of a weight's value, as a ``WEIGHT_PASS`` record (``tensor_record`` only
    accepts the plotted passes, so the pass is set afterwards)."""
    return dataclasses.replace(tensor_record(name, "forward", value, step), pass_=WEIGHT_PASS)


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One call of a layer (or Functional operation node) in the pass."""

    name: str
    """Record name: the layer's path from the model, ``path#k`` for its (k+1)-th call."""
    path: str
    call_index: int
    class_name: str
    outputs: tuple[ScaleRecord, ...]
    """Forward records, one per floating-point output tensor (``name[i]`` if several)."""
    gradients: tuple[ScaleRecord, ...]
    """Backward records: d objective / d each output, in the same order."""
    weights: tuple[str, ...]
    """``variable.path`` of the layer's own trainable weights (their gradients are summed over
    all the layer's calls: see ``ModelScales.weights``)."""

    @property
    def output(self) -> ScaleRecord:
        """The forward record of a single-output call."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.name!r} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    @property
    def gradient(self) -> ScaleRecord:
        """The backward record of a single-output call."""
        if len(self.gradients) != 1:
            raise ValueError(f"{self.name!r} has {len(self.gradients)} outputs; use .gradients")
        return self.gradients[0]


@dataclasses.dataclass(frozen=True)
class WeightScales:
    """A trainable weight: its value and the gradient d objective / d w."""

    path: str
    layer: str
    """Path of the innermost layer owning it ("" for the model's own weights)."""
    value: ScaleRecord
    gradient: ScaleRecord


@dataclasses.dataclass(frozen=True)
class ModelScales:  # pylint: disable=too-many-instance-attributes
    """Scale statistics of one forward and backward pass of a Keras model (see ``analyse``)."""

    step: int
    objective: str
    """``"unit_normal"``, ``"loss"`` or ``"compiled_loss"`` (``objective.py``)."""
    objective_value: float
    calls: tuple[LayerCall, ...]
    """In the order the calls returned (the forward order)."""
    output_gradients: tuple[ScaleRecord, ...]
    weights: tuple[WeightScales, ...]
    """In ``model.trainable_weights`` order."""
    json_path: Optional[str] = None
    png_path: Optional[str] = None

    @property
    def records(self) -> list[ScaleRecord]:
        """Forward, backward, weight-gradient then weight records (``scales.json`` order)."""
        return [
            *(r for c in self.calls for r in c.outputs),
            *(r for c in self.calls for r in c.gradients),
            *self.output_gradients,
            *(w.gradient for w in self.weights),
            *(w.value for w in self.weights),
        ]

    def call(self, name: str) -> LayerCall:
        """The call of that record name (a path, or ``path#k``)."""
        for call in self.calls:
            if call.name == name:
                return call
        raise KeyError(f"no layer call {name!r}; calls: {[c.name for c in self.calls]}")

    def calls_of(self, path: str) -> list[LayerCall]:
        """Every call of the layer at ``path``, in order."""
        return [c for c in self.calls if c.path == path]

    def weight(self, path: str) -> WeightScales:
        """The weight of that ``variable.path``."""
        for weight in self.weights:
            if weight.path == path:
                return weight
        raise KeyError(f"no trainable weight {path!r}; weights: {[w.path for w in self.weights]}")
