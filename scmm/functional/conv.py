"""Unit-scaled 1-D convolution under Keras's ``Conv1D`` semantics (``scmm.U.conv1d``).

x (batch, steps, c_in), kernel (k, c_in / groups, c_out) initialised N(0, 1). Each output sums
k c_in / groups unit products, so the ideal output scale is (k c_in / groups)^-1/2. Each input
entry feeds k c_out / groups products per output position it is in, and with stride s it is in
1/s of them on average: ideal x-gradient scale (k c_out / (groups s))^-1/2. The two are tied
by the constraint (x is a non-cut edge). Each kernel entry's gradient sums one product per
output position and batch row: scale (batch out_steps)^-1/2, counted at run time when the batch
is unknown. "causal" pads (k - 1) dilation steps on the left, as Keras does.
"""

from typing import Any

import tensorflow as tf
from keras import ops

from ..uscale.ops import weight_contraction
from ..uscale.scaling import Constraint, constrain
from .einsum import inverse_sqrt

PADDINGS = ("valid", "same", "causal")


def conv1d(  # pylint: disable=too-many-arguments
    x: tf.Tensor,
    kernel: Any,
    strides: int = 1,
    padding: str = "valid",
    dilation_rate: int = 1,
    groups: int = 1,
    constraint: Constraint = "gmean",
) -> tf.Tensor:
    """Unit-scaled ``Conv1D`` product (no bias): -> (batch, out_steps, c_out)."""
    if padding not in PADDINGS:
        raise ValueError(f"conv1d padding must be one of {PADDINGS}, got {padding!r}")
    x = tf.convert_to_tensor(x)
    taps, group_in, c_out = (int(d) for d in kernel.shape)
    c_in = x.shape[-1]
    if c_in is None or c_in != group_in * groups or c_out % groups:
        raise ValueError(
            f"conv1d: input channels {c_in} and kernel {tuple(kernel.shape)} do not fit"
            f" groups={groups} (expected c_in = {group_in} x groups, c_out divisible by groups)"
        )
    if padding == "causal":
        x = ops.pad(x, [[0, 0], [(taps - 1) * dilation_rate, 0], [0, 0]])
        padding = "valid"
    scales = constrain(
        (taps * group_in) ** -0.5, (taps * c_out / (groups * strides)) ** -0.5, constraint
    )

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return ops.conv(inputs, w, strides=strides, padding=padding, dilation_rate=dilation_rate)

    rows = _batch(x) * _out_steps(x, taps, strides, padding, dilation_rate)
    return weight_contraction(x, kernel, contract, scales, inverse_sqrt(rows))


def _batch(x: tf.Tensor) -> Any:
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _out_steps(x: tf.Tensor, taps: int, strides: int, padding: str, dilation: int) -> Any:
    """Output steps of a "valid" / "same" convolution over x's (padded) steps."""
    steps: Any = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    if padding == "same":
        return (steps + strides - 1) // strides
    return (steps - (taps - 1) * dilation - 1) // strides + 1
