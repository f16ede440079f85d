"""Op sets: the arithmetic of scmm's layers, chosen by name (``"plain"`` or ``"unit"``).

``get_ops(name)`` returns the shared instance of an op set. Op sets are stateless, so a layer
stores only the name (which ``get_config`` round-trips). TensorFlow loads on first use.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import OpSet

OP_SETS = ("plain", "unit")

_INSTANCES: dict[str, "OpSet"] = {}


def get_ops(name: str) -> "OpSet":
    """The op set called ``name``; unknown names list the known ones."""
    if name not in _INSTANCES:
        if name == "plain":
            from .plain import PlainOps

            _INSTANCES[name] = PlainOps()
        elif name == "unit":
            from .unit import UnitOps

            _INSTANCES[name] = UnitOps()
        else:
            raise ValueError(f"unknown op set {name!r}; expected one of {', '.join(OP_SETS)}")
    return _INSTANCES[name]


__all__ = ["OP_SETS", "get_ops"]
