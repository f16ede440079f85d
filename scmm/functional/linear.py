"""Unit-scaled linear maps and lookups under Keras names: ``linear`` (what ``Dense``
computes), ``readout`` (u-mup's output layer), ``matmul`` (two activations) and ``embedding``.

Scales (unit-scaling paper, section 5; u-mup paper, section E), for x (..., m) and a kernel
(m, n) initialised N(0, 1):

- ``linear``: output m^-1/2, x-gradient n^-1/2, tied by the constraint; kernel and bias
  gradients rows^-1/2 (rows = the entries of x per feature), a scalar tensor when the batch is
  only known at run time.
- ``readout``: output 1/m (mu-P's output multiplier), x-gradient n^-1/2, untied by default.
- ``matmul``: ``scmm.uscale.matmul``'s rule (output k^-1/2, gradients n^-1/2 and m^-1/2).
- ``embedding``: a plain gather; the table's gradient times sqrt(vocab / ids), ids counted at
  run time when needed, which makes its RMS 1 whatever the id distribution.
"""

import math
from typing import Any, Optional

import tensorflow as tf

from .. import uscale
from ..ops.kernels import as_compute
from ..uscale.scaling import Constraint, scaling
from .einsum import weight_einsum


def bias_add(y: tf.Tensor, bias: Any) -> tf.Tensor:
    """y + bias over the last axis; bias gradient rows^-1/2 (rows = y.size / bias.size)."""
    bias_t = as_compute(bias, y.dtype)
    entries = int(bias_t.shape.num_elements() or 1)
    if y.shape.is_fully_defined():
        factor: Any = (y.shape.num_elements() / entries) ** -0.5
    else:
        factor = tf.math.rsqrt(tf.cast(tf.size(y), tf.float32) / entries)
    return y + scaling(bias_t, backward=factor)


def linear(
    x: tf.Tensor, kernel: Any, bias: Any = None, constraint: Constraint = "gmean"
) -> tf.Tensor:
    """Unit-scaled ``x @ kernel + bias``: x (..., m), kernel (m, n) -> (..., n)."""
    y = weight_einsum("...i,io->...o", x, kernel, constraint)
    return y if bias is None else bias_add(y, bias)


def readout(
    x: tf.Tensor, kernel: Any, bias: Any = None, constraint: Optional[Constraint] = None
) -> tf.Tensor:
    """u-mup's readout ``x @ kernel + bias``: output 1/m, x-gradient n^-1/2 (``constraint``
    None: untied, the library's default; "forward" ties both to 1/m)."""
    y = weight_einsum("...i,io->...o", x, kernel, constraint, readout=True)
    return y if bias is None else bias_add(y, bias)


def matmul(x1: tf.Tensor, x2: tf.Tensor, constraint: Constraint = "gmean") -> tf.Tensor:
    """Unit-scaled ``keras.ops.matmul`` of two activations (..., m, k) @ (..., k, n)."""
    return uscale.matmul(tf.convert_to_tensor(x1), tf.convert_to_tensor(x2), constraint)


def embedding(ids: tf.Tensor, table: Any) -> tf.Tensor:
    """``table[ids]`` (ids (...) int, table (vocab, d)) -> (..., d); table gradient times
    sqrt(vocab / number of ids) (an IndexedSlices, as TensorFlow gives it)."""
    table_t = tf.convert_to_tensor(table)
    ids = tf.cast(ids, tf.int32)
    vocab = int(table_t.shape[0])
    if ids.shape.is_fully_defined():
        factor: Any = math.sqrt(vocab / max(ids.shape.num_elements() or 1, 1))
    else:
        factor = tf.sqrt(vocab / tf.cast(tf.maximum(tf.size(ids), 1), tf.float32))
    return tf.gather(scaling(table_t, backward=factor), ids)
