"""The scalar whose gradients ``analyse`` records: a loss on targets, or a unit-normal probe.

Without targets the objective is ``sum_k sum(y_k * g_k)`` over the model's floating-point outputs
``y_k`` (``tf.nest.flatten`` order), with ``g_k = np.random.default_rng(seed).standard_normal(
y_k.shape)`` drawn in that order: the gradient arriving at each output is exactly ``g_k``, an
N(0, 1) upstream gradient, which is how the unit-scaling paper analyses a model's backward pass
independently of any loss. With targets it is ``loss(targets, outputs)`` (averaged if the loss
returns one value per example), or the compiled model's ``compute_loss`` (compiled losses, loss
weights and ``model.losses``) when no ``loss`` is given.
"""

import dataclasses
from typing import Any, Callable, Optional, Union

import keras
import numpy as np
import tensorflow as tf

LossArgument = Union[None, str, Callable[..., Any]]
UNIT_NORMAL = "unit_normal"


def float_leaves(structure: Any) -> list[tf.Tensor]:
    """The floating-point tensors of a nest, in ``tf.nest.flatten`` order."""
    return [
        t for t in tf.nest.flatten(structure) if isinstance(t, tf.Tensor) and t.dtype.is_floating
    ]


@dataclasses.dataclass(frozen=True)
class Objective:
    """How the scalar is formed: ``kind`` is ``UNIT_NORMAL``, ``"loss"`` or ``"compiled_loss"``;
    ``describe`` names it for messages (e.g. ``"loss 'mse'"``)."""

    kind: str
    describe: str
    function: Optional[Callable[..., Any]] = None


def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return repr(loss)
    return getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__


def choose_objective(model: keras.layers.Layer, targets: Any, loss: LossArgument) -> Objective:
    """Pick the objective from the arguments (see the module docstring); raises ValueError for
    a loss without targets, targets without any loss, or a loss that is not a loss."""
    if targets is None:
        if loss is not None:
            raise ValueError(
                f"loss={_loss_name(loss)} was given without targets: pass targets=..., or"
                " neither (a unit-normal upstream gradient is then used)"
            )
        return Objective(UNIT_NORMAL, "a unit-normal upstream gradient")
    if loss is not None:
        try:
            function = keras.losses.get(loss) if isinstance(loss, str) else loss
        except ValueError as error:
            raise ValueError(f"loss={loss!r} is not a Keras loss: {error}") from error
        if not callable(function):
            raise ValueError(f"loss must be a Keras loss name, object or callable, got {loss!r}")
        return Objective("loss", f"loss {_loss_name(loss)}", function)
    if isinstance(model, keras.Model) and getattr(model, "compiled", False) and model.loss:
        return Objective("compiled_loss", f"the compiled loss {_loss_name(model.loss)}")
    raise ValueError(
        f"targets were given but model {model.name!r} has no compiled loss: pass loss=..."
        " (a Keras loss name, object or callable), or compile the model with one"
    )


def _shapes(leaves: list[Any]) -> list[tuple[int, ...]]:
    return [tuple(np.shape(leaf)) for leaf in leaves]


def check_targets_fit(outputs: Any, targets: Any) -> None:
    """Same number of tensors as the model's float outputs, and the same batch (first) dim."""
    output_leaves = float_leaves(outputs)
    target_leaves = tf.nest.flatten(targets)
    if len(target_leaves) != len(output_leaves):
        raise ValueError(
            f"targets hold {len(target_leaves)} tensor(s) of shapes {_shapes(target_leaves)}, but"
            f" the model returns {len(output_leaves)} floating-point output(s) of shapes"
            f" {_shapes(output_leaves)}"
        )
    for index, (target, output) in enumerate(zip(target_leaves, output_leaves)):
        target_shape, output_shape = tuple(np.shape(target)), tuple(output.shape)
        if not target_shape or target_shape[0] != output_shape[0]:
            raise ValueError(
                f"targets[{index}] has shape {target_shape}, which does not fit the model"
                f" output of shape {output_shape}: the first (batch) dimensions differ"
            )


def _mean_if_per_example(value: Any) -> tf.Tensor:
    value = tf.cast(tf.convert_to_tensor(value), tf.float32)
    return tf.reduce_mean(value) if value.shape.rank else value


def evaluate_objective(  # pylint: disable=too-many-arguments
    objective: Objective,
    model: keras.layers.Layer,
    inputs: Any,
    outputs: Any,
    targets: Any,
    seed: int,
) -> tf.Tensor:
    """The float32 scalar to differentiate (call under the tape that watched the outputs)."""
    if objective.kind == UNIT_NORMAL:
        rng = np.random.default_rng(seed)
        total = tf.constant(0.0, tf.float32)
        for output in float_leaves(outputs):
            upstream = tf.constant(rng.standard_normal(tuple(output.shape)), tf.float32)
            total += tf.reduce_sum(tf.cast(output, tf.float32) * upstream)
        return total
    check_targets_fit(outputs, targets)
    try:
        if objective.kind == "compiled_loss":
            assert isinstance(model, keras.Model)
            value = model.compute_loss(x=inputs, y=targets, y_pred=outputs)
        else:
            assert objective.function is not None
            output_leaves = float_leaves(outputs)
            target_leaves = tf.nest.flatten(targets)
            value = tf.add_n(
                [
                    _mean_if_per_example(objective.function(target, output))
                    for target, output in zip(target_leaves, output_leaves)
                ]
            )
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as error:
        raise ValueError(
            f"targets of shapes {_shapes(tf.nest.flatten(targets))} do not fit the outputs of"
            f" shapes {_shapes(float_leaves(outputs))} under {objective.describe}: {error}"
        ) from error
    return _mean_if_per_example(value)
