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

Inside an axis value, keys starting ``lr_search.`` set that configuration's search (the paper
starts regular models at 2^-14 and unit-scaled ones at 2^-8). Every configuration's settings
are resolved and type-checked against the experiment settings tree before anything runs.
"""

import dataclasses
import itertools
import os
from typing import Any, Optional

import yaml

from ..experiments import cli
from ..experiments import presets as experiment_presets
from ..experiments.settings import ExperimentSettings, SettingsError, from_dict, to_dict


@dataclasses.dataclass
class LrSearch:
    """The paper's learning-rate search (unit-scaling-demo ``LrSweep(step=2, threshold=0.1)``).

    Start at ``start``, multiply by ``factor`` after each point; every point runs the sweep's
    ``repeats`` and scores the median validation BPC; stop going up once a point is worse than
    the best by more than ``threshold`` (or diverges). If the best point is the first one, the
    search also walks down from ``start`` by the same rule, so the optimum is never at an edge
    unless ``max_points`` ran out.
    """

    start: float = 2**-10
    factor: float = 2.0
    threshold: float = 0.1
    max_points: int = 12

    def validate(self, where: str) -> None:
        """Raise SettingsError naming the bad field."""
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
    base: str = cli.DEFAULT_PRESET
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    axes: dict[str, Any] = dataclasses.field(default_factory=dict)
    filters: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    repeats: int = 1
    lr_search: Optional[LrSearch] = None
    table_rows: list[str] = dataclasses.field(default_factory=list)
    """Axes that index table.md's rows (default: the first axis); the others are columns."""
    description: str = ""


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


_DEFINITION_KEYS = {f.name for f in dataclasses.fields(SweepDefinition)}
_SEARCH_KEYS = {f.name for f in dataclasses.fields(LrSearch)}


def definition_from_dict(data: Any, source: str) -> SweepDefinition:
    """Strictly decode a sweep definition; unknown keys and wrong shapes name ``source``."""
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: a sweep definition must be a mapping, got {data!r}")
    unknown = sorted(set(data) - _DEFINITION_KEYS)
    if unknown:
        raise SettingsError(
            f"{source}: unknown sweep keys {unknown}; expected some of {sorted(_DEFINITION_KEYS)}"
        )
    fields = dict(data)
    fields.setdefault("name", os.path.splitext(os.path.basename(source))[0])
    search = fields.get("lr_search")
    if search is not None:
        fields["lr_search"] = _search_from_dict(search, source)
    for key, kind in (("overrides", dict), ("axes", dict), ("filters", list), ("table_rows", list)):
        if key in fields and not isinstance(fields[key], kind):
            raise SettingsError(f"{source}: {key} must be a {kind.__name__}, got {fields[key]!r}")
    repeats = fields.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SettingsError(f"{source}: repeats must be an integer >= 1, got {repeats!r}")
    return SweepDefinition(**fields)


def _search_from_dict(data: Any, source: str) -> LrSearch:
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: lr_search must be a mapping, got {data!r}")
    unknown = sorted(set(data) - _SEARCH_KEYS)
    if unknown:
        raise SettingsError(f"{source}: unknown lr_search keys {unknown}")
    values = {}
    for key, value in data.items():
        if key == "max_points":
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"{source}: lr_search.max_points must be an int, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{source}: lr_search.{key} must be a number, got {value!r}")
        values[key] = value
    search = LrSearch(**values)
    search.validate(source)
    return search


def load_definition(name_or_file: str) -> SweepDefinition:
    """A sweep preset by name, or a YAML/JSON sweep file."""
    from . import presets  # pylint: disable=import-outside-toplevel

    if name_or_file in presets.SWEEPS:
        return definition_from_dict(presets.sweep(name_or_file), name_or_file)
    if not os.path.isfile(name_or_file):
        raise SettingsError(
            f"{name_or_file!r} is neither a sweep preset ({', '.join(sorted(presets.SWEEPS))})"
            " nor a file"
        )
    with open(name_or_file, encoding="utf-8") as file:
        try:
            data = yaml.safe_load(file)
        except yaml.YAMLError as error:
            raise SettingsError(f"{name_or_file}: not valid YAML/JSON: {error}") from None
    return definition_from_dict(data, name_or_file)


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
    for condition in definition.filters:
        if not isinstance(condition, dict) or not condition:
            raise SettingsError(f"a filter must be a non-empty mapping, got {condition!r}")
        unknown = sorted(set(condition) - axis_names)
        if unknown:
            raise SettingsError(f"filter {condition} names unknown axes {unknown}")
    configurations = []
    for combination in itertools.product(*(values for _, values in axes)):
        labels = {name: label for (name, _), (label, _) in zip(axes, combination)}
        if any(_matches(labels, condition) for condition in definition.filters):
            continue
        overrides = dict(definition.overrides)
        for _, values in combination:
            overrides.update(values)
        overrides.update(extra or {})
        configurations.append(_resolve(definition, labels, overrides))
    if not configurations:
        raise SettingsError(f"sweep {definition.name!r}: the filters drop every configuration")
    return configurations


def _resolve(
    definition: SweepDefinition, labels: dict[str, str], overrides: dict[str, Any]
) -> Configuration:
    where = ",".join(f"{k}={v}" for k, v in labels.items()) or "base"
    overrides = dict(overrides)
    base = str(overrides.pop("preset", definition.base))
    search_overrides = {
        key[len("lr_search.") :]: value
        for key, value in list(overrides.items())
        if key.startswith("lr_search.")
    }
    for key in search_overrides:
        overrides.pop(f"lr_search.{key}")
    search: Optional[LrSearch] = None
    if definition.lr_search is not None or search_overrides:
        base_search = dataclasses.asdict(definition.lr_search or LrSearch())
        search = _search_from_dict({**base_search, **search_overrides}, f"configuration {where}")
    tree = _base_tree(base, where)
    try:
        for path, value in overrides.items():
            tree = cli.merge(tree, _path_tree(path, value, where))
        tree["preset"] = base if base in experiment_presets.PRESETS else ""
        settings = from_dict(tree)
    except SettingsError as error:
        raise SettingsError(f"configuration {where}: {error}") from None
    if search is not None and settings.training.optimiser.learning_rate <= 0:
        raise SettingsError(f"configuration {where}: learning rate must be > 0")
    return Configuration(labels=labels, settings=to_dict(settings), lr_search=search)


def _base_tree(base: str, where: str) -> dict[str, Any]:
    tree = to_dict(ExperimentSettings())
    if base in experiment_presets.PRESETS:
        return cli.merge(tree, experiment_presets.preset(base))
    if os.path.isfile(base):
        return cli.merge(tree, cli.load_settings_file(base))
    raise SettingsError(
        f"configuration {where}: base {base!r} is neither an experiment preset"
        f" ({', '.join(sorted(experiment_presets.PRESETS))}) nor a settings file"
    )


def _path_tree(path: str, value: Any, where: str) -> dict[str, Any]:
    parts = path.split(".")
    if not all(parts):
        raise SettingsError(f"configuration {where}: bad settings path {path!r}")
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree
