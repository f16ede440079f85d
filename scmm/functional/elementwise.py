"""Unit-scaled elementwise ops under ``keras.ops`` names: relu, gelu, silu, tanh, sigmoid, add,
and the variance-preserving ``dropout`` (``keras.random.dropout`` times sqrt(1 - rate)).

Each nonlinearity f has two ideal scales for x ~ N(0, 1) and an independent unit gradient g:
the output scale 1 / std(f(x)) and the input-gradient scale 1 / std(f'(x) g) = 1 / rms(f'(x)).
The input x is an activation (a non-cut edge), so the ``constraint`` ties the two
(``scmm.uscale.constrain``): "gmean" (unit scaling's default) uses their geometric mean for
both, "forward" the output scale (u-muP), "backward" the gradient scale, "separate" neither.
relu, tanh and sigmoid use ``scmm.uscale``'s scales; gelu (both of Keras's forms) and silu,
which take u-muP's ``mult``, get theirs by Gauss-Hermite quadrature (exact to float precision
for these smooth functions, unlike the PyTorch library's log-interpolated fits).

``add`` sums k random tensors: ideal output scale k^-1/2 (a Python number, or a tensor of one
element, is a constant shift: it adds no variance). A broadcast input's gradient sums the
output gradient over its e copies, so its ideal gradient scale is e^-1/2. The constraint ties
all of them (as ``scmm.uscale.matmul`` ties its three): "gmean" the geometric mean of the
output scale and every gradient scale, "forward" the output scale, "backward" the geometric
mean of the gradient scales. Expansions that depend on a dimension unknown when the graph is
built (a None batch) are computed from ``tf.shape`` at run time.
"""

import functools
import math
from typing import Any, Callable, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from .. import uscale
from ..uscale.scaling import CONSTRAINTS, Constraint, Factor, constrain, scaling

Operand = Union[tf.Tensor, float, int]

QUADRATURE_NODES = 200
_TANH_GELU_C = math.sqrt(2.0 / math.pi)  # tanh-form gelu: 0.5 z (1 + tanh(c (z + a z^3)))
_TANH_GELU_A = 0.044715


def check_constraint(constraint: str) -> Constraint:
    """``constraint`` if it is a known one, else a ValueError naming it."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")
    return constraint  # type: ignore[return-value]


def check_mult(mult: float, what: str) -> float:
    """``mult`` as a float if finite and > 0, else a ValueError."""
    if isinstance(mult, bool) or not isinstance(mult, (int, float)):
        raise ValueError(f"{what} mult must be a finite number > 0, got {mult!r}")
    if not (math.isfinite(mult) and mult > 0):
        raise ValueError(f"{what} mult must be a finite number > 0, got {mult!r}")
    return float(mult)


def _floating(x: tf.Tensor, what: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(f"{what} needs a floating-point tensor, got dtype {x.dtype.name}")
    return x


def quadrature_scales(
    value: Callable[[np.ndarray], np.ndarray], slope: Callable[[np.ndarray], np.ndarray]
) -> tuple[float, float]:
    """(1 / std(f(x)), 1 / rms(f'(x))) for x ~ N(0, 1), by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    weights = weights / weights.sum()  # expectation under N(0, 1)
    f, df = value(nodes), slope(nodes)
    mean = float(np.sum(weights * f))
    std = math.sqrt(float(np.sum(weights * f * f)) - mean * mean)
    rms = math.sqrt(float(np.sum(weights * df * df)))
    return 1.0 / std, 1.0 / rms


@functools.lru_cache(maxsize=64)
def gelu_scales(mult: float = 1.0, approximate: bool = True) -> tuple[float, float]:
    """Ideal (output, input-gradient) scales of gelu(mult x) / mult, tanh or erf form."""
    mult = check_mult(mult, "gelu")
    if not approximate:
        return uscale.gelu_scales(mult)

    def value(x: np.ndarray) -> np.ndarray:
        z = mult * x
        return 0.5 * z * (1.0 + np.tanh(_TANH_GELU_C * (z + _TANH_GELU_A * z**3))) / mult

    def slope(x: np.ndarray) -> np.ndarray:  # d/dx gelu(mult x) / mult = gelu'(mult x)
        z = mult * x
        t = np.tanh(_TANH_GELU_C * (z + _TANH_GELU_A * z**3))
        inner = _TANH_GELU_C * (1.0 + 3.0 * _TANH_GELU_A * z * z)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * inner

    return quadrature_scales(value, slope)


@functools.lru_cache(maxsize=64)
def silu_scales(mult: float = 1.0) -> tuple[float, float]:
    """Ideal (output, input-gradient) scales of x sigmoid(mult x)."""
    mult = check_mult(mult, "silu")

    def logistic(z: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-z))

    def value(x: np.ndarray) -> np.ndarray:
        return x * logistic(mult * x)

    def slope(x: np.ndarray) -> np.ndarray:
        s = logistic(mult * x)
        return s + mult * x * s * (1.0 - s)

    return quadrature_scales(value, slope)


def _scaled_elementwise(
    fn: Callable[[tf.Tensor], tf.Tensor],
    x: tf.Tensor,
    scales: tuple[float, float],
    constraint: str,
) -> tf.Tensor:
    # The constraint is checked before any compute; equal scales are one plain multiply (the
    # chain rule then gives the gradient scale too).
    forward, backward = constrain(*scales, check_constraint(constraint))
    if forward == backward:
        return fn(x) * tf.cast(forward, x.dtype)
    return scaling(fn(scaling(x, backward=backward)), forward=forward)


def relu(x: tf.Tensor, constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.relu``: ideal out sqrt(2 / (1 - 1/pi)) ~ 1.713, grad sqrt(2)."""
    return uscale.relu(_floating(x, "relu"), check_constraint(constraint))


def gelu(
    x: tf.Tensor, approximate: bool = True, mult: float = 1.0, constraint: str = "gmean"
) -> tf.Tensor:
    """Unit-scaled ``keras.ops.gelu`` of ``mult`` x, divided by ``mult`` (u-muP's
    alpha_ffn-act). ``approximate`` as in Keras (True: the tanh form, its default); the scales
    are those of the form used. At mult 1: tanh form (1.7009, 1.4812), erf form (1.7009, 1.4811).
    """
    if not isinstance(approximate, bool):
        raise ValueError(f"gelu approximate must be True or False, got {approximate!r}")
    scales = gelu_scales(mult, approximate)
    x = _floating(x, "gelu")
    mult = float(mult)

    def tempered(t: tf.Tensor) -> tf.Tensor:
        if mult == 1.0:
            return tf.nn.gelu(t, approximate=approximate)
        m = tf.cast(mult, t.dtype)
        return tf.nn.gelu(t * m, approximate=approximate) / m

    return _scaled_elementwise(tempered, x, scales, constraint)


def silu(x: tf.Tensor, mult: float = 1.0, constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.silu``: x sigmoid(mult x) (the PyTorch library's u-muP silu).

    At mult 1 the ideal scales are (1.787, 1.623) (exact quadrature).
    """
    scales = silu_scales(mult)
    x = _floating(x, "silu")
    mult = float(mult)

    def tempered(t: tf.Tensor) -> tf.Tensor:
        if mult == 1.0:
            return tf.nn.silu(t)
        return t * tf.sigmoid(t * tf.cast(mult, t.dtype))

    return _scaled_elementwise(tempered, x, scales, constraint)


def tanh(x: tf.Tensor, constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.tanh``: ideal out 1.593, grad 1.467."""
    return uscale.tanh(_floating(x, "tanh"), check_constraint(constraint))


def sigmoid(x: tf.Tensor, constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.sigmoid``: ideal out 4.802 (std only: the mean stays 1/2 times
    the scale), grad 4.722. Not for gates, which must stay in (0, 1)."""
    return uscale.sigmoid(_floating(x, "sigmoid"), check_constraint(constraint))


# Add ------------------------------------------------------------------------------------------


def _is_constant(value: Operand) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _static_expansion(shape: tf.TensorShape, out: tf.TensorShape) -> Optional[int]:
    """How many copies of each entry broadcasting to ``out`` makes, if known statically."""
    expansion = 1
    rank = len(out)
    padded = [1] * (rank - len(shape)) + list(shape)
    for mine, full in zip(padded, list(out)):
        if mine is not None and mine != 1:
            continue  # this dimension fixes the output's: no copies
        if mine == 1 and full is not None:
            expansion *= full
            continue
        return None  # a None dimension that may broadcast at run time
    return expansion


def _broadcast_shape(tensors: Sequence[tf.Tensor]) -> tf.TensorShape:
    shape = tf.TensorShape([])
    for tensor in tensors:
        try:
            shape = tf.broadcast_static_shape(shape, tensor.shape)
        except ValueError as error:
            raise ValueError(
                f"add: shapes {[t.shape for t in tensors]} do not broadcast together"
            ) from error
    return shape


def _dynamic_expansion(tensor: tf.Tensor, tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    full = tf.shape(tensors[0])
    for other in tensors[1:]:
        full = tf.broadcast_dynamic_shape(full, tf.shape(other))
    return tf.cast(tf.reduce_prod(full), tf.float32) / tf.cast(tf.size(tensor), tf.float32)


def _geometric_mean(values: Sequence[Factor]) -> Factor:
    if all(isinstance(v, (int, float)) for v in values):
        return math.prod(float(v) for v in values) ** (1.0 / len(values))
    logs = [tf.math.log(tf.cast(v, tf.float32)) for v in values]
    return tf.exp(tf.add_n(logs) / len(values))


def _tied(output: Factor, grads: list[Factor], constraint: str) -> tuple[Factor, list[Factor]]:
    if constraint == "gmean":
        shared = _geometric_mean([output, *grads])
        return shared, [shared] * len(grads)
    if constraint == "forward":
        return output, [output] * len(grads)
    if constraint == "backward":
        shared = _geometric_mean(grads)
        return shared, [shared] * len(grads)
    return output, grads  # separate


def add_all(inputs: Sequence[Operand], constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled sum of tensors (and Python numbers), broadcast together (``uu.Add``)."""
    check_constraint(constraint)
    if not inputs:
        raise ValueError("add needs at least one input")
    tensors = [tf.convert_to_tensor(v) for v in inputs if not _is_constant(v)]
    if not tensors:
        return functools.reduce(keras.ops.add, inputs)
    if not all(t.dtype.is_floating for t in tensors):
        # Integer arithmetic (indices, shapes) carries no scale: left as keras.ops.add.
        return functools.reduce(keras.ops.add, inputs)
    out_shape = _broadcast_shape(tensors)
    # A one-element tensor is a constant shift for every entry: it adds no variance.
    random = [t for t in tensors if t.shape.num_elements() != 1]
    output_scale = max(len(random), 1) ** -0.5
    grads: list[Factor] = []
    for tensor in tensors:
        expansion = _static_expansion(tensor.shape, out_shape)
        grads.append(
            expansion**-0.5
            if expansion is not None
            else tf.math.rsqrt(_dynamic_expansion(tensor, tensors))
        )
    forward, backward = _tied(output_scale, grads, constraint)
    scaled = iter([scaling(t, backward=b) for t, b in zip(tensors, backward)])
    operands = [v if _is_constant(v) else next(scaled) for v in inputs]
    # Scalars are added after the scale: a shift is not something to normalise.
    summed = functools.reduce(keras.ops.add, [v for v in operands if not _is_constant(v)])
    summed = scaling(summed, forward=forward)
    for value in inputs:
        if _is_constant(value):
            summed = keras.ops.add(summed, value)
    return summed


def add(x1: Operand, x2: Operand, constraint: str = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.add``: ideal output scale 2^-1/2 (1 when one input is a Python
    number or has one element), gradient scales e^-1/2 for an input broadcast e-fold, tied by
    ``constraint``. Under "gmean" with equal shapes: 2^-1/6 on both sides."""
    return add_all([x1, x2], constraint)


# Dropout --------------------------------------------------------------------------------------


def dropout(x: tf.Tensor, rate: float, noise_shape: Any = None, seed: Any = None) -> tf.Tensor:
    """Variance-preserving ``keras.random.dropout``: Keras's x m / (1 - rate) times
    sqrt(1 - rate), where m ~ Bernoulli(1 - rate).

    Keras's inverted dropout keeps the mean: for unit x its output variance is 1 / (1 - rate).
    The extra sqrt(1 - rate) keeps the variance at 1 instead (the PyTorch library's rule). It is
    a plain multiply, so the gradient g m sqrt(1 - rate) / (1 - rate) is unit for a unit g
    too. ``noise_shape`` and ``seed`` (an int or a ``keras.random.SeedGenerator``) as in Keras.
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"dropout rate must be a number in [0, 1), got {rate!r}")
    x = _floating(x, "dropout")
    if rate == 0:
        return x
    dropped = keras.random.dropout(x, rate, noise_shape=noise_shape, seed=seed)
    return dropped * tf.cast(math.sqrt(1.0 - rate), dropped.dtype)
