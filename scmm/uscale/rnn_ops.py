"""Unit-scaled recurrent highway cell (``scmm.layers.RecurrentHighway``).

The gate pre-activations [x_t, s_{t-1}] @ [W; R] form one projection with fan-in in + hidden
and fan-out 2 hidden (candidate and transform gate). Under gmean, both kernels get the
char-LM code's forward scale ((in + hidden) 2 hidden)^-1/4. For in = hidden that is
(2 hidden)^-1/2, the baseline's init std, so at init the unit-scaled cell computes the
baseline's function. The gates themselves stay plain tanh / sigmoid. They are gates, not
activations to rescale: the state update s + g (h - s) needs g in (0, 1) and h in (-1, 1).
"""

from typing import Optional

import tensorflow as tf

from .. import precision
from ..ops.kernels import as_compute, highway_scan
from .batch_split import global_rows
from .scaling import scaling, static_size

# The states are running averages of tanh candidates with a mostly-closed transform gate
# (sigmoid(-rebias)), so their std at init is ~0.26 for rebias = 1, not 1. The cell output is
# multiplied by this constant. A plain multiply scales forward and backward alike, so it is
# consistent: x and every parameter get gradient alpha * (true RHN gradient).
RHN_OUTPUT_SCALE = 3.9
# Measured corrections (char-LM shapes, rebias = 1) bringing parameter gradients from the
# (b s)^-1/2 rule to std ~1. They are cut edges, so these factors are free. R's input is the
# state (std ~0.26, not 1), so its gradient comes out small. The bias gradient sums
# pre-activation gradients that are correlated through time, so it comes out large.
RECURRENT_GRAD_FACTOR = 2.15
BIAS_GRAD_FACTOR = 0.47


def rhn_gate_scale(input_size: int, hidden_size: int) -> float:
    """Forward (and, being consistent, input-gradient) scale of both gate kernels."""
    return ((input_size + hidden_size) * 2 * hidden_size) ** -0.25


def rhn_kernels(
    input_kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    rows: int,
    dtype: tf.DType,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Effective kernels (in, 2, h) and (h, 2, h): scaled forward by ``rhn_gate_scale``.

    Folding the scale into the kernels gives x and the state their consistent gradient
    scale. The kernel gradients sum ``rows`` = batch x seq terms (for R: batch per step,
    accumulated over the scan), so they are scaled by rows^-1/2. Apply this once, outside
    the scan.
    """
    scale = rhn_gate_scale(input_kernel.shape[0], recurrent_kernel.shape[0])
    w = scaling(
        precision.operand(as_compute(input_kernel, dtype), "weight"),
        forward=scale,
        backward=rows**-0.5,
    )
    r = scaling(
        as_compute(recurrent_kernel, dtype),
        forward=scale,
        backward=rows**-0.5 * RECURRENT_GRAD_FACTOR,
    )
    return w, r


def recurrent_highway(
    x: tf.Tensor,
    input_kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: Optional[tf.Tensor],
    rebias: float = 1.0,
) -> tf.Tensor:
    """RHN states (b, s, h) from x (b, s, in), kernels (in, 2, h) / (h, 2, h), bias (2, h)
    or None (no learned gate bias: u-mup's default).

    The same cell as the plain op set (``scmm.layers.RecurrentHighway``):
    h_t = tanh(pre_0), g_t = sigmoid(pre_1 - rebias), s_t = s_{t-1} + g_t (h_t - s_{t-1}).
    Output multiplied by ``RHN_OUTPUT_SCALE``. Kernel and bias gradients: (b s)^-1/2 times the
    measured factors above. Measured at init (b 8, s 256, h 128, unit x, kernels and output
    gradient): output std 1.01, x-grad 1.17, input-kernel grad 1.19, recurrent-kernel grad
    ~1.0, bias grad ~1.0.
    """
    batch, seq, _ = x.shape
    rows = int(global_rows(static_size([batch, seq], "recurrent_highway input")))
    dtype = x.dtype
    w, r = rhn_kernels(input_kernel, recurrent_kernel, rows, dtype)
    x = precision.operand(x, "activation")
    gates_in = precision.output(tf.einsum("bsh,hgk->sbgk", x, w))  # (s, b, 2, h)
    shift = tf.constant([[0.0], [rebias]], dtype)  # (2, 1)
    if bias is None:
        gates_in = gates_in - shift
    else:
        bias_t = scaling(as_compute(bias, dtype), backward=rows**-0.5 * BIAS_GRAD_FACTOR)
        gates_in = gates_in + (bias_t - shift)
    return highway_scan(gates_in, r) * tf.cast(RHN_OUTPUT_SCALE, dtype)  # (b, s, h)
