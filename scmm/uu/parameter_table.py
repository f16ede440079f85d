"""``parameter_table(model)``: the per-parameter facts of a Keras model built from ``scmm.uu``.

Every ``scmm.uu`` layer declares ``{attribute name: ParameterInfo(role, fan_in)}`` for its
weights (``UnitScaled.parameter_info``); this module walks the model's layers, resolves each
name to its variable (dotted for sub-layers: ``query_dense.kernel``, ``branch.kernel``) and adds
the depth position u-muP's rules need: which residual block holds the parameter. A layer is in
a residual branch when it sits inside a layer with a ``branch`` attribute (``scmm.uu.Residual``)
or is named in ``branches`` (``{layer name: 1-based block index}``, e.g. what
``model.scmm_report.branches()`` returns after ``unit_scale``).

u-muP's L (``layers``) counts transformer *layers*, each holding two residual branches
(attention and MLP), as the PyTorch library's depth container does; so it defaults to
ceil(blocks / 2), and to 1 for a model without residual blocks (whose rows then have no depth
and no depth factor).
"""

import math
from typing import Any, Iterable, Mapping, Optional

import keras

from ..parameters import Parameter, ParameterInfo, ParameterTable


class KerasParameterTable(ParameterTable):
    """A ``ParameterTable`` that also lists trainable variables without declared facts.

    ``unknown``: ``{path: shape}`` of variables admitted with ``allow_unknown=True``; they have
    no row (no role for a rule to read), and ``scmm.uu.AdamW`` trains them at multiplier 1.
    """

    def __init__(
        self,
        rows: Iterable[Parameter],
        depth: int = 0,
        layers: Optional[int] = None,
        unknown: Optional[Mapping[str, tuple[int, ...]]] = None,
    ):
        super().__init__(rows, depth=depth, layers=layers)
        self.unknown: dict[str, tuple[int, ...]] = dict(unknown or {})


def parameter_table(
    model: keras.Model,
    layers: Optional[int] = None,
    branches: Optional[Mapping[str, int]] = None,
    allow_unknown: bool = False,
) -> KerasParameterTable:
    """The facts of every trainable variable of ``model``, rows keyed by ``variable.path``.

    Args:
        model: a built Keras model (or layer) whose layers declare ``parameter_info()``.
        layers: u-muP's L; default ceil(number of residual blocks / 2) (at least 1).
        branches: ``{layer name: 1-based residual block index}`` for layers in a residual
            branch that is not a ``branch`` wrapper (names that are not layers of the model,
            e.g. ``keras.ops`` nodes of a transform's report, hold no variables and are
            skipped).
        allow_unknown: admit trainable variables no layer declared facts for (listed in
            ``table.unknown``, trained at multiplier 1) instead of raising.

    Raises:
        ValueError: an unbuilt model, a declared name that is not a variable, two layers
            declaring different facts for one variable, or (unless ``allow_unknown``)
            trainable variables without facts.
    """
    if not model.built:
        raise ValueError(f"parameter_table needs a built model; build or call {model.name!r} first")
    if layers is not None and layers < 1:
        raise ValueError(f"layers (u-muP's L) must be >= 1, got {layers}")
    # Keras's own recursive walk (every nested layer once, parents before their children).
    sub_layers = model._flatten_layers(  # pylint: disable=protected-access
        include_self=False, recursive=True
    )
    walk = [model, *sub_layers]
    facts = _declared_facts(walk)
    depth_of, blocks = _depth_positions(walk, branches or {})
    rows, unknown = [], {}
    for variable in model.trainable_variables:
        shape = tuple(int(d) for d in variable.shape)
        info = facts.get(id(variable))
        if info is None:
            unknown[variable.path] = shape
            continue
        rows.append(
            Parameter(
                path=variable.path,
                shape=shape,
                role=info.role,
                fan_in=info.fan_in,
                depth=depth_of.get(id(variable)),
            )
        )
    if unknown and not allow_unknown:
        listed = ", ".join(sorted(unknown)[:10])
        raise ValueError(
            f"{len(unknown)} trainable variable(s) of {model.name!r} have no declared role and"
            f" fan-in (layers without parameter_info(): not scmm.uu layers?): {listed}. Use"
            " scmm.uu layers (or scmm.unit_scale), or pass allow_unknown=True to train them"
            " at learning-rate multiplier 1"
        )
    default_layers = max(1, math.ceil(blocks / 2))
    return KerasParameterTable(rows, depth=blocks, layers=layers or default_layers, unknown=unknown)


def _declared_facts(walk: list[Any]) -> dict[int, ParameterInfo]:
    """``{id(variable): facts}`` from every layer having ``parameter_info()``.

    A wrapper re-declares its sub-layers' variables (``branch.kernel``, ``query_dense.kernel``)
    and the walk also meets the sub-layers themselves: the same variable twice is fine when
    both say the same.
    """
    facts: dict[int, ParameterInfo] = {}
    for layer in walk:
        declare = getattr(layer, "parameter_info", None)
        if not callable(declare):
            continue
        for name, info in declare().items():
            variable = _resolve(layer, name)
            known = facts.get(id(variable))
            if known is not None and known != info:
                raise ValueError(
                    f"parameter {variable.path!r} declared as {known} by one layer and as"
                    f" {info} by {layer.name!r} ({name})"
                )
            facts[id(variable)] = info
    return facts


def _resolve(layer: Any, name: str) -> keras.Variable:
    """The variable a dotted attribute name declares (``kernel``, ``query_dense.kernel``).

    Keras exposes some weights through a property that returns a tensor (``Dense.kernel``
    with LoRA enabled adds the low-rank product): fall back to the ``_name`` attribute.
    """
    owner, _, attribute = name.rpartition(".")
    holder = layer
    for part in owner.split(".") if owner else []:
        holder = getattr(holder, part, None)
    for candidate in (attribute, f"_{attribute}"):
        value = getattr(holder, candidate, None) if holder is not None else None
        if isinstance(value, keras.Variable):
            return value
    raise ValueError(
        f"layer {layer.name!r} declares parameter {name!r}, which is not a variable of it"
    )


def _depth_positions(walk: list[Any], branches: Mapping[str, int]) -> tuple[dict[int, int], int]:
    """``{id(variable): 1-based block}`` and the number of residual blocks.

    Named blocks keep their indices; ``branch`` wrappers are numbered after them in walk
    order (outer before inner, so a variable in nested wrappers gets the innermost one).
    """
    for name, index in branches.items():
        if not isinstance(index, int) or index < 1:
            raise ValueError(f"branches[{name!r}] = {index!r}; expected a 1-based block index")
    depth_of: dict[int, int] = {}
    by_name = {layer.name: layer for layer in walk}
    for name, index in branches.items():
        if name in by_name:
            for variable in by_name[name].weights:
                depth_of[id(variable)] = index
    blocks = set(branches.values())
    next_index = max(blocks, default=0) + 1
    for layer in walk:
        branch = getattr(layer, "branch", None)
        if isinstance(branch, keras.layers.Layer):
            blocks.add(next_index)
            for variable in branch.weights:
                depth_of[id(variable)] = next_index
            next_index += 1
    return depth_of, len(blocks)
