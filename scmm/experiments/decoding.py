"""Strict decoding of plain trees (from YAML, JSON, presets, overrides) into settings dataclasses.

draccus does the decoding (types, choice nodes, Literal values, missing fields). Before it runs,
``decode`` rejects what draccus would silently accept or report without saying what was
expected:

- a key no field has: named with the fields that exist (``--model.hidden_sise`` lists
  ``hidden_size``);
- a boolean where a number is expected (draccus reads ``steps: true`` as 1 step);
- ``null`` where the field is not Optional (draccus keeps None, which fails much later);
- anything but a mapping where a dataclass is expected;
- a non-finite number (``inf``, ``nan``, ``.inf``, ``1e400``) anywhere in the decoded tree: no
  setting means anything by infinity (a learning rate or loss scale of inf passed the range
  checks and trained on NaN), so none takes one; a setting that can be switched off takes
  ``null`` instead.

Every error is a one-line ``SettingsError`` naming the dotted path of the bad value and, when
given, the file or preset it came from. The experiment settings tree and sweep definitions are both
decoded here, so a sweep file is held to the same rules as a settings file.
"""

import dataclasses
import math
import typing
from types import NoneType
from typing import Any, Literal, TypeVar, Union

import draccus
from draccus.utils import is_choice_type

T = TypeVar("T")

# Key draccus reads a choice node's subclass from (e.g. model.sequence.type: conv).
_CHOICE_KEY = "type"


class SettingsError(ValueError):
    """A settings file, preset or command-line override does not fit the settings tree."""


def decode(cls: type[T], data: Any, source: str = "") -> T:
    """``data`` as a ``cls`` instance, strictly; errors are prefixed by ``source`` if given."""
    prefix = f"{source}: " if source else ""
    try:
        check_strictly(cls, data)
        decoded = draccus.decode(cls, data)
        # After decoding: draccus turns the text "inf" into a float, so only then is it a number.
        check_finite(decoded)
        return decoded
    except SettingsError as error:
        raise SettingsError(f"{prefix}{error}") from None
    except (draccus.utils.DecodingError, draccus.utils.ParsingError) as error:
        # draccus spreads union errors over several indented lines; bad input gets one line.
        lines = (line.strip() for line in str(error).splitlines())
        raise SettingsError(prefix + " ".join(line for line in lines if line)) from None


def check_strictly(cls: Any, value: Any, path: tuple[str, ...] = ()) -> None:
    """Raise SettingsError for the first value draccus would let through (module docstring)."""
    if value is None:
        if not _accepts_none(cls):
            raise SettingsError(f"{_where(path)}must not be null (expected {_describe(cls)})")
        return
    if typing.get_origin(cls) is Union:
        members = [m for m in typing.get_args(cls) if m is not NoneType]
        if len(members) == 1:  # Optional[X]: X's rules; a real union is left to draccus
            check_strictly(members[0], value, path)
        return
    if cls in (int, float) and isinstance(value, bool):
        raise SettingsError(
            f"{_where(path)}expected {_describe(cls)}, got the boolean {str(value).lower()}"
        )
    if dataclasses.is_dataclass(cls):
        _check_dataclass(cls, value, path)
    elif typing.get_origin(cls) in (list, tuple, set) and isinstance(value, (list, tuple)):
        args = typing.get_args(cls)
        if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
            for index, item in enumerate(value):
                check_strictly(args[0], item, (*path, str(index)))
    elif typing.get_origin(cls) is dict and isinstance(value, dict):
        args = typing.get_args(cls)
        if len(args) == 2:
            for key, item in value.items():
                check_strictly(args[1], item, (*path, str(key)))


def check_finite(value: Any, path: tuple[str, ...] = ()) -> None:
    """Raise SettingsError naming the first non-finite float in a settings object (dataclasses,
    lists and dicts are walked; the ``Any`` trees of sweep definitions included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{_where(path)}must be a finite number, got {value}")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            check_finite(getattr(value, field.name), (*path, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, (*path, str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(item, (*path, str(index)))


def _check_dataclass(cls: Any, value: Any, path: tuple[str, ...]) -> None:
    if not isinstance(value, dict):
        raise SettingsError(f"{_where(path)}expected a mapping ({_describe(cls)}), got {value!r}")
    allowed: set[str] = set()
    if is_choice_type(cls):
        name = value.get(_CHOICE_KEY, cls.default_choice_name())
        try:
            cls = cls.get_choice_class(name)
        except (KeyError, ValueError, TypeError, AttributeError):
            return  # an unknown choice: draccus names it with the known ones
        allowed.add(_CHOICE_KEY)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    allowed |= fields
    unknown = [key for key in value if key not in allowed]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise SettingsError(
            f"{_where(path)}unknown key{'s' if len(unknown) > 1 else ''} {keys}"
            f" (expected one of {', '.join(sorted(allowed))})"
        )
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # unresolvable annotations: leave those fields to draccus
        return
    for key, item in value.items():
        if key in fields and key in hints:
            check_strictly(hints[key], item, (*path, key))


def _accepts_none(cls: Any) -> bool:
    if cls is Any or cls is NoneType:
        return True
    if typing.get_origin(cls) is Union:
        return NoneType in typing.get_args(cls)
    if typing.get_origin(cls) is Literal:
        return None in typing.get_args(cls)
    return False


def _describe(cls: Any) -> str:
    if cls is int:
        return "an integer"
    if cls is float:
        return "a number"
    if cls is str:
        return "a string"
    if cls is bool:
        return "true or false"
    if typing.get_origin(cls) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(cls))
    return getattr(cls, "__name__", str(cls))


def _where(path: tuple[str, ...]) -> str:
    # The same form as draccus' own messages: `model.sequence`: ...
    return f"`{'.'.join(path)}`: " if path else ""
