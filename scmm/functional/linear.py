"""Unit-scaled linear maps and lookups under Keras names: ``linear`` (what ``Dense``
computes), ``readout`` (u-mup's output layer), ``matmul`` (two activations) and ``embedding``.

Scales (unit-scaling paper, section 5; u-mup paper, section E), for x (..., m) and a kernel
(m, n) initialised N(0, 1), unit iid inputs and a unit output gradient:

- ``linear``: output m^-1/2, x-gradient n^-1/2, tied by the constraint (x is a non-cut edge);
  kernel and bias gradients rows^-1/2, rows = x.size / m (each entry sums that many products),
  a scalar tensor from ``tf.shape`` when the batch is only known at run time.
- ``readout``: output 1/m (mu-P's output multiplier), x-gradient n^-1/2, untied by default
  (``constraint="forward"`` ties both to 1/m); kernel and bias gradients as ``linear``.
- ``matmul`` (..., m, k) @ (..., k, n): output k^-1/2, x1-gradient (n e1)^-1/2, x2-gradient
  (m e2)^-1/2, where e_i is how many times operand i is broadcast over the batch dims (its
  gradient sums that many copies; 1 without broadcasting, which is ``scmm.uscale.matmul``'s
  rule). The constraint ties all three as ``scmm.uscale.matmul`` does.
- ``embedding``: a plain gather; the table's gradient times sqrt(vocab / ids), ids counted at
  run time when needed, which makes its RMS 1 whatever the id distribution.

Products use ``tf.tensordot`` / ``tf.matmul``: on CPU, XLA compiled an ellipsis einsum of a
(32, 256, 512) x (512, 512) product with its gradients ~100x slower than ``tf.tensordot``.
Every operand goes through ``scmm.precision`` (simulated number formats).
"""

import math
from typing import Any, Optional

import tensorflow as tf

from .. import precision
from ..ops.kernels import as_compute
from ..uscale.batch_split import global_rows
from ..uscale.ops import weight_contraction
from ..uscale.scaling import CONSTRAINTS, Constraint, Factor, constrain, scaling
from .einsum import _tie_three, inverse_sqrt, product


def _check_constraint(constraint: Any, allow_none: bool = False) -> None:
    if constraint is None and allow_none:
        return
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; expected one of {CONSTRAINTS}")


def _rows(x: tf.Tensor, features: int) -> Factor:
    """x.size / features: an int when x's shape is static, else a float32 scalar tensor."""
    if x.shape.is_fully_defined():
        return global_rows(int(x.shape.num_elements() or 0) // features)
    return global_rows(tf.cast(tf.size(x), tf.float32) / features)


def bias_add(y: tf.Tensor, bias: Any) -> tf.Tensor:
    """y (..., n) + bias (n,); bias gradient rows^-1/2 (rows = y.size / n: the terms it sums)."""
    bias_t = as_compute(bias, y.dtype)
    if len(bias_t.shape) != 1 or bias_t.shape[0] != y.shape[-1]:
        raise ValueError(
            f"bias must have shape ({y.shape[-1]},) to add to {y.shape}, got {bias_t.shape}"
        )
    return y + scaling(bias_t, backward=inverse_sqrt(_rows(y, int(bias_t.shape[0]))))


def _kernel_product(
    x: tf.Tensor, kernel: Any, what: str, scales: Any, bias: Any = None
) -> tf.Tensor:
    """x (..., m) @ kernel (m, n) (+ bias) with ``scales(m, n)`` -> (output, x-grad) scales."""
    x = tf.convert_to_tensor(x)
    if len(kernel.shape) != 2 or any(d is None for d in kernel.shape):
        raise ValueError(f"{what} expects a static 2-D kernel (in, out), got {kernel.shape}")
    m, n = (int(d) for d in kernel.shape)
    if len(x.shape) < 1 or x.shape[-1] != m:
        raise ValueError(f"{what}: x {x.shape} must end in the kernel's {m} input features")

    def contract(inputs: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        return tf.tensordot(inputs, w, axes=1)  # (..., n)

    y = weight_contraction(x, kernel, contract, scales(m, n), inverse_sqrt(_rows(x, m)))
    return y if bias is None else bias_add(y, bias)


def linear(
    x: tf.Tensor, kernel: Any, bias: Any = None, constraint: Constraint = "gmean"
) -> tf.Tensor:
    """Unit-scaled ``x @ kernel + bias``: x (..., m), kernel (m, n), bias (n,) -> (..., n).

    Output m^-1/2 and x-gradient n^-1/2, tied by ``constraint``; kernel and bias gradients
    rows^-1/2 (the PyTorch library's ``U.linear``).
    """
    _check_constraint(constraint)
    return _kernel_product(
        x, kernel, "linear", lambda m, n: constrain(m**-0.5, n**-0.5, constraint), bias
    )


def readout(
    x: tf.Tensor, kernel: Any, bias: Any = None, constraint: Optional[Constraint] = None
) -> tf.Tensor:
    """u-mup's readout ``x @ kernel + bias``: output 1/m, x-gradient n^-1/2.

    ``constraint`` None leaves the two untied (the library's default: x's gradient is the true
    one times a constant that Adam does not see); "forward" ties both to 1/m (true gradients).
    Kernel and bias gradients rows^-1/2.
    """
    _check_constraint(constraint, allow_none=True)

    def scales(m: int, n: int) -> tuple[float, float]:
        if constraint is None:
            return 1.0 / m, n**-0.5
        return constrain(1.0 / m, n**-0.5, constraint)

    return _kernel_product(x, kernel, "readout", scales, bias)


def _batch_size(x: tf.Tensor) -> Factor:
    """Product of x's batch dims (all but the last two), static when known."""
    return product(
        [int(d) if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-2])]
    )


def _expansion(x: tf.Tensor, other: tf.Tensor) -> Factor:
    """How many copies of x the batch broadcast of ``x @ other`` makes."""
    if x.shape[:-2].is_fully_defined() and other.shape[:-2].is_fully_defined():
        out = tf.broadcast_static_shape(x.shape[:-2], other.shape[:-2])
        return int(out.num_elements() or 1) // max(int(x.shape[:-2].num_elements() or 1), 1)
    out_batch = tf.broadcast_dynamic_shape(tf.shape(x)[:-2], tf.shape(other)[:-2])
    return tf.cast(tf.reduce_prod(out_batch), tf.float32) / tf.cast(_batch_size(x), tf.float32)


def _size(x: tf.Tensor, axis: int) -> Factor:
    return int(x.shape[axis]) if x.shape[axis] is not None else tf.shape(x)[axis]


def matmul(x1: tf.Tensor, x2: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.matmul`` of two activations (both edges non-cut).

    x1 (..., m, k) @ x2 (..., k, n) -> (..., m, n) with batch dims broadcast; a 1-D operand
    is a vector (m or n = 1, its axis dropped from the result), as in ``keras.ops.matmul``.
    Ideal scales: output k^-1/2, x1-gradient (n e1)^-1/2, x2-gradient (m e2)^-1/2 (e: the
    broadcast copies); ``constraint`` ties them like ``scmm.uscale.matmul`` ("gmean": all three
    their geometric mean; "forward": the output's; "backward": the gradients' geometric mean;
    "separate": untied).
    """
    _check_constraint(constraint)
    x1, x2 = tf.convert_to_tensor(x1), tf.convert_to_tensor(x2)
    if len(x1.shape) == 0 or len(x2.shape) == 0:
        raise ValueError(f"matmul needs operands of rank >= 1, got {x1.shape} and {x2.shape}")
    if x2.dtype != x1.dtype:
        x2 = tf.cast(x2, x1.dtype)
    vector1, vector2 = len(x1.shape) == 1, len(x2.shape) == 1
    a = x1[None, :] if vector1 else x1  # (..., m, k)
    b = x2[:, None] if vector2 else x2  # (..., k, n)
    if a.shape[-1] is not None and b.shape[-2] is not None and a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: inner dims differ, {x1.shape} @ {x2.shape}")
    ideal = (
        inverse_sqrt(_size(a, -1)),
        inverse_sqrt(product([_size(b, -1), _expansion(a, b)])),
        inverse_sqrt(product([_size(a, -2), _expansion(b, a)])),
    )
    out_scale, a_scale, b_scale = _tie_three(ideal, constraint)
    a, b = precision.operand(a, "activation"), precision.operand(b, "activation")
    y = tf.matmul(scaling(a, backward=a_scale), scaling(b, backward=b_scale))  # (..., m, n)
    y = scaling(precision.output(y), forward=out_scale)
    if vector2:
        y = y[..., 0]
    if vector1:
        y = y[..., 0, :] if not vector2 else y[..., 0]
    return y


def embedding(ids: tf.Tensor, table: Any) -> tf.Tensor:
    """``table[ids]``: ids (...) ints, table (vocab, d) -> (..., d) in the table's dtype.

    The table's gradient (an IndexedSlices, as TensorFlow gives it) is scaled by
    sqrt(vocab / number of ids): row v's gradient sums the output gradients at the ids equal
    to v, and those counts add up to the number of ids whatever their distribution.
    """
    table_t = tf.convert_to_tensor(table)
    if len(table_t.shape) != 2 or table_t.shape[0] is None:
        raise ValueError(f"embedding expects a table (vocab, dim), got {table_t.shape}")
    ids = tf.convert_to_tensor(ids)
    if ids.dtype not in (tf.int32, tf.int64):
        if ids.dtype.is_floating or ids.dtype.is_integer:
            ids = tf.cast(ids, tf.int32)  # as keras.layers.Embedding does
        else:
            raise ValueError(f"embedding ids must be integers, got dtype {ids.dtype.name}")
    vocab = int(table_t.shape[0])
    if ids.shape.is_fully_defined():
        factor: Factor = math.sqrt(vocab / global_rows(max(int(ids.shape.num_elements() or 0), 1)))
    else:
        factor = tf.sqrt(vocab / global_rows(tf.cast(tf.maximum(tf.size(ids), 1), tf.float32)))
    return tf.gather(scaling(table_t, backward=factor), ids)  # (..., d)
