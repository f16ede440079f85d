"""The per-parameter table: every fact about a model's parameters, keyed by variable path.

A layer declares each variable's *role* and *fan-in* when it creates it (``ParameterInfo``):
fan-in is never inferred from the shape, because Keras lays kernels out differently from
PyTorch (a ``Dense`` kernel is (in, out), a ``Conv1D`` kernel (k, in/groups, out)). The model
adds each parameter's depth position (which residual block holds it). The scaling scheme
turns those facts into multipliers: learning rate, weight decay and the weight-gradient
factor. The optimiser, calibration and ``parameters.json`` all read this one table; nothing
travels as a list aligned by position or as an attribute on a variable.

Importable without TensorFlow (the ground floor): shapes are tuples of ints.
"""

import dataclasses
import math
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, get_args

Role = Literal["weight", "bias", "gain", "offset", "embedding", "readout"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclasses.dataclass(frozen=True)
class ParameterInfo:
    """What the layer that creates a variable knows about it.

    role: weight (a matrix multiplying activations), bias (added), gain / offset (a norm's
    scale and shift), embedding (a table or vector read, not multiplied: also the shift's
    padding vector), readout (the output projection's kernel). fan_in: how many input terms
    each output of the op that uses it sums (for a weight: the contraction size; None where it
    has no meaning, e.g. a bias).
    """

    role: Role
    fan_in: Optional[int] = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"parameter role {self.role!r}; expected one of {', '.join(ROLES)}")
        if self.fan_in is not None and self.fan_in < 1:
            raise ValueError(f"parameter fan_in must be >= 1 or None, got {self.fan_in}")


@dataclasses.dataclass
class Parameter:  # pylint: disable=too-many-instance-attributes
    """One row of the table. Multipliers are set by the scaling scheme (default 1)."""

    path: str
    shape: tuple[int, ...]
    role: Role
    fan_in: Optional[int] = None
    depth: Optional[int] = None
    """1-based index of the residual block holding the parameter (None outside the trunk)."""
    learning_rate_multiplier: float = 1.0
    weight_decay_multiplier: float = 1.0
    gradient_factor: float = 1.0
    """Constant multiplying the parameter's gradient before the optimiser sees it (a cut
    edge: calibration measures it; 1 leaves the gradient as the ops computed it)."""

    @property
    def size(self) -> int:
        """Number of scalars."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able row (``parameters.json``)."""
        row = dataclasses.asdict(self)
        row["shape"] = list(self.shape)
        return row


class ParameterTable:
    """Rows by variable path, in the model's trainable-weight order."""

    def __init__(self, rows: Iterable[Parameter], depth: int = 0, layers: Optional[int] = None):
        self._rows: dict[str, Parameter] = {}
        for row in rows:
            if row.path in self._rows:
                raise ValueError(f"duplicate parameter path {row.path!r}")
            self._rows[row.path] = row
        self.depth = depth
        """Residual blocks in the trunk (the depth positions run 1..depth)."""
        self.layers = depth if layers is None else layers
        """Layers of the trunk, each a sequence-mixer block and (usually) a token-mixer block:
        the L of u-mup's depth rules (the PyTorch library's depth counts transformer layers)."""

    def __iter__(self) -> Iterator[Parameter]:
        return iter(self._rows.values())

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, path: object) -> bool:
        return path in self._rows

    def __getitem__(self, path: str) -> Parameter:
        try:
            return self._rows[path]
        except KeyError:
            raise KeyError(f"no parameter {path!r} in the table") from None

    @property
    def paths(self) -> list[str]:
        """Every path, in order."""
        return list(self._rows)

    def gradient_factors(self) -> dict[str, float]:
        """``{path: gradient factor}``."""
        return {row.path: row.gradient_factor for row in self}

    def set_gradient_factors(self, factors: Mapping[str, float]) -> None:
        """Replace every factor; names must match exactly and values be finite and > 0.

        Everything is checked before anything is set.
        """
        missing, unknown = self._rows.keys() - factors.keys(), factors.keys() - self._rows.keys()
        if missing or unknown:
            raise ValueError(
                "weight-gradient factors do not match the model's parameters:"
                f" missing {sorted(missing)[:5]}, unknown {sorted(unknown)[:5]}"
            )
        for path, value in factors.items():
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(
                    f"weight-gradient factor for {path!r} is {value}; expected a finite value > 0"
                )
        for path, value in factors.items():
            self._rows[path].gradient_factor = float(value)

    def to_json(self) -> list[dict[str, Any]]:
        """Every row as JSON-able data (``parameters.json``)."""
        return [row.to_dict() for row in self]
