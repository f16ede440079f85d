"""The one unit-scaling primitive, ``scaling``, plus the constraint rule and shape helpers.

Every unit-scaled op in ``scmm.uscale`` is a composition of ordinary TF ops with ``scaling``:

    y = scaling(x, forward=a, backward=b)   =>   y = a * x,   dL/dx = b * dL/dy

The forward and backward factors are independent, so ``scaling`` on its own breaks the chain
rule. The ops only ever use it in ways that keep valid gradients, up to a constant per parameter:

* On a *non-cut* edge (an activation that also reaches the loss along another path), the
  scale on the input's gradient must equal the op's output scale. ``constrain`` picks that one
  scale from the two ideal ones: the geometric mean by default (unit-scaling paper, section 5).
* On a *cut* edge (a weight, or a tensor used only once, such as the logits), the gradient
  scale is free. Scaling a parameter's gradient by a constant c is the same as multiplying its
  learning rate by c under SGD. Under Adam it changes nothing except the numerics.
"""

import math
from typing import Literal, Sequence, Union, get_args

import tensorflow as tf

from ..ops.kernels import scale_gradient

Constraint = Literal["gmean", "forward", "backward", "separate"]
CONSTRAINTS: tuple[str, ...] = get_args(Constraint)

# A Python number is a compile-time constant (and 1.0 is skipped); a scalar tensor is for
# data-dependent factors such as a token count.
Factor = Union[float, tf.Tensor]


def _is_one(factor: Factor) -> bool:
    return isinstance(factor, (int, float)) and float(factor) == 1.0


def _multiply(value: tf.Tensor, factor: Factor) -> tf.Tensor:
    return value * tf.cast(factor, value.dtype)


def scaling(x: tf.Tensor, forward: Factor = 1.0, backward: Factor = 1.0) -> tf.Tensor:
    """Return ``forward * x`` and give x the gradient ``backward * upstream``.

    The backward pass is *not* also multiplied by ``forward``. Factors are cast to x's dtype;
    Python 1.0 factors skip their multiply. When both factors are the same Python number, this
    is a plain multiply (the chain rule already gives the wanted gradient). Keras or TF variables
    are read to a tensor first, so tapes that watch the variable still see the gradient.
    """
    x = tf.convert_to_tensor(x)
    if _is_one(forward) and _is_one(backward):
        return x
    if isinstance(forward, (int, float)) and isinstance(backward, (int, float)):
        if float(forward) == float(backward):
            return _multiply(x, forward)

    @tf.custom_gradient
    def _scaled(value: tf.Tensor) -> tuple[tf.Tensor, object]:
        def grad(upstream: Union[tf.Tensor, tf.IndexedSlices]) -> tf.Tensor:
            return scale_gradient(upstream, backward)

        out = tf.identity(value) if _is_one(forward) else _multiply(value, forward)
        return out, grad

    return _scaled(x)


def constrain(
    forward_scale: float, backward_scale: float, constraint: Constraint = "gmean"
) -> tuple[float, float]:
    """Resolve an op's ideal (output scale, input-gradient scale) for a non-cut input edge.

    gmean: both sqrt(f * b), so fwd * bwd is unchanged and each side is off by the same ratio.
    forward: both f (unit outputs).  backward: both b (unit input gradients).
    separate: (f, b) unchanged. The gradient is then *not* a true gradient of a rescaled
    function, so only use it where the input is on a cut edge.
    """
    if constraint == "gmean":
        scale = math.sqrt(forward_scale * backward_scale)
        return scale, scale
    if constraint == "forward":
        return forward_scale, forward_scale
    if constraint == "backward":
        return backward_scale, backward_scale
    if constraint == "separate":
        return forward_scale, backward_scale
    raise ValueError(f"unknown constraint {constraint!r}, expected one of {CONSTRAINTS}")


def static_size(dims: Sequence[object], what: str) -> int:
    """Product of static dimensions. Scales are Python constants, so shapes must be known."""
    size = 1
    for dim in dims:
        if dim is None:
            raise ValueError(f"{what} needs a static shape, got {list(dims)}")
        size *= int(dim)  # type: ignore[call-overload]
    return size
