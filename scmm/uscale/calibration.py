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

The factor is a Python float stored on the Keras variable and applied where the op reads the
variable, in float32 on the gradient's way back to it. It is baked into a traced step, so set
or restore factors before the first training step is compiled. Simulated low precision still
rounds the weight gradient at its analytic scale (within a few octaves of 1).
"""

import math
from typing import Any, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from .scaling import as_compute, scaling

_FACTOR_ATTRIBUTE = "_scmm_gradient_factor"


def gradient_factor(weight: Any) -> float:
    """The calibrated gradient factor of a variable; 1.0 when uncalibrated or not a variable."""
    return float(getattr(weight, _FACTOR_ATTRIBUTE, 1.0))


def read_weight(weight: Any, dtype: Optional[tf.DType] = None) -> tf.Tensor:
    """A variable as a tensor (cast to ``dtype``), its gradient times its calibrated factor.

    The factor is applied in the variable's own dtype (float32 master weights) after the
    gradient is cast back, so it never changes low-precision rounding.
    """
    value = scaling(weight, backward=gradient_factor(weight))
    return value if dtype is None else as_compute(value, dtype)


def weight_gradient_factors(model: keras.layers.Layer) -> dict[str, float]:
    """``{variable path: factor}`` for every trainable weight (1.0 where uncalibrated)."""
    return {v.path: gradient_factor(v) for v in model.trainable_weights}


def set_weight_gradient_factors(model: keras.layers.Layer, factors: Mapping[str, float]) -> None:
    """Attach factors by variable path; the names must match the trainable weights exactly.

    Call before the first training step is traced: the factors are compile-time constants.
    """
    variables = {v.path: v for v in model.trainable_weights}
    missing, unknown = variables.keys() - factors.keys(), factors.keys() - variables.keys()
    if missing or unknown:
        raise ValueError(
            f"weight-gradient factors do not match the model's trainable weights:"
            f" missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]}"
        )
    for name, value in factors.items():
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"weight-gradient factor for {name!r} is {value}; expected a finite value > 0"
            )
    for name, value in factors.items():
        setattr(variables[name], _FACTOR_ATTRIBUTE, float(value))


def _weight_gradients(model: keras.layers.Layer, batch: Mapping[str, Any]) -> dict[str, tf.Tensor]:
    tokens = tf.convert_to_tensor(np.asarray(batch["tokens"]), dtype=tf.int32)  # (b, s)
    mask = tf.convert_to_tensor(np.asarray(batch["mask"]), dtype=tf.bool)  # (b, s)
    weights = list(model.trainable_weights)
    with tf.GradientTape() as tape:
        outputs = model(tokens, mask)
        loss = tf.cast(outputs["loss"], tf.float32)
    grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return {v.path: tf.convert_to_tensor(g) for v, g in zip(weights, grads)}


def calibrate_weight_gradients(
    model: keras.layers.Layer, batch: Mapping[str, Any]
) -> dict[str, float]:
    """Measure each weight gradient's RMS on ``batch`` and set factors that make it 1.

    One forward + backward pass, run eagerly; the weights are not updated. Factors compose
    with any already set, so re-calibrating an already calibrated model is a no-op on the
    same batch. A parameter whose gradient is exactly zero on the batch keeps its factor, and
    a non-finite gradient raises (naming the parameter) rather than storing a bad factor.
    Returns the new factors by variable path.
    """
    factors = weight_gradient_factors(model)
    for name, grad in _weight_gradients(model, batch).items():
        rms = float(tf.sqrt(tf.reduce_mean(tf.square(tf.cast(grad, tf.float64)))))
        if not math.isfinite(rms):
            raise FloatingPointError(
                f"calibration: the gradient of {name!r} is not finite (RMS {rms})"
            )
        if rms > 0:
            factors[name] /= rms
    set_weight_gradient_factors(model, factors)
    return factors
