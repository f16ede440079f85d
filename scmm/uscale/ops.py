"""Unit-scaled linear ops, norms, embedding lookup and residual weighting.

Every op follows the same recipe (unit-scaling paper, section 5):

1. Ideal scales from static shapes, assuming unit-variance inputs and a unit-variance output
   gradient: an output scale ``a`` that makes the output unit, and for each input a gradient
   scale ``b_i`` that makes that input's gradient unit.
2. ``constrain``: an activation input sits on a non-cut edge, so its ``b_i`` must equal ``a``
   (geometric mean by default). Weights, biases and gains are cut edges. Their gradient scale
   stays free and is chosen so that the gradient is unit as well.
3. ``scaling(backward=b_i)`` on each input, then the plain op, then ``scaling(forward=a)``.
   When the constrained ``a == b_x`` and the op is linear in its weight, both are folded into
   one ``scaling(weight, forward=a, backward=b_w)``. That is the same function and gradients,
   but it scales the small weight instead of two large activations.

Gradients of parameters are scaled so their std is ~1 at initialisation: weight, bias and gain
gradients get ``rows**-0.5``, where rows is the number of terms each entry's gradient sums. The
current PyTorch library does the same. The paper's TF char-LM code used ``rows**-1`` (a *mean*
over rows, closer to the unscaled model's SGD step size). Under Adam, a constant per-parameter
gradient factor cancels, so the choice only matters for SGD learning rates and for number
formats. ``rows**-0.5`` is exact when the summed rows are independent (a layer on iid data);
in whole models correlated rows make the gradients 2-20x larger at init, which
``scmm.uscale.calibration`` corrects with one measured constant per parameter.

Shapes must be static: the factors are Python constants baked into the graph.
"""

import math
from typing import Callable, Optional

import tensorflow as tf

from .. import precision
from ..ops.kernels import as_compute, causal_conv_taps, normalise
from .batch_split import global_rows
from .scaling import Constraint, constrain, scaling, static_size


def weight_contraction(
    x: tf.Tensor,
    weight: tf.Tensor,
    contract: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
    scales: tuple[float, float],
    weight_grad_scale: float,
) -> tf.Tensor:
    """contract(x, w), linear in each, with (output scale, x-gradient scale) = ``scales``.

    The weight is cast to x's dtype and its gradient scaled by ``weight_grad_scale``. Equal
    scales are folded into the weight: c * contract(x, w) = contract(x, c w), and x's gradient
    c * J^T g is what the chain rule gives.
    """
    forward, backward = scales
    # Simulated low precision rounds the unit-scale operands (the weight before a scale is
    # folded into it) and the unit gradient arriving at the product (``scmm.precision``).
    w = precision.operand(as_compute(weight, x.dtype), "weight")
    x = precision.operand(x, "activation")
    if forward == backward:  # fold into the weight (linear in w, so exact)
        return precision.output(
            contract(x, scaling(w, forward=forward, backward=weight_grad_scale))
        )
    y = contract(scaling(x, backward=backward), scaling(w, backward=weight_grad_scale))
    return scaling(precision.output(y), forward=forward)


def _tensordot(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(x, w, axes=[[len(x.shape) - 1], [0]])


def projection(x: tf.Tensor, weight: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """x (..., m) @ weight (m, *out) -> (..., *out), for a unit-initialised weight.

    Ideal output scale m^-1/2 (sum of m unit products). Ideal x-gradient scale n^-1/2 with
    n = prod(out). Under "gmean" both are (m n)^-1/4, the paper's ``scaled_projection``.
    Weight-gradient scale rows^-1/2 with rows = prod(x.shape[:-1]): each entry of x^T g sums
    ``rows`` unit products.
    """
    m = static_size(x.shape[-1:], "projection input")
    if weight.shape[0] != m:
        raise ValueError(f"projection: x has {m} features but weight is {weight.shape}")
    n = static_size(weight.shape[1:], "projection weight")
    rows = global_rows(static_size(x.shape[:-1], "projection input"))
    scales = constrain(m**-0.5, n**-0.5, constraint)
    return weight_contraction(x, weight, _tensordot, scales, rows**-0.5)


def readout(x: tf.Tensor, weight: tf.Tensor, constraint: Optional[Constraint] = None) -> tf.Tensor:
    """u-mup's readout x (..., m) @ weight (m, n): forward 1/m, x-gradient n^-1/2.

    The output layer of mu-P: with a unit-initialised weight the logits start at std m^-1/2
    and shrink with width, while an Adam update of the weight moves them by Theta(1) (the
    update is aligned with x, so its m terms add up). The backward scale n^-1/2 makes x's
    gradient unit for a unit logits gradient, *unconstrained* (None): x is on a non-cut edge,
    so every gradient upstream is the true one times the same constant m^-1/2 n^1/2, which
    Adam does not see (the u-mup library's default). "forward" ties both to 1/m (the
    library's ``to_output_scale``: true gradients, small by m^-1/2 n^1/2, and its own SGD
    rule). Weight-gradient scale rows^-1/2, as in ``projection``.
    """
    m = static_size(x.shape[-1:], "readout input")
    if weight.shape[0] != m:
        raise ValueError(f"readout: x has {m} features but weight is {weight.shape}")
    n = static_size(weight.shape[1:], "readout weight")
    rows = global_rows(static_size(x.shape[:-1], "readout input"))
    if constraint is None:
        scales = (1.0 / m, n**-0.5)
    else:
        scales = constrain(1.0 / m, n**-0.5, constraint)
    return weight_contraction(x, weight, _tensordot, scales, rows**-0.5)


def matmul(a: tf.Tensor, b: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """a (..., m, k) @ b (..., k, n) for two activations (both edges non-cut).

    Ideal scales: output k^-1/2, grad a n^-1/2, grad b m^-1/2. The constraint ties all three:
    gmean: (k n m)^-1/6 each. forward: k^-1/2 each. backward: (n m)^-1/4 each (the geometric
    mean of the two gradient scales). separate: untied.
    """
    m, k = static_size(a.shape[-2:-1], "matmul"), static_size(a.shape[-1:], "matmul")
    n = static_size(b.shape[-1:], "matmul")
    ideal = (k**-0.5, n**-0.5, m**-0.5)
    if constraint == "gmean":
        ideal = (math.prod(ideal) ** (1 / 3),) * 3
    elif constraint == "forward":
        ideal = (ideal[0],) * 3
    elif constraint == "backward":
        ideal = (math.sqrt(ideal[1] * ideal[2]),) * 3
    else:
        constrain(1.0, 1.0, constraint)  # validates the name
    a, b = precision.operand(a, "activation"), precision.operand(b, "activation")
    y = tf.matmul(scaling(a, backward=ideal[1]), scaling(b, backward=ideal[2]))
    return scaling(precision.output(y), forward=ideal[0])


def _parameter_rows(x: tf.Tensor, parameter: tf.Tensor, what: str) -> int:
    size = static_size(x.shape, what)
    entries = static_size(parameter.shape, what)
    if x.shape[len(x.shape) - len(parameter.shape) :] != parameter.shape:
        raise ValueError(f"{what}: shape {parameter.shape} does not match the end of {x.shape}")
    return int(global_rows(size // entries))


def add_bias(x: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    """x + bias, bias broadcast over x's leading dims (zero-initialised).

    x passes unscaled. The bias gradient sums ``rows = x.size / bias.size`` unit terms, so it
    is scaled by rows^-1/2.
    """
    rows = _parameter_rows(x, bias, "add_bias")
    return x + scaling(as_compute(bias, x.dtype), backward=rows**-0.5)


def multiply_gain(x: tf.Tensor, gain: tf.Tensor) -> tf.Tensor:
    """x * gain, gain broadcast over x's leading dims (one-initialised).

    x passes unscaled (its gradient is g * gain, unit while gain ~ 1). The gain gradient sums
    ``rows`` terms g * x, so it is scaled by rows^-1/2.
    """
    rows = _parameter_rows(x, gain, "multiply_gain")
    return x * scaling(as_compute(gain, x.dtype), backward=rows**-0.5)


def embedding_lookup(
    table: tf.Tensor, ids: tf.Tensor, dtype: Optional[tf.DType] = None
) -> tf.Tensor:
    """table (vocab, d) gathered at ids (...) -> (..., d), cast to ``dtype`` if given.

    Forward: a plain gather of a unit-initialised table. Backward: row v receives the sum of
    the output gradients at the positions holding id v. Whatever the id distribution, the
    counts add up to n_ids = ids.size, so the mean square over the table is n_ids / vocab
    times that of the (unit) output gradient. Scaling by sqrt(vocab / n_ids) makes its RMS 1.
    The gradient stays an IndexedSlices.
    """
    vocab = static_size(table.shape[:1], "embedding table")
    n_ids = global_rows(static_size(ids.shape, "embedding ids"))
    table_t = tf.convert_to_tensor(table)
    out = tf.gather(scaling(table_t, backward=math.sqrt(vocab / n_ids)), ids)
    return out if dtype is None else as_compute(out, dtype)


def causal_conv1d(
    x: tf.Tensor, kernel: tf.Tensor, groups: int, constraint: Constraint = "gmean"
) -> tf.Tensor:
    """Causal grouped 1-D convolution: x (b, s, c_in), kernel (K, c_in/groups, c_out).

    Same layout and semantics as ``scmm.layers.CausalConv`` without bias and ReLU: left
    padding K-1, output channels group-major, K shifted grouped einsums (``tf.nn.conv1d`` is
    ~30x slower under XLA on CPU). Ideal scales: output (K c_in/groups)^-1/2, x-gradient
    (K c_out/groups)^-1/2 (each input feeds K taps x c_out/groups outputs), constrained.
    Kernel gradient (b s)^-1/2: each entry sums one product per output position (padding
    zeros make that slightly fewer for the outer taps).
    """
    taps, group_in, c_out = kernel.shape
    c_in = x.shape[-1]
    if taps is None or group_in is None or c_out is None or c_in is None:
        raise ValueError(f"causal_conv1d needs static shapes, got {x.shape} and {kernel.shape}")
    if c_in != group_in * groups or c_out % groups:
        raise ValueError(f"causal_conv1d: {groups} groups do not fit {x.shape} / {kernel.shape}")
    batch, seq = x.shape[0], x.shape[1]
    rows = global_rows(static_size([batch, seq], "causal_conv1d input"))
    group_out = c_out // groups
    scales = constrain((taps * group_in) ** -0.5, (taps * group_out) ** -0.5, constraint)

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return causal_conv_taps(inputs, w, groups, tf.einsum)  # (b, s, c_out)

    return weight_contraction(x, kernel, contract, scales, rows**-0.5)


def layer_norm(
    x: tf.Tensor,
    gain: Optional[tf.Tensor],
    bias: Optional[tf.Tensor],
    epsilon: float = 1e-5,
) -> tf.Tensor:
    """Layer norm over the last axis with float32 statistics (as ``scmm.layers.LayerNorm``).

    The normalised output is already unit, and the gradient through the normalisation is
    unit for a unit output gradient, so x needs no scaling. Gain and bias gradients are
    scaled by rows^-1/2 (``multiply_gain`` / ``add_bias``).
    """
    y = normalise(x, epsilon)
    if gain is not None:
        y = multiply_gain(y, gain)
    if bias is not None:
        y = add_bias(y, bias)
    return y


# Residual -------------------------------------------------------------------------------------


def _check_tau(tau: float) -> None:
    if not 0.0 < tau < 1.0:
        raise ValueError(
            f"residual tau must be in (0, 1), got {tau}. Plain x + f(x) is not unit-scaled;"
            " use a fixed or running-mean tau"
        )


def residual_split(x: tf.Tensor, tau: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(skip, branch_input), both equal to x (b, s, h) in the forward pass.

    The branch input's gradient is multiplied by sqrt(tau). Paired with ``residual_add``, the
    branch then computes sqrt(tau) f(x) for gradient purposes while seeing a unit gradient.
    """
    _check_tau(tau)
    return x, scaling(x, backward=math.sqrt(tau))


def residual_add(skip: tf.Tensor, branch_output: tf.Tensor, tau: float) -> tf.Tensor:
    """sqrt(1 - tau) skip + sqrt(tau) branch_output, the interpolating residual add.

    The skip is a plain multiply (scale sqrt(1 - tau) both ways). The branch output uses
    ``scaling(forward=sqrt(tau))``, so the branch gets the unit upstream gradient g. The
    sqrt(tau) owed by the chain rule is applied by ``residual_split``. The total gradient of x
    is then exactly the true gradient sqrt(1 - tau) g + sqrt(tau) J^T g of
    y = sqrt(1 - tau) x + sqrt(tau) f(x), with std ~1 for unit g and J^T g.

    Weighting choices (see ``scmm.layers.residual``): "fixed" tau, or "mean" tau = 1/(l + 1).
    "plain" (x + f(x)) has no tau in (0, 1) and is rejected: its residual stream grows with
    depth, so it is not unit-scaled.
    """
    _check_tau(tau)
    dtype = skip.dtype
    return skip * tf.cast(math.sqrt(1.0 - tau), dtype) + scaling(
        branch_output, forward=math.sqrt(tau)
    )
