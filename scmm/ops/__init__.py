"""Op sets: the arithmetic of scmm's layers, chosen by a spec (``"plain"``, ``"unit"``, or
``{"name": "umup", "attn_softmax": 0.25, ...}``).

``get_ops(spec)`` returns the shared instance of an op set. A spec is the op set's name, or a
JSON-able dict of its name and options (u-mup's multipliers). Op sets are stateless apart from
those options, so a layer stores only the spec (which ``get_config`` round-trips). TensorFlow
loads on first use.
"""

import json
from typing import TYPE_CHECKING, Any, Mapping, Union

if TYPE_CHECKING:
    from .base import OpSet

OP_SETS = ("plain", "unit", "umup")

OpsSpec = Union[str, Mapping[str, Any]]
"""An op set's name, or ``{"name": name, **options}``."""

_INSTANCES: dict[str, "OpSet"] = {}


def ops_name(spec: OpsSpec) -> str:
    """The op set's name in ``spec``."""
    name = spec if isinstance(spec, str) else spec.get("name")
    if name not in OP_SETS:
        raise ValueError(f"unknown op set {name!r}; expected one of {', '.join(OP_SETS)}")
    return str(name)


def _build(name: str, options: Mapping[str, Any]) -> "OpSet":
    if name == "umup":
        from .umup import UmupOps

        return UmupOps(**options)
    if options:
        raise ValueError(f"op set {name!r} takes no options, got {dict(options)}")
    if name == "plain":
        from .plain import PlainOps

        return PlainOps()
    from .unit import UnitOps

    return UnitOps()


def get_ops(spec: OpsSpec) -> "OpSet":
    """The op set ``spec`` describes; unknown names list the known ones."""
    name = ops_name(spec)
    options = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    key = json.dumps([name, options], sort_keys=True)
    if key not in _INSTANCES:
        _INSTANCES[key] = _build(name, options)
    return _INSTANCES[key]


__all__ = ["OP_SETS", "OpsSpec", "get_ops", "ops_name"]
