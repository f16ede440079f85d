"""The settings dialect shared by ``run_experiment.py``, ``run_sweep.py`` and sweep files.

A partial settings tree can be written three ways, all meaning the same thing:

- on a command line: ``--model.sequence.type conv`` or ``--model.sequence.type=conv``;
- as dotted keys in a sweep definition: ``{"model.sequence.type": "conv"}``;
- nested, in a YAML/JSON settings file: ``model: {sequence: {type: conv}}``.

``split_overrides`` takes the ``--PATH VALUE`` pairs out of a command line, ``parse_value``
reads a command-line value, ``overrides_to_tree`` turns dotted pairs into a nested tree, and
``merge`` layers trees (changing a choice node's ``type`` drops the fields set for the previous
choice). Every run starts from ``base_tree``: the dataclass defaults, then a preset, then a
settings file. Values are YAML 1.2 everywhere: only true/false are booleans, so
``wandb: off`` is the text "off", as the settings tree expects.
"""

import copy
import dataclasses
import json
import os
import re
from typing import Any, Iterable, Optional, Sequence

import yaml

from . import presets
from .decoding import SettingsError
from .settings import MOVED, ExperimentSettings, to_dict

# Top-level settings fields that a command line may set without a dot (--seed 3). "preset" is
# not one: it records the --preset / sweep base the run started from.
TOP_LEVEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(ExperimentSettings) if f.name != "preset"
)


def parse_value(raw: str) -> Any:
    """A command-line value as YAML (numbers, null, lists), but YAML 1.1's off/no/yes stay text."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw
    return value


def is_override(token: str) -> bool:
    """Whether a command-line token starts a settings override (``--PATH`` or ``--PATH=V``)."""
    if not token.startswith("--"):
        return False
    path = token[2:].split("=", 1)[0]
    # Moved settings are overrides too, so that they reach the error naming their new spelling.
    return "." in path or path in TOP_LEVEL_FIELDS or path in MOVED


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate ``--PATH VALUE`` / ``--PATH=VALUE`` settings overrides from everything else.

    PATH is dotted (``model.hidden_size``) or a top-level field (``seed``); the rest (the
    command's own options and positionals, in order) is left for its own parser. A value is
    the next token whatever it looks like, so ``--training.loss_scale -1`` works.
    """
    own: list[str] = []
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(argv):
        token = argv[position]
        position += 1
        if not is_override(token):
            own.append(token)
            continue
        path, equals, value = token[2:].partition("=")
        if not equals:
            if position >= len(argv):
                raise SettingsError(f"{token} needs a value")
            value = argv[position]
            position += 1
        pairs.append((path, value))
    return own, pairs


def overrides_to_tree(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """[("model.hidden_size", 256)] -> {"model": {"hidden_size": 256}}; later pairs win.

    All pairs form one layer, so their order does not matter except for repeated paths: a
    choice ``type`` and the fields of that choice may come in any order.
    """
    tree: dict[str, Any] = {}
    for path, value in pairs:
        parts = path.split(".")
        if not all(parts):
            raise SettingsError(f"bad settings path {path!r}")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"settings path {path!r} goes through a value")
            node = child
        # A copy: a later, deeper path must not write into the caller's (e.g. a preset's) dict.
        node[parts[-1]] = copy.deepcopy(value)
    return tree


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (choice ``type`` change resets the node)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if "type" in value and old.get("type", value["type"]) != value["type"]:
                merged[key] = copy.deepcopy(value)
            else:
                merged[key] = merge(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _SettingsYamlLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """YAML with only true/false as booleans (YAML 1.2): ``wandb: off`` stays the text "off"."""


_SettingsYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SettingsYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml_or_json(path: str, what: str) -> Any:
    """The data in a ``.json`` file (strict JSON) or any other file (YAML 1.2 booleans).

    ``what`` names the file in errors (e.g. ``--config``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r}: no such file")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return yaml.load(text, Loader=_SettingsYamlLoader)  # a SafeLoader subclass
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SettingsError(f"{what} {path!r} is not valid JSON/YAML: {error}") from None


def load_settings_file(path: str, what: str = "--config") -> dict[str, Any]:
    """A partial settings tree from a YAML or JSON file (an empty file is an empty tree)."""
    data = read_yaml_or_json(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{what} {path!r} must hold a mapping, got {type(data).__name__}")
    return data


def base_tree(
    preset: Optional[str], settings_file: Optional[str] = None, what: str = "--config"
) -> dict[str, Any]:
    """The full default tree, then ``preset`` (if any), then ``settings_file`` (if any).

    Starting from the full default tree means every choice node names its ``type``, so a
    later ``type`` change is seen by ``merge``. ``preset`` is recorded in the tree's
    ``preset`` field ("" for none) unless the settings file sets that field itself.
    """
    tree: dict[str, Any] = to_dict(ExperimentSettings())
    if preset is not None:
        try:
            tree = merge(tree, presets.preset(preset))
        except KeyError as error:
            raise SettingsError(str(error.args[0])) from None
    tree["preset"] = preset or ""
    if settings_file is not None:
        tree = merge(tree, load_settings_file(settings_file, what))
    return tree


def preset_or_file_tree(base: str) -> dict[str, Any]:
    """``base_tree`` of an experiment preset name, else of a settings file by that path."""
    if base in presets.PRESETS:
        return base_tree(base)
    if os.path.isfile(base):
        return base_tree(None, base, what="base")
    raise SettingsError(
        f"base {base!r} is neither an experiment preset"
        f" ({', '.join(sorted(presets.PRESETS))}) nor a settings file"
    )
