"""Sweep definitions: a base, axes of dotted-path overrides, filters, repeats and an LR search.

A sweep file (YAML or JSON) or preset looks like::

    name: example
    base: default                 # an experiment preset name, or a settings file
    overrides: {training.steps: 500}
    axes:                         # cartesian product, in this order
      model:                      # axis name -> {label: {dotted.path: value, ...}}
        attention: {model.sequence.type: attention}
        conv: {preset: paper-conv}        # "preset" swaps the base preset
      training.optimiser.learning_rate: [0.001, 0.01]   # shorthand: one path, label = value
    filters:                      # drop every combination matching all entries of one filter
      - {model: conv, training.optimiser.learning_rate: "0.01"}
    repeats: 3                    # runs per configuration (per LR when searching), seeds seed+k
    lr_search: {start: 0.0001, factor: 2, threshold: 0.1, max_points: 12}
    # or a fixed grid, every point run: {mode: grid, start: 0.0001, factor: 2, max_points: 6}
    transfer_axis: width          # optional: also write transfer.md/.png along this axis

Inside an axis value, keys starting ``lr_search.`` set that configuration's search (the paper
starts regular models at 2^-14 and unit-scaled ones at 2^-8). Every configuration's settings
are resolved, type-checked against the experiment settings tree and validated as
``run_experiment.py`` validates them (cross-field checks included) before anything runs;
every invalid configuration is named, with its error.

The definition itself is decoded as strictly as a settings file (``experiments.decoding``), and
a configuration's settings are built exactly as ``run_experiment.py`` builds them
(``experiments.overrides``): the base's tree, then one layer per source of dotted overrides --
the sweep's ``overrides``, each axis value in axis order, the command line's -- merged in that
order. Within a layer the order of the paths does not matter; across layers, a later layer
that changes a choice's ``type`` drops the earlier layers' fields of that choice.
"""

import dataclasses
import itertools
import math
import os
from typing import Any, Literal, Optional, Sequence

from ..experiments.decoding import SettingsError, decode
from ..experiments.overrides import (
    merge,
    overrides_to_tree,
    preset_or_file_tree,
    read_yaml_or_json,
)
from ..experiments.presets import DEFAULT_PRESET
from ..experiments.settings import from_dict, to_dict


@dataclasses.dataclass
class LrSearch:
    """The paper's learning-rate search (unit-scaling-demo ``LrSweep(step=2, threshold=0.1)``),
    or a fixed grid.

    ``mode: search``: start at ``start``, multiply by ``factor`` after each point; every point
    runs the sweep's ``repeats`` and scores the median validation BPC; stop going up once a
    point is worse than the best by more than ``threshold`` (or diverges). If the best point is
    the first one, the search also walks down from ``start`` by the same rule, so the optimum is
    never at an edge unless ``max_points`` ran out.

    ``mode: grid``: exactly ``max_points`` points, ``start * factor**k`` for k = 0 ..
    max_points - 1, every one run whatever the others scored (``threshold`` is unused): the
    fixed learning-rate axis of a transfer plot, where every curve must cover the same rates.
    """

    start: float = 2**-10
    factor: float = 2.0
    threshold: float = 0.1
    max_points: int = 12
    """search: the most points tried; grid: the grid's size."""
    mode: Literal["search", "grid"] = "search"

    def validate(self, where: str) -> None:
        """Raise SettingsError naming the bad field."""
        for name in ("start", "factor", "threshold"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise SettingsError(f"{where}: lr_search.{name} must be finite, got {value}")
        if not self.start > 0:
            raise SettingsError(f"{where}: lr_search.start must be > 0, got {self.start}")
        if not self.factor > 1:
            raise SettingsError(f"{where}: lr_search.factor must be > 1, got {self.factor}")
        if not self.threshold >= 0:
            raise SettingsError(f"{where}: lr_search.threshold must be >= 0, got {self.threshold}")
        if self.max_points < 1:
            raise SettingsError(
                f"{where}: lr_search.max_points must be >= 1, got {self.max_points}"
            )


@dataclasses.dataclass
class SweepDefinition:
    """A sweep as written in a file or preset (see the module docstring)."""

    name: str
    base: str = DEFAULT_PRESET
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    axes: dict[str, Any] = dataclasses.field(default_factory=dict)
    filters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    repeats: int = 1
    lr_search: Optional[LrSearch] = None
    table_rows: list[str] = dataclasses.field(default_factory=list)
    """Axes that index table.md's rows (default: the first axis); the others are columns."""
    transfer_axis: str = ""
    """An axis (e.g. width) along which learning-rate transfer is reported: transfer.md and
    transfer.png, a panel per combination of the other axes (``scmm.sweeps.transfer``). "":
    none."""
    description: str = ""

    def validate(self, source: str) -> None:
        """Raise SettingsError naming ``source`` and the bad field (beyond its type)."""
        if self.repeats < 1:
            raise SettingsError(f"{source}: repeats must be an integer >= 1, got {self.repeats}")
        if self.lr_search is not None:
            self.lr_search.validate(source)


@dataclasses.dataclass
class Configuration:
    """One point of the grid: its axis labels, full settings tree and LR search (if any)."""

    labels: dict[str, str]
    """Axis name -> value label, in axis order."""
    settings: dict[str, Any]
    """Fully resolved experiment settings tree (seed and LR set per trial)."""
    lr_search: Optional[LrSearch]

    @property
    def key(self) -> str:
        """Stable, path-safe identifier, e.g. ``model=attention,dtype=float16``."""
        parts = [f"{name}={label}" for name, label in self.labels.items()]
        text = ",".join(parts) or "base"
        return "".join(c if c.isalnum() or c in "=,.-_+" else "_" for c in text)


def definition_from_dict(data: Any, source: str) -> SweepDefinition:
    """Strictly decode a sweep definition; errors name ``source`` and the bad key."""
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: a sweep definition must be a mapping, got {data!r}")
    # A file's name is the sweep's name unless it says otherwise.
    fields = {"name": os.path.splitext(os.path.basename(source))[0], **data}
    definition = decode(SweepDefinition, fields, source)
    definition.validate(source)
    return definition


def search_from_dict(data: dict[str, Any], where: str) -> LrSearch:
    """A strictly decoded and validated LR search (``where`` names it in errors)."""
    search = decode(LrSearch, data, f"{where}: lr_search")
    search.validate(where)
    return search


def load_definition(name_or_file: str) -> SweepDefinition:
    """A sweep preset by name, or a YAML/JSON sweep file (read like a settings file)."""
    from . import presets  # pylint: disable=import-outside-toplevel

    if name_or_file in presets.SWEEPS:
        return definition_from_dict(presets.sweep(name_or_file), name_or_file)
    if not os.path.isfile(name_or_file):
        raise SettingsError(
            f"{name_or_file!r} is neither a sweep preset ({', '.join(sorted(presets.SWEEPS))})"
            " nor a file"
        )
    return definition_from_dict(read_yaml_or_json(name_or_file, "sweep file"), name_or_file)


def axis_labels(definition: SweepDefinition) -> dict[str, list[str]]:
    """Each axis's value labels, in the order the definition lists them."""
    return {
        name: [label for label, _ in _axis_values(name, spec)]
        for name, spec in definition.axes.items()
    }


def _axis_values(name: str, spec: Any) -> list[tuple[str, dict[str, Any]]]:
    """[(label, {path: value})] of one axis, from either the mapping or the list shorthand."""
    if isinstance(spec, list):
        if not spec:
            raise SettingsError(f"axis {name!r} has no values")
        return [(_label(value), {name: value}) for value in spec]
    if isinstance(spec, dict):
        if not spec:
            raise SettingsError(f"axis {name!r} has no values")
        values = []
        for label, overrides in spec.items():
            if not isinstance(overrides, dict):
                raise SettingsError(
                    f"axis {name!r} value {label!r} must map dotted paths to values,"
                    f" got {overrides!r}"
                )
            values.append((str(label), overrides))
        return values
    raise SettingsError(f"axis {name!r} must be a list of values or a mapping, got {spec!r}")


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _matches(labels: dict[str, str], condition: dict[str, Any]) -> bool:
    return all(labels.get(axis) == _label(value) for axis, value in condition.items())


def expand(
    definition: SweepDefinition, extra: Optional[dict[str, Any]] = None
) -> list[Configuration]:
    """Every configuration of ``definition`` (cartesian product minus filters), validated.

    ``extra`` are dotted-path overrides applied on top of every configuration (e.g. the
    command line's ``--data.path``). Raises SettingsError naming the configuration and the
    offending entry.
    """
    axes = [(name, _axis_values(name, spec)) for name, spec in definition.axes.items()]
    axis_names = {name for name, _ in axes}
    unknown_rows = sorted(set(definition.table_rows) - axis_names)
    if unknown_rows:
        raise SettingsError(f"table_rows names unknown axes {unknown_rows}")
    if definition.transfer_axis and definition.transfer_axis not in axis_names:
        raise SettingsError(
            f"transfer_axis names unknown axis {definition.transfer_axis!r}"
            f" (axes: {', '.join(name for name, _ in axes) or 'none'})"
        )
    for condition in definition.filters:
        if not isinstance(condition, dict) or not condition:
            raise SettingsError(f"a filter must be a non-empty mapping, got {condition!r}")
        unknown = sorted(set(condition) - axis_names)
        if unknown:
            raise SettingsError(f"filter {condition} names unknown axes {unknown}")
    configurations = []
    errors: list[str] = []
    for combination in itertools.product(*(values for _, values in axes)):
        labels = {name: label for (name, _), (label, _) in zip(axes, combination)}
        if any(_matches(labels, condition) for condition in definition.filters):
            continue
        layers = [definition.overrides, *(values for _, values in combination), extra or {}]
        try:
            configurations.append(_resolve(definition, labels, layers))
        except SettingsError as error:
            errors.append(str(error))  # go on: every bad configuration is named at once
    if errors:
        raise SettingsError("\n".join(errors))
    if not configurations:
        raise SettingsError(f"sweep {definition.name!r}: the filters drop every configuration")
    return configurations


def _resolve(
    definition: SweepDefinition, labels: dict[str, str], layers: Sequence[dict[str, Any]]
) -> Configuration:
    where = ",".join(f"{k}={v}" for k, v in labels.items()) or "base"
    # "preset" swaps the base and lr_search.* set the search: neither is a settings path.
    base = definition.base
    search_overrides: dict[str, Any] = {}
    settings_layers = []
    for layer in layers:
        layer = dict(layer)
        base = str(layer.pop("preset", base))
        for key in [key for key in layer if key.startswith("lr_search.")]:
            search_overrides[key[len("lr_search.") :]] = layer.pop(key)
        settings_layers.append(layer)
    search: Optional[LrSearch] = None
    if definition.lr_search is not None or search_overrides:
        base_search = dataclasses.asdict(definition.lr_search or LrSearch())
        search = search_from_dict({**base_search, **search_overrides}, f"configuration {where}")
    try:
        tree = preset_or_file_tree(base)
        for layer in settings_layers:
            tree = merge(tree, overrides_to_tree(layer.items()))
        settings = from_dict(tree)
        # The cross-field checks run_experiment.py makes before computing (heads x head_size
        # = hidden size, groups dividing it, ...): a dry run must catch what a trial would die
        # of. The data folder is the machine's, not the configuration's: the command line
        # checks it once per data setting (a dry run of the paper's sweep works without it).
        without_files = dataclasses.replace(settings.data, path=None)
        dataclasses.replace(settings, data=without_files).validate()
    except (SettingsError, ValueError, FileNotFoundError) as error:
        raise SettingsError(f"configuration {where}: {error}") from None
    if search is not None and settings.training.optimiser.learning_rate <= 0:
        raise SettingsError(f"configuration {where}: learning rate must be > 0")
    return Configuration(labels=labels, settings=to_dict(settings), lr_search=search)
