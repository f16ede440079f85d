"""Unit-scaled 1-D convolution under Keras's ``Conv1D`` semantics (``scmm.U.conv1d``).

x (batch, steps, c_in), kernel (k, c_in / groups, c_out) initialised N(0, 1), output channels
group-major (TensorFlow's grouped layout). Scales, for unit iid x and a unit output gradient:

- output: each output sums k c_in / groups unit products: ideal (k c_in / groups)^-1/2;
- x-gradient: each input entry feeds c_out / groups channels at each of the k / s output
  positions it reaches on average (stride s): ideal (k c_out / (groups s))^-1/2;
- the two are tied by ``constraint`` (x is a non-cut edge, ``scmm.uscale.constrain``);
- kernel gradient: each entry sums one product per batch row and output step, so
  (batch out_steps)^-1/2, counted from ``tf.shape`` when a dim is None. Padding zeros make
  the outer taps' sums a little shorter ("same" / "causal" with long kernels on short inputs).

Padding is Keras's: "valid" none; "same" TensorFlow's split of the total (out_steps - 1) s +
(k - 1) d + 1 - steps, the smaller half on the left; "causal" (k - 1) d zeros on the left.

Two contractions, chosen by measurement (TF 2.21, CPU, batch 16 x 256 steps x 128 -> 128
channels, k 5, forward + backward): with groups 1, ``tf.nn.convolution`` (23 ms eager / 39 ms
under XLA) beats one matmul per tap (115 / 45 ms); with groups 4 it takes 330 / 361 ms, the
per-tap grouped einsums 62 / 18 ms. Strides and dilation both above 1 (which Keras's layer
refuses and ``tf.nn.convolution`` cannot do on CPU) also take the taps. The operands go
through ``scmm.precision`` (``weight_contraction``), so simulated formats see the convolution.
"""

from typing import Any, Union

import tensorflow as tf

from ..uscale.batch_split import global_rows
from ..uscale.ops import weight_contraction
from ..uscale.scaling import CONSTRAINTS, Constraint, constrain
from .einsum import inverse_sqrt, product

PADDINGS = ("valid", "same", "causal")
Size = Union[int, tf.Tensor]


def _positive_int(value: Any, what: str) -> int:
    """An int >= 1 from an int or a 1-tuple (Keras's layers store ``(s,)``)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"conv1d {what} must be a positive int, got {value!r}")
    return value


def _check_shapes(x: tf.Tensor, kernel: Any, groups: int) -> tuple[int, int, int]:
    """(k, c_in / groups, c_out) after checking x and the kernel fit together."""
    if len(x.shape) != 3:
        raise ValueError(f"conv1d expects x of rank 3 (batch, steps, channels), got {x.shape}")
    if len(kernel.shape) != 3 or any(d is None for d in kernel.shape):
        raise ValueError(
            f"conv1d expects a static kernel (k, c_in / groups, c_out), got {kernel.shape}"
        )
    taps, group_in, c_out = (int(d) for d in kernel.shape)
    c_in = x.shape[-1]
    if c_in is None or c_in != group_in * groups or c_out % groups:
        raise ValueError(
            f"conv1d: input channels {c_in} and kernel {tuple(kernel.shape)} do not fit"
            f" groups={groups} (expected c_in = {group_in} x groups, c_out divisible by groups)"
        )
    return taps, group_in, c_out


def _dim(x: tf.Tensor, axis: int) -> Size:
    """x.shape[axis] as an int, or from ``tf.shape`` when it is None."""
    return int(x.shape[axis]) if x.shape[axis] is not None else tf.shape(x)[axis]


def _padding_and_steps(
    steps: Size, span: int, strides: int, padding: str
) -> tuple[tuple[Size, Size], Size]:
    """((left, right) zeros, output steps) for ``steps`` inputs and a window of ``span``."""
    if padding == "causal":
        return (span - 1, 0), (steps + strides - 1) // strides
    if padding == "valid":
        return (0, 0), (steps - span) // strides + 1
    out_steps = (steps + strides - 1) // strides
    needed = (out_steps - 1) * strides + span - steps
    total = max(needed, 0) if isinstance(needed, int) else tf.maximum(needed, 0)
    return (total // 2, total - total // 2), out_steps


def _grouped_taps(
    x: tf.Tensor, kernel: tf.Tensor, strides: int, dilation: int, groups: int, out_steps: Size
) -> tf.Tensor:
    """Sum over taps j of the grouped product of x[t s + j d] (x already padded)."""
    taps, group_in, c_out = (int(d) for d in kernel.shape)
    grouped = tf.reshape(x, [-1, _dim(x, 1), groups, group_in])  # (b, steps, g, c_in/g)
    w = tf.reshape(kernel, [taps, group_in, groups, c_out // groups])  # (k, c_in/g, g, c_out/g)
    y = None
    for tap in range(taps):
        start = tap * dilation
        window = grouped[:, start : start + (out_steps - 1) * strides + 1 : strides]
        term = tf.einsum("btgc,cgo->btgo", window, w[tap])  # (b, out_steps, g, c_out/g)
        y = term if y is None else y + term
    return tf.reshape(y, [-1, out_steps, c_out])  # (b, out_steps, c_out)


def conv1d(  # pylint: disable=too-many-arguments
    x: tf.Tensor,
    kernel: Any,
    strides: int = 1,
    padding: str = "valid",
    dilation_rate: int = 1,
    groups: int = 1,
    constraint: Constraint = "gmean",
) -> tf.Tensor:
    """Unit-scaled ``Conv1D`` product (no bias): x (b, steps, c_in) -> (b, out_steps, c_out).

    ``strides``, ``dilation_rate`` and ``groups`` are positive ints (or 1-tuples, as Keras's
    layer stores them); ``padding`` "valid", "same" or "causal" (any case); ``constraint`` ties
    the output and x-gradient scales (see the module docstring).
    """
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"conv1d padding must be one of {PADDINGS}, got {padding!r}")
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")
    padding = padding.lower()
    strides = _positive_int(strides, "strides")
    dilation = _positive_int(dilation_rate, "dilation_rate")
    groups = _positive_int(groups, "groups")
    x = tf.convert_to_tensor(x)
    taps, group_in, c_out = _check_shapes(x, kernel, groups)
    span = (taps - 1) * dilation + 1
    (left, right), out_steps = _padding_and_steps(_dim(x, 1), span, strides, padding)
    scales = constrain(
        (taps * group_in) ** -0.5, (taps * c_out / (groups * strides)) ** -0.5, constraint
    )
    use_taps = groups > 1 or (strides > 1 and dilation > 1)

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        padded = tf.pad(inputs, [[0, 0], [left, right], [0, 0]])  # (b, steps + pad, c_in)
        if use_taps:
            return _grouped_taps(padded, w, strides, dilation, groups, out_steps)
        return tf.nn.convolution(
            padded, w, strides=strides, padding="VALID", dilations=dilation
        )  # (b, out_steps, c_out)

    rows = global_rows(product([_dim(x, 0), out_steps]))
    return weight_contraction(x, kernel, contract, scales, inverse_sqrt(rows))
