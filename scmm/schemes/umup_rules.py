"""u-mup's learning-rate rules for Adam(W), by parameter role and depth (issue 14).

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
from PyTorch's layout). With u-mup's unconstrained readout the library's SGD rule is this same
table; its variant for a ``to_output_scale`` readout is not implemented here yet. Not yet used
by a scheme: the u-mup scheme of issue 14 will assign these.
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


def adam_learning_rate_multipliers(table: ParameterTable, layers: int) -> dict[str, float]:
    """``{path: multiplier}`` for every row of ``table`` (checked before anything is used)."""
    multipliers = {row.path: adam_learning_rate_multiplier(row, layers) for row in table}
    bad = [path for path, value in multipliers.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"non-finite u-mup learning-rate multipliers for {bad[:5]}")
    return multipliers
