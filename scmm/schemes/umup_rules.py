"""u-mup's learning-rate rules for Adam(W) and SGD, by parameter role and depth (issue 14).

From the u-mup paper's section E and the PyTorch library's ``scaled_parameters``
(``../shared/reference/wave2-facts.md`` section 2), with L the number of *layers* of the trunk
(the library's depth container counts transformer layers, each holding an attention and an
FFN branch; scmm's table counts residual blocks, two per such layer) and "in a branch" meaning
the parameter sits inside a residual block (its table row has a ``depth``):

| role | multiplier of the global learning rate |
|---|---|
| ``weight`` | ``fan_in^-1/2``, times ``L^-1/2`` in a branch |
| ``bias``, ``gain``, ``offset`` | ``L^-1/2`` in a branch, else 1 |
| ``embedding`` | ``d^-1/2``, d the embedding width (the table's last axis) |
| ``readout`` | 1 |

Fan-in is the one the layer declared (never guessed from a kernel's shape: a Keras ``(in,
out)`` kernel, a conv ``(k, in/groups, out)`` kernel and scmm's attention kernels all differ
from PyTorch's layout).

SGD, as the library defines it: with u-mup's unconstrained readout every gradient is unit, so
the Adam table applies unchanged. With the ``to_output_scale`` readout (scmm's
``readout_constraint: forward``), the trunk's gradients are smaller by the readout's tied
scale, and the table is: weight ``fan_in^1/2``, bias / gain / offset ``width`` (the library's
``shape[0]`` of a 1-D vector; scmm uses the last axis, so the RNN's (2, hidden) gate bias
gets hidden, not 2), embedding ``d^1/2`` (the library treats it as a weight of fan-in d),
readout 1, each times ``L^-1/2`` in a branch.
"""

import math

from ..parameters import Parameter, ParameterTable

# Roles of 1-D parameters that scale or shift activations (norms and biases).
_VECTOR_ROLES = ("bias", "gain", "offset")


def adam_learning_rate_multiplier(row: Parameter, layers: int) -> float:
    """The u-mup Adam multiplier of one parameter (``layers``: the trunk's L)."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    depth_factor = layers**-0.5 if row.depth is not None else 1.0
    if row.role == "weight":
        if row.fan_in is None or row.fan_in < 1:
            raise ValueError(
                f"parameter {row.path!r} (role weight) declares no fan-in; u-mup's rule needs"
                " it (declare it with add_parameter(..., fan_in=...))"
            )
        return row.fan_in**-0.5 * depth_factor
    if row.role in _VECTOR_ROLES:
        return depth_factor
    if row.role == "embedding":
        return row.shape[-1] ** -0.5
    if row.role == "readout":
        return 1.0
    raise ValueError(f"parameter {row.path!r} has role {row.role!r}, which u-mup has no rule for")


def sgd_output_scale_multiplier(row: Parameter, layers: int) -> float:
    """The library's SGD multiplier with the ``to_output_scale`` readout (module docstring)."""
    adam = adam_learning_rate_multiplier(row, layers)  # validates the row and layers
    depth_factor = layers**-0.5 if row.depth is not None else 1.0
    if row.role == "weight":
        assert row.fan_in is not None
        return row.fan_in**0.5 * depth_factor
    if row.role in _VECTOR_ROLES:
        return row.shape[-1] * depth_factor
    if row.role == "embedding":
        return row.shape[-1] ** 0.5
    return adam  # readout: 1


def learning_rate_multipliers(
    table: ParameterTable, layers: int, optimiser: str = "adamw", readout_constraint: str = "none"
) -> dict[str, float]:
    """``{path: multiplier}`` for every row of ``table`` (checked before anything is used).

    optimiser: "adamw" or "sgdm"; readout_constraint: "none" (u-mup's default) or "forward".
    """
    if optimiser not in ("adamw", "sgdm"):
        raise ValueError(f"u-mup has learning-rate rules for adamw|sgdm, got {optimiser!r}")
    if readout_constraint not in ("none", "forward"):
        raise ValueError(f"readout_constraint must be none|forward, got {readout_constraint!r}")
    rule = adam_learning_rate_multiplier
    if optimiser == "sgdm" and readout_constraint == "forward":
        rule = sgd_output_scale_multiplier
    multipliers = {row.path: rule(row, layers) for row in table}
    bad = [path for path, value in multipliers.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"non-finite u-mup learning-rate multipliers for {bad[:5]}")
    return multipliers
