"""The unit-scaled residual connection: ``residual_split`` before a branch, ``residual_add``
after it (``scmm.uscale.residual_split`` / ``residual_add``).

scmm's tau is the branch's share of the variance, tau in (0, 1):

    y = sqrt(1 - tau) x + sqrt(tau) f(x)

so y stays unit when x and f(x) are unit and independent. The split gives the branch input's
gradient the sqrt(tau) the chain rule owes it, while the branch itself sees a unit gradient;
together the two ops give x exactly the true gradient of y.

The PyTorch library (unit_scaling) writes the same add with a ratio tau_lib > 0, weights
tau_lib / sqrt(1 + tau_lib^2) on the branch and 1 / sqrt(1 + tau_lib^2) on the skip. The two
agree when tau = tau_lib^2 / (1 + tau_lib^2) (``tau_from_library``); its default tau_lib = 1
is tau = 1/2, and u-muP's depth rule (``transformer_residual_scaling_rule``) at mult 1 gives
tau(i) = 1 / (L_total / 2 + i + 1) in scmm's convention.
"""

import math

import tensorflow as tf

from .. import uscale


def tau_from_library(tau_lib: float) -> float:
    """scmm's tau for the PyTorch library's residual ratio tau_lib: tau_lib^2 / (1 + tau_lib^2)."""
    if isinstance(tau_lib, bool) or not isinstance(tau_lib, (int, float)):
        raise ValueError(f"library tau must be a finite number > 0, got {tau_lib!r}")
    if not (math.isfinite(tau_lib) and tau_lib > 0):
        raise ValueError(f"library tau must be a finite number > 0, got {tau_lib!r}")
    return tau_lib**2 / (1.0 + tau_lib**2)


def check_tau(tau: float) -> float:
    """``tau`` as a float if it is a number in (0, 1), else a ValueError."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 < tau < 1.0:
        raise ValueError(
            f"residual tau must be a number in (0, 1) (the branch's share of the variance),"
            f" got {tau!r}"
        )
    return float(tau)


def residual_split(x: tf.Tensor, tau: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(skip, branch_input): both x; the branch input's gradient is multiplied by sqrt(tau)."""
    return uscale.residual_split(tf.convert_to_tensor(x), check_tau(tau))


def residual_add(skip: tf.Tensor, branch_output: tf.Tensor, tau: float) -> tf.Tensor:
    """sqrt(1 - tau) skip + sqrt(tau) branch_output, the branch's gradient left unit (the
    sqrt(tau) is applied by ``residual_split``). Skip and branch must have the same shape."""
    tau = check_tau(tau)
    skip, branch_output = tf.convert_to_tensor(skip), tf.convert_to_tensor(branch_output)
    if not skip.shape.is_compatible_with(branch_output.shape):
        raise ValueError(
            f"residual_add: the branch output {branch_output.shape} does not match the skip"
            f" {skip.shape}"
        )
    if branch_output.dtype != skip.dtype:
        branch_output = tf.cast(branch_output, skip.dtype)
    return uscale.residual_add(skip, branch_output, tau)
