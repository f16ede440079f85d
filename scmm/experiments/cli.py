"""Command line of ``run_experiment.py``: presets, settings files and dotted overrides.

Precedence, lowest first: dataclass defaults < ``--preset NAME`` < ``--config FILE`` (YAML or
JSON) < ``--a.b.c VALUE`` overrides. Everything is merged as nested dicts and decoded once by
draccus, which rejects unknown keys, wrong types and unknown choices. Changing a choice node's
``type`` (e.g. ``--model.sequence.type conv``) drops the fields set for the previous choice.
"""

import argparse
import copy
import dataclasses
import io
import json
import os
import re
from typing import Any, Optional, Sequence

import draccus
import yaml

from . import presets
from .settings import ExperimentSettings, SettingsError, from_dict, migrate, to_dict

# Used when no --preset is given.
DEFAULT_PRESET = "default"

# Only these may change when resuming: anything else would make the resumed run differ.
RESUME_OVERRIDABLE = ("training.steps", "output.")

HELP_HEADER = """\
usage: run_experiment.py [--preset NAME] [--config FILE] [--out DIR] [--resume DIR]
                         [--analyse] [--SECTION.FIELD VALUE ...]

Train one character language model and write settings.json, log.jsonl, summary.json and
checkpoints to --out.

Run options:
  --preset NAME     start from a named preset (default: "default"): {presets}
  --config FILE     YAML or JSON settings file (a partial tree), applied after the preset
  --out DIR         output folder (default: out/<time>-<preset>)
  --resume DIR      continue the run in DIR from its last checkpoint (its settings.json is
                    used; only training.steps and output.* may be overridden)
  --analyse         write scales.json and scales.png (per-layer forward, backward and
                    weight-gradient scales) at initialisation; --output.analyse validation
                    repeats it at every validation
  -h, --help        show this help

Settings (any field by dotted path, e.g. --model.hidden_size 256; choice nodes take
--PATH.type NAME, e.g. --model.sequence.type conv --model.sequence.groups 4):
"""


@dataclasses.dataclass
class Invocation:
    """What the command line asked for."""

    settings: ExperimentSettings
    out: Optional[str]
    resume: Optional[str]


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


def parse_value(raw: str) -> Any:
    """A command-line value as YAML (numbers, null, lists), but YAML 1.1's off/no/yes stay text."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        return raw
    return value


def overrides_to_tree(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """[("model.hidden_size", "256")] -> {"model": {"hidden_size": 256}}."""
    tree: dict[str, Any] = {}
    for path, raw in pairs:
        parts = path.split(".")
        if not all(parts):
            raise SettingsError(f"bad settings path {path!r}")
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"settings path {path!r} goes through a value")
            node = child
        node[parts[-1]] = parse_value(raw)
    return tree


class _SettingsYamlLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
    """YAML with only true/false as booleans (YAML 1.2): ``wandb: off`` stays the text "off"."""


_SettingsYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SettingsYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_settings_file(path: str) -> dict[str, Any]:
    """A partial settings tree from YAML or JSON (decided by content: JSON is valid YAML)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {path!r}: no such file")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    try:
        data = (
            json.loads(text)
            if path.endswith(".json")
            else yaml.load(text, Loader=_SettingsYamlLoader)  # a SafeLoader subclass
        )
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SettingsError(f"--config {path!r} is not valid JSON/YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"--config {path!r} must hold a mapping, got {type(data).__name__}")
    return data


def split_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Separate run options from ``--dotted.path value`` overrides (strictly)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--preset", "--config", "--out", "--resume"):
        parser.add_argument(flag)
    parser.add_argument("--analyse", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    options, rest = parser.parse_known_args(list(argv))
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(rest):
        token = rest[index]
        if not token.startswith("--") or len(token) == 2:
            raise SettingsError(f"unexpected argument {token!r} (expected --SECTION.FIELD VALUE)")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            index += 1
        else:
            if index + 1 >= len(rest):
                raise SettingsError(f"{token} needs a value")
            key, value = token[2:], rest[index + 1]
            index += 2
        pairs.append((key, value))
    return options, pairs


def settings_help() -> str:
    """Every settings field with its type, default and documentation (from draccus)."""
    parser = draccus.argparsing.ArgumentParser(ExperimentSettings)
    text = io.StringIO()
    parser.parser.print_help(text)
    lines = text.getvalue().splitlines()
    # Drop draccus' usage and "options:" blocks (per-section config-file flags we do not use).
    start = next((i for i, line in enumerate(lines) if line.startswith("ExperimentSettings")), 0)
    return "\n".join(lines[start:])


def parse(argv: Sequence[str]) -> Optional[Invocation]:
    """Resolve the command line to settings; None when --help was printed."""
    options, pairs = split_arguments(argv)
    if options.help:
        print(HELP_HEADER.format(presets=", ".join(presets.PRESETS)))
        print(settings_help())
        return None
    if options.resume:
        return _parse_resume(options, pairs)
    # Start from the full default tree so every choice node names its ``type``.
    tree: dict[str, Any] = to_dict(ExperimentSettings())
    preset_name = options.preset or DEFAULT_PRESET
    try:
        tree = merge(tree, presets.preset(preset_name))
    except KeyError as error:
        raise SettingsError(str(error.args[0])) from None
    tree["preset"] = preset_name
    if options.config:
        tree = merge(tree, load_settings_file(options.config))
    tree = merge(tree, overrides_to_tree(pairs))
    if options.analyse and tree.get("output", {}).get("analyse", "off") == "off":
        tree = merge(tree, {"output": {"analyse": "init"}})
    settings = from_dict(tree)
    return Invocation(settings=settings, out=options.out, resume=None)


def _parse_resume(options: argparse.Namespace, pairs: list[tuple[str, str]]) -> Invocation:
    if options.preset or options.config:
        raise SettingsError(
            "--resume takes its settings from the run folder; drop --preset/--config"
        )
    path = os.path.join(options.resume, "settings.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {options.resume!r}: no settings.json there")
    for key, _ in pairs:
        if not any(key == allowed or key.startswith(allowed) for allowed in RESUME_OVERRIDABLE):
            raise SettingsError(
                f"--{key} cannot change when resuming (allowed: training.steps, output.*)"
            )
    with open(path, encoding="utf-8") as file:
        stored = json.load(file)
    settings = from_dict(merge(migrate(stored), overrides_to_tree(pairs)))
    if options.out and os.path.abspath(options.out) != os.path.abspath(options.resume):
        raise SettingsError("--out must be the --resume folder (or omitted) when resuming")
    return Invocation(settings=settings, out=options.resume, resume=options.resume)


def settings_dict(settings: ExperimentSettings) -> dict[str, Any]:
    """Re-export for callers that only import the CLI module."""
    return to_dict(settings)
