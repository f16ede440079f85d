"""Unit-scaled layer and RMS normalisation under ``keras.ops`` names.

A normalised activation is already unit in the forward pass, and the gradient through the
normalisation is unit for a unit output gradient, so x gets no scaling: the forward pass is
exactly Keras's. The gain (gamma / scale) and offset (beta) are parameters (cut edges): each
of their entries' gradients sums one term per *row* (rows = x.size / gain.size, every position
outside the normalised axes), so it is scaled by rows^-1/2, unit at initialisation. The row
count is a Python number when x's other dimensions are static, else a scalar tensor from
``tf.shape`` (a Keras model's None batch).
"""

from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

from ..uscale.batch_split import global_rows
from ..uscale.scaling import Factor, scaling

Axis = Union[int, Sequence[int]]


def normalised_axes(x: tf.Tensor, axis: Axis, what: str) -> list[int]:
    """``axis`` as sorted non-negative axes of x; a ValueError if out of range or repeated."""
    rank = len(x.shape)
    axes = [axis] if isinstance(axis, int) else list(axis)
    if not axes or not all(isinstance(a, int) for a in axes):
        raise ValueError(f"{what} axis must be an int or a list of ints, got {axis!r}")
    resolved = []
    for a in axes:
        if not -rank <= a < rank:
            raise ValueError(f"{what} axis {a} is out of range for an input of rank {rank}")
        resolved.append(a % rank)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"{what} axis {axis!r} repeats an axis")
    return sorted(resolved)


def parameter_rows(x: tf.Tensor, axes: Sequence[int], what: str) -> Factor:
    """Positions outside ``axes``: a Python int when static, else a float32 scalar tensor."""
    normalised = [x.shape[a] for a in axes]
    if any(dim is None for dim in normalised):
        raise ValueError(f"{what} needs static sizes on the normalised axes, got {x.shape}")
    others = [x.shape[a] for a in range(len(x.shape)) if a not in axes]
    if all(dim is not None for dim in others):
        rows = 1
        for dim in others:
            rows *= int(dim)
        return global_rows(rows)
    size = 1
    for dim in normalised:
        size *= int(dim)
    return global_rows(tf.cast(tf.size(x), tf.float32) / float(size))


def _rsqrt(rows: Factor) -> Factor:
    return rows**-0.5 if isinstance(rows, int) else tf.math.rsqrt(rows)


def _scaled_parameter(
    parameter: Optional[tf.Tensor], x: tf.Tensor, axes: Sequence[int], grad_scale: Factor, what: str
) -> Optional[tf.Tensor]:
    if parameter is None:
        return None
    parameter = tf.convert_to_tensor(parameter)
    expected = tuple(x.shape[a] for a in axes)
    if tuple(parameter.shape) != expected:
        raise ValueError(
            f"{what} has shape {tuple(parameter.shape)}; expected {expected}, the input's"
            f" sizes on the normalised axes {list(axes)}"
        )
    return scaling(parameter, backward=grad_scale)


def check_epsilon(epsilon: Optional[float], what: str) -> None:
    """A ValueError unless ``epsilon`` is None or a number >= 0."""
    if epsilon is not None and not (isinstance(epsilon, (int, float)) and epsilon >= 0):
        raise ValueError(f"{what} epsilon must be a number >= 0 or None, got {epsilon!r}")


def layer_norm(
    x: tf.Tensor,
    gamma: Optional[tf.Tensor] = None,
    beta: Optional[tf.Tensor] = None,
    axis: Axis = -1,
    epsilon: Optional[float] = 1e-3,
) -> tf.Tensor:
    """``keras.ops.layer_normalization`` with gamma / beta gradients scaled by rows^-1/2.

    gamma and beta have the shape of x on the normalised axes (Keras's layer layout). The
    forward pass (float32 statistics, as Keras) and x's gradient are Keras's.
    """
    x = tf.convert_to_tensor(x)
    axes = normalised_axes(x, axis, "layer_norm")
    check_epsilon(epsilon, "layer_norm")
    grad_scale = _rsqrt(parameter_rows(x, axes, "layer_norm"))
    gamma = _scaled_parameter(gamma, x, axes, grad_scale, "layer_norm gamma")
    beta = _scaled_parameter(beta, x, axes, grad_scale, "layer_norm beta")
    return keras.ops.layer_normalization(x, gamma, beta, axis=axes, epsilon=epsilon)


def rms_norm(
    x: tf.Tensor,
    scale: Optional[tf.Tensor] = None,
    axis: Axis = -1,
    epsilon: Optional[float] = None,
) -> tf.Tensor:
    """``keras.ops.rms_normalization`` with the scale's gradient scaled by rows^-1/2."""
    x = tf.convert_to_tensor(x)
    axes = normalised_axes(x, axis, "rms_norm")
    check_epsilon(epsilon, "rms_norm")
    grad_scale = _rsqrt(parameter_rows(x, axes, "rms_norm"))
    scale = _scaled_parameter(scale, x, axes, grad_scale, "rms_norm scale")
    return keras.ops.rms_normalization(x, scale=scale, axis=axes, epsilon=epsilon)


layer_normalization = layer_norm
rms_normalization = rms_norm
