"""The settings part of ``run_experiment.py --help``, written from the settings tree itself.

Every field of every section and of every choice is listed by dotted path with its type, its
default and its one-line documentation (the docstring under the field, the convention of all
settings modules, read with ``ast`` from the class source). The defaults are those of the run
the command line would start (``overrides.base_tree``: the dataclass defaults, then the preset,
``default`` unless ``--preset`` names another). A choice node lists its choices with the one the
preset picks as its default; the fields of another choice show that choice's own defaults,
because switching ``type`` resets the node (``overrides.merge``).

draccus still parses settings; its help printer is not used, because it drops the docstrings
of ``Literal`` fields, shows every choice's default as ``None`` and knows nothing of presets.
"""

import ast
import dataclasses
import functools
import inspect
import json
import math
import textwrap
import typing
from types import NoneType
from typing import Any, Literal, Union

import draccus
import yaml
from draccus.utils import is_choice_type

from .settings import ExperimentSettings

WIDTH = 96
# Top-level fields left out: ``preset`` is set by the run option --preset, listed above them.
HIDDEN_FIELDS = ("preset",)
_SIMPLE_TYPES = {bool: "true|false", int: "INT", float: "FLOAT", str: "TEXT"}


@functools.lru_cache(maxsize=None)
def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (one line), over ``cls`` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (e.g. a frozen build): no docs, not a crash
            continue
        definition = ast.parse(source).body[0]
        if not isinstance(definition, ast.ClassDef):
            continue
        body = definition.body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = _one_line(following.value.value)
    return docs


def class_doc(cls: type) -> str:
    """The first paragraph of a class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return _one_line(doc.split("\n\n", 1)[0])


def _one_line(text: str) -> str:
    # Docstrings mark code with reST double backquotes; on a terminal they are noise.
    return " ".join(inspect.cleandoc(text).replace("``", "").split())


def type_name(hint: Any) -> str:
    """How a field's type reads on the command line: INT, FLOAT|null, {pre,post,none}, ..."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "{" + ",".join(str(value) for value in typing.get_args(hint)) + "}"
    if origin is Union:
        members = [m for m in typing.get_args(hint) if m is not NoneType]
        names = "|".join(type_name(m) for m in members)
        return f"{names}|null" if len(members) < len(typing.get_args(hint)) else names
    if origin is list:
        (item,) = typing.get_args(hint)
        return f"[{type_name(item)}, ...]"
    return _SIMPLE_TYPES.get(hint, getattr(hint, "__name__", str(hint)))


def _reads_back(text: str) -> bool:
    """Whether YAML reads ``text`` back as itself (a leading ``*`` is an alias: quote it)."""
    try:
        return bool(yaml.safe_load(text) == text)
    except yaml.YAMLError:
        return False


def show_value(value: Any) -> str:
    """A default as one would type it (YAML: null, true, [a, b]); powers of two also as 2^k."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value and _reads_back(value) else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, (int, float)) and value > 0 and math.isfinite(value):
        mantissa, exponent = math.frexp(value)
        power = exponent - 1
        # Learning rates and step counts are powers of two in the presets: 0.001953125 reads
        # better as 2^-9 and 131072 as 2^17 (small sizes like 64 need no help).
        if mantissa == 0.5 and (power >= 10 or (isinstance(value, float) and power <= -4)):
            return f"{value!r} (2^{power})"
    return repr(value)


class _Writer:
    """Accumulates help lines: section headings, field entries, wrapped help."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def heading(self, text: str, indent: int = 0) -> None:
        """A section or choice heading (a blank line before top-level ones)."""
        if indent == 0:
            self.lines.append("")
        self._wrapped(text, indent, indent + 4)

    def paragraph(self, text: str) -> None:
        """Plain wrapped text after a blank line."""
        self.lines.append("")
        self._wrapped(text, 0, 0)

    def entry(self, flag: str, kind: str, default: str, doc: str, indent: int) -> None:
        """``--flag TYPE  default: VALUE`` and the field's help below it."""
        self.lines.append(f"{' ' * indent}{flag} {kind}  default: {default}")
        self._wrapped(doc, indent + 4, indent + 4)  # tests/test_cli.py: no field lacks one

    def _wrapped(self, text: str, first: int, rest: int) -> None:
        self.lines.extend(
            textwrap.wrap(
                text,
                WIDTH,
                initial_indent=" " * first,
                subsequent_indent=" " * rest,
                break_on_hyphens=False,
            )
        )


def settings_help(tree: dict[str, Any], preset: str) -> str:
    """Every settings field with its type, default (from ``tree``) and help."""
    writer = _Writer()
    writer.paragraph(
        f"Defaults are those a run with --preset {preset} starts from (run_experiment.py"
        " --preset NAME --help shows another preset's)."
    )
    _node(writer, ExperimentSettings, tree, (), 0, "top level (--FIELD VALUE, no section):")
    return "\n".join(writer.lines)


def _node(  # pylint: disable=too-many-arguments
    writer: _Writer,
    cls: type,
    values: dict[str, Any],
    path: tuple[str, ...],
    indent: int,
    title: str,
    skip: frozenset[str] = frozenset(),
) -> None:
    """A dataclass section: its own fields first, then its sub-sections and choice nodes
    (but not the sub-sections named in ``skip``)."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in HIDDEN_FIELDS]
    nested = [f.name for f in fields if dataclasses.is_dataclass(hints[f.name])]
    leaves = [f for f in fields if f.name not in nested]
    if title:
        writer.heading(title, indent)
    for field in leaves:
        flag = "--" + ".".join((*path, field.name))
        writer.entry(
            flag,
            type_name(hints[field.name]),
            show_value(values.get(field.name)),
            docs.get(field.name, ""),
            indent + 2,
        )
    _sections(writer, cls, values, path, [name for name in nested if name not in skip])


def _sections(
    writer: _Writer, cls: type, values: dict[str, Any], path: tuple[str, ...], names: list[str]
) -> None:
    """The sub-sections and choice nodes ``names`` of ``cls``, each with its heading."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for name in names:
        hint = hints[name]
        child_path = (*path, name)
        child_values = values.get(name, {})
        heading = f"{'.'.join(child_path)}: {docs.get(name) or class_doc(hint)}"
        if is_choice_type(hint):
            _choice(writer, hint, child_values, child_path, heading)
        else:
            _node(writer, hint, child_values, child_path, 0, heading)


def _choice(
    writer: _Writer, base: Any, values: dict[str, Any], path: tuple[str, ...], heading: str
) -> None:
    """A choice node: its ``type`` flag, then each choice with its own fields and defaults.

    A sub-section every choice has (declared on the base, e.g. the optimiser's schedule) is
    listed once, after the choices, with the chosen one's values."""
    choices: dict[str, type] = base.get_known_choices()
    chosen = values.get("type") or base.default_choice_name() or next(iter(choices))
    dotted = ".".join(path)
    writer.heading(heading)
    writer.entry(
        f"--{dotted}.type",
        "{" + ",".join(choices) + "}",
        chosen,
        f"Switching it resets the other {dotted} fields to the new choice's defaults (listed"
        " under each choice below).",
        2,
    )
    hints = typing.get_type_hints(base)
    shared = [
        f.name
        for f in dataclasses.fields(base)
        if f.init and dataclasses.is_dataclass(hints[f.name])
    ]
    for name, choice in choices.items():
        own = values if name == chosen else _choice_defaults(choice)
        empty = not any(f.init for f in dataclasses.fields(choice))
        title = f"[{name}] {class_doc(choice)}" + (" No fields." if empty else "")
        _node(writer, choice, own, path, 2, title, skip=frozenset(shared))
    _sections(writer, base, values, path, shared)


def _choice_defaults(cls: type) -> dict[str, Any]:
    """A choice's own defaults (what ``--PATH.type NAME`` resets the node to), as a plain tree
    (a choice node inside it, e.g. an optimiser's schedule, is a mapping with its ``type``)."""
    encoded = draccus.encode(cls())
    assert isinstance(encoded, dict)
    return encoded
