"""Command line of ``run_experiment.py``: presets, settings files and dotted overrides.

Precedence, lowest first: dataclass defaults < ``--preset NAME`` < ``--config FILE`` (YAML or
JSON) < ``--a.b.c VALUE`` overrides. Everything is merged as nested dicts and decoded once,
strictly (``decoding``): unknown keys, wrong types and unknown choices are rejected. Changing a
choice node's ``type`` (e.g. ``--model.sequence.type conv``) drops the fields set for the
previous choice. The override dialect and the base tree are ``overrides``' (shared with sweeps).
"""

import argparse
import dataclasses
import json
import os
import textwrap
from typing import Any, Optional, Sequence

from . import presets
from .help_text import settings_help
from .overrides import (
    TOP_LEVEL_FIELDS,
    base_tree,
    merge,
    overrides_to_tree,
    parse_value,
    split_overrides,
)
from .presets import DEFAULT_PRESET
from .settings import ExperimentSettings, SettingsError, from_dict, migrate, to_dict

# run_experiment.py's own options: those taking a value, and switches.
VALUE_OPTIONS = ("--preset", "--config", "--out", "--resume", "--from")
SWITCHES = ("--analyse", "--help")

# Only these may change when resuming: anything else would make the resumed run differ.
RESUME_OVERRIDABLE = ("training.steps", "output.")

HELP_HEADER = """\
usage: run_experiment.py [--preset NAME] [--config FILE] [--out DIR] [--resume DIR]
                         [--analyse] [--SECTION.FIELD VALUE ...]

Train one character language model and write settings.json, log.jsonl, summary.json and
checkpoints to --out.

Run options:
  --preset NAME     start from a named preset (default: "default"):
{presets}
  --config FILE     YAML or JSON settings file (a partial tree), applied after the preset
  --out DIR         output folder (default: out/<time>-<preset>)
  --resume DIR      continue the run in DIR from its last checkpoint (its settings.json is
                    used; only training.steps and output.* may be overridden)
  --from last|best  with --resume: the checkpoint to continue from (default: last; best when
                    last.npz is damaged)
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
    resume_from: str = "last"


def split_arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    """Separate run options from ``--dotted.path value`` overrides (strictly)."""
    own, pairs = split_overrides(argv)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in VALUE_OPTIONS:
        parser.add_argument(flag)
    parser.add_argument("--analyse", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    options, rest = parser.parse_known_args(own)
    if rest:
        token = rest[0]
        if token.startswith("-") and token != "--":
            raise SettingsError(
                f"unknown option {token!r}: neither a run option"
                f" ({', '.join((*VALUE_OPTIONS, *SWITCHES))}) nor a settings field"
                f" (--SECTION.FIELD VALUE, or --FIELD VALUE for {', '.join(TOP_LEVEL_FIELDS)})"
            )
        raise SettingsError(f"unexpected argument {token!r} (expected --SECTION.FIELD VALUE)")
    return options, pairs


def help_text(preset: str, settings_file: Optional[str] = None) -> str:
    """The whole --help text; settings defaults are those of ``preset`` (and ``settings_file``)."""
    names = textwrap.fill(
        ", ".join(presets.PRESETS), 96, initial_indent=" " * 20, subsequent_indent=" " * 20
    )
    return HELP_HEADER.format(presets=names) + settings_help(
        base_tree(preset, settings_file), preset
    )


def parse(argv: Sequence[str]) -> Optional[Invocation]:
    """Resolve the command line to settings; None when --help was printed."""
    options, pairs = split_arguments(argv)
    if options.help:
        print(help_text(options.preset or DEFAULT_PRESET, options.config))
        return None
    if options.resume:
        return _parse_resume(options, pairs)
    if getattr(options, "from"):
        raise SettingsError("--from picks the checkpoint of --resume DIR; it needs --resume")
    tree = base_tree(options.preset or DEFAULT_PRESET, options.config)
    tree = merge(tree, _cli_tree(pairs))
    if options.analyse and tree.get("output", {}).get("analyse", "off") == "off":
        tree = merge(tree, {"output": {"analyse": "init"}})
    settings = from_dict(tree)
    return Invocation(settings=settings, out=options.out, resume=None)


def _parse_resume(options: argparse.Namespace, pairs: list[tuple[str, str]]) -> Invocation:
    if options.preset or options.config:
        raise SettingsError(
            "--resume takes its settings from the run folder; drop --preset/--config"
        )
    source = getattr(options, "from") or "last"
    if source not in ("last", "best"):
        raise SettingsError(f"--from must be last or best, got {source!r}")
    path = os.path.join(options.resume, "settings.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume {options.resume!r}: no settings.json there")
    for key, _ in pairs:
        if not _resume_may_change(key):
            raise SettingsError(
                f"--{key} cannot change when resuming (allowed: training.steps, output.*)"
            )
    stored = migrate(_read_settings_file(path))
    _check_unedited(options.resume, stored)
    settings = from_dict(merge(stored, _cli_tree(pairs)))
    if options.out and os.path.abspath(options.out) != os.path.abspath(options.resume):
        raise SettingsError("--out must be the --resume folder (or omitted) when resuming")
    return Invocation(
        settings=settings, out=options.resume, resume=options.resume, resume_from=source
    )


def _resume_may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed) for allowed in RESUME_OVERRIDABLE)


def _read_settings_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            tree = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SettingsError(f"{path} is not valid JSON ({error}); it cannot be resumed") from None
    if not isinstance(tree, dict):
        raise SettingsError(f"{path} must hold a settings object, got {type(tree).__name__}")
    return tree


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else prefix + key))
    return flat


def _check_unedited(folder: str, stored: dict[str, Any]) -> None:
    """Refuse a run folder whose settings.json differs from the copy beside its checkpoint in
    anything a resume may not change (someone edited it after the run stopped)."""
    beside = os.path.join(folder, "checkpoints", "settings.json")
    if not os.path.isfile(beside):
        return  # killed before its first checkpoint: the run restarts from step 0
    reference = _flatten(migrate(_read_settings_file(beside)))
    current = _flatten(stored)
    changed = sorted(
        key
        for key in set(reference) | set(current)
        if reference.get(key, "<absent>") != current.get(key, "<absent>")
        and not _resume_may_change(key)
    )
    if changed:
        key = changed[0]
        raise SettingsError(
            f"{os.path.join(folder, 'settings.json')} was changed after the run's last"
            f" checkpoint: {key} is {current.get(key, '<absent>')!r} there but"
            f" {reference.get(key, '<absent>')!r} in {beside}"
            + (f" (and {len(changed) - 1} more field(s))" if len(changed) > 1 else "")
            + "; only training.steps and output.* may change when resuming (restore the file, or"
            " start a new run with --out)"
        )


def _cli_tree(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return overrides_to_tree((path, parse_value(raw)) for path, raw in pairs)


def settings_dict(settings: ExperimentSettings) -> dict[str, Any]:
    """Re-export for callers that only import the CLI module."""
    return to_dict(settings)
