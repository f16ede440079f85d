"""Calibrated weight-gradient scales: one measured constant per parameter, fixed at init.

Why: the ops scale each parameter's gradient by rows^-1/2 (``scmm.uscale.ops``), which makes it
unit when the rows it sums are independent. That holds for a layer on iid inputs, and the layer
tests check it to a few percent. In a whole model the rows are correlated: attention averages
over positions, and the loss gradient has a component shared by every token (the model's
mean prediction against the data's character frequencies). Shared components add up ~rows
times instead of ~sqrt(rows) times, so at init the analytic weight gradients of the paper
models measure 1-6 on random tokens and 2-20 on text (vectors the most). No static exponent
fits both: the excess depends on the data.

A parameter's gradient is a *cut edge*: nothing else depends on it, so any constant factor is
allowed (unit-scaling paper, section 5). Calibration measures each parameter's gradient RMS on
one batch at initialisation and fixes the factor 1/RMS for the rest of training. It changes no
forward value and no activation gradient. Under Adam (the paper's optimiser) a constant factor
per parameter cancels in m / sqrt(v), so training is unchanged up to epsilon. Under SGD it sets
each parameter's effective learning rate.

The factor is a column of the model's per-parameter table (``scmm.parameters``), applied by
the trainer to each gradient as it comes off the tape, in the gradient's own dtype and before
loss-scale unscaling: exactly where a custom gradient on the variable read would apply it.
Simulated low precision still rounds the weight gradient at its analytic scale (within a few
octaves of 1), and set or restore factors before the first training step is compiled: they
are compile-time constants.
"""

import math
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from ..ops.kernels import apply_gradient_factors
from ..parameters import ParameterTable


def weight_gradients(
    model: keras.layers.Layer, batch: Mapping[str, Any], factors: Mapping[str, float]
) -> dict[str, tf.Tensor]:
    """Every trainable weight's gradient on ``batch`` as the optimiser would see it (dense)."""
    tokens = tf.convert_to_tensor(np.asarray(batch["tokens"]), dtype=tf.int32)  # (b, s)
    mask = tf.convert_to_tensor(np.asarray(batch["mask"]), dtype=tf.bool)  # (b, s)
    weights = list(model.trainable_weights)
    with tf.GradientTape() as tape:
        outputs = model(tokens, mask)
        loss = tf.cast(outputs["loss"], tf.float32)
    grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = apply_gradient_factors(weights, grads, factors)
    return {v.path: tf.convert_to_tensor(g) for v, g in zip(weights, grads)}


def calibrate_weight_gradients(
    model: keras.layers.Layer, batch: Mapping[str, Any], table: ParameterTable
) -> dict[str, float]:
    """Measure each weight gradient's RMS on ``batch`` and set factors that make it 1.

    One forward + backward pass, run eagerly; the weights are not updated. Factors compose
    with those already in ``table``, so re-calibrating is a no-op on the same batch. A
    parameter whose gradient is exactly zero on the batch keeps its factor, and a non-finite
    gradient raises (naming the parameter) rather than storing a bad factor. Returns the new
    factors by variable path.
    """
    factors = table.gradient_factors()
    for name, grad in weight_gradients(model, batch, factors).items():
        rms = float(tf.sqrt(tf.reduce_mean(tf.square(tf.cast(grad, tf.float64)))))
        if not math.isfinite(rms):
            raise FloatingPointError(
                f"calibration: the gradient of {name!r} is not finite (RMS {rms})"
            )
        if rms > 0:
            factors[name] /= rms
    table.set_gradient_factors(factors)
    return factors
