"""A sparse kernel is scaled by its *active* fan-in: a 90%-sparse unit-scaled layer is still
unit-scaled at init (output, input-gradient and weight-gradient std ~1), and a plain layer's
initial values carry the density^-1/2 of Glorot-rescaled-by-density.
"""

from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from scmm.layers import Projection
from scmm.ops import get_ops

RNG = np.random.default_rng(0)
BATCH, WIDTH = 4096, 256


def _sparse_projection(ops: Any, density: float) -> Projection:
    layer = Projection(WIDTH, WIDTH, use_bias=False, seed=3, ops=ops)
    layer.build(None)
    mask = RNG.random((WIDTH, WIDTH)) < density
    scale = layer.ops.sparse_init_factor(density)
    layer.kernel.assign(layer.kernel.numpy() * mask * scale)
    layer.densities["kernel"] = density
    return layer


def _stds(layer: Projection) -> tuple[float, float, float]:
    x = tf.constant(RNG.normal(size=(BATCH, WIDTH)).astype("float32"))
    g = tf.constant(RNG.normal(size=(BATCH, WIDTH)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    grad_x, grad_w = tape.gradient(y, [x, layer.kernel], output_gradients=g)
    return (
        float(tf.math.reduce_std(y)),
        float(tf.math.reduce_std(grad_x)),
        float(tf.math.reduce_std(grad_w)),
    )


@pytest.mark.parametrize("ops", ["unit", {"name": "umup"}])
@pytest.mark.parametrize("density", [0.1, 0.25])
def test_a_sparse_unit_scaled_projection_is_unit_scaled_at_init(ops: Any, density: float) -> None:
    out, grad_x, grad_w = _stds(_sparse_projection(ops, density))
    assert 0.8 <= out <= 1.25
    assert 0.8 <= grad_x <= 1.25
    assert 0.8 <= grad_w <= 1.25  # the dense gradient (RigL regrows from it) stays unit


def test_without_the_active_fan_in_a_sparse_kernel_shrinks_by_sqrt_density() -> None:
    layer = _sparse_projection("unit", 0.1)
    layer.densities.clear()  # the dense rule
    out, grad_x, _ = _stds(layer)
    assert out == pytest.approx(0.1**0.5, rel=0.1)
    assert grad_x == pytest.approx(0.1**0.5, rel=0.1)


def test_a_sparse_plain_projection_keeps_the_dense_output_scale() -> None:
    dense_out, _, _ = _stds(_sparse_projection("plain", 1.0))
    sparse_out, _, _ = _stds(_sparse_projection("plain", 0.1))
    assert get_ops("plain").sparse_init_factor(0.1) == pytest.approx(0.1**-0.5)
    assert sparse_out == pytest.approx(dense_out, rel=0.1)
