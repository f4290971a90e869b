"""Config dataclasses as the single source of truth for defaults and their documentation.

A config field is declared once, with its default and a one-line description::

    @dataclass(frozen=True)
    class RecorderConfig:
        flush_period: float = setting(1.0, "s between flushes of the open chunk")

and everything else is derived from it: ``add_arguments`` makes the argparse options of a
``qt-ros`` verb, ``parameter_table`` the ROS parameter declarations of a node (defaults and
descriptions), and ``yaml_mismatches`` lets a test fail when a shipped YAML file disagrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

_HELP = "help"
_CHOICES = "choices"
_FLAG = "flag"


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002 - argparse's word
            choices: Iterable[Any] | None = None, flag: str | None = None) -> Any:
    """A dataclass field with a description (and optional choices / command-line flag name).

    A list or tuple default becomes an immutable tuple (safe as a frozen dataclass default).
    """
    metadata: dict[str, Any] = {_HELP: help}
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    if flag is not None:
        metadata[_FLAG] = flag
    if isinstance(default, list):
        default = tuple(default)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def setting_of(cls: type, name: str, help: str | None = None) -> Any:  # noqa: A002
    """The field ``name`` of ``cls`` again (its default, description and choices), for a config
    that mirrors another one's field, e.g. a node parameter that becomes a library setting."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return setting(f.default, f.metadata.get(_HELP, "") if help is None else help,
                   choices=f.metadata.get(_CHOICES))


def description(f: dataclasses.Field) -> str:
    text = f.metadata.get(_HELP, "")
    choices = f.metadata.get(_CHOICES)
    if choices and not any(str(c) in text for c in choices):
        text = f"{text} ({' | '.join(str(c) for c in choices)})" if text else " | ".join(
            str(c) for c in choices)
    return text


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of the fields that have one (lists for tuple defaults)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parameter_table(cls: type, skip: Iterable[str] = ()) -> dict[str, tuple[Any, str]]:
    """``{name: (default, description)}`` for ``declare_parameter`` in a ROS node.

    ROS infers a parameter's type from its default, so an empty list default becomes ``[""]``
    (a string array; readers drop the empty strings) and ``None`` becomes ``""``.
    """
    skip = set(skip)
    table = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or (f.default is dataclasses.MISSING
                              and f.default_factory is dataclasses.MISSING):
            continue
        value = defaults(cls)[f.name]
        if isinstance(value, list) and not value:
            value = [""]
        elif value is None:
            value = ""
        table[f.name] = (value, description(f))
    return table


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *,
                  skip: Iterable[str] = (), positional: Iterable[str] = ()) -> None:
    """One ``--field-name`` option per field (``positional`` ones without dashes).

    Booleans with a True default become ``--no-<name>`` switches, with a False default
    ``--<name>`` switches; ``int | None`` fields accept an int and default to None; tuple
    fields take their items as separate words (``--betas 0.9 0.999``).
    """
    skip, positional = set(skip), set(positional)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, optional = _base_type(hints[f.name])
        default = defaults(cls).get(f.name)
        required = f.name not in defaults(cls)
        help_ = description(f)
        flag = f.metadata.get(_FLAG) or "--" + f.name.replace("_", "-")
        items = _tuple_items(hints[f.name])
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_)
        elif items is not None:
            parser.add_argument(flag, dest=f.name, type=items[0], nargs=items[1],
                                default=default, required=required,
                                help=help_ + ("" if required else f" (default: {default})"))
        elif kind is bool:
            if default:
                off = f.metadata.get(_FLAG) or "--no-" + f.name.replace("_", "-")
                parser.add_argument(off, dest=f.name, action="store_false",
                                    help=f"{help_} (default: on; this switch turns it off)")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
        else:
            shown = "" if default in (None, "") or required else f" (default: {default})"
            # A flag renamed with flag= shows its own name as the value's placeholder.
            metavar = flag.lstrip("-").replace("-", "_").upper() if _FLAG in f.metadata else None
            parser.add_argument(flag, dest=f.name, type=kind, default=default,
                                required=required, choices=f.metadata.get(_CHOICES),
                                metavar=metavar, help=help_ + shown)


def from_namespace(cls: type, args: argparse.Namespace | Mapping[str, Any], **overrides: Any):
    """Build ``cls`` from the parsed options named like its fields (others are ignored)."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) and _tuple_items(hints[k]) else v
              for k, v in values.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)


def from_parameters(cls: type, values: Mapping[str, Any], **overrides: Any):
    """Build ``cls`` from ROS parameter values declared with ``parameter_table``, undoing its
    conventions: ``[""]`` and the empty strings of a string array are dropped (a tuple field),
    ``""`` is None where the default is None."""
    known = defaults(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            continue
        default = known[name]
        if isinstance(default, list) and isinstance(value, (list, tuple)):
            value = tuple(v for v in value if v != "")
        elif default is None and value == "":
            value = None
        kwargs[name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def yaml_mismatches(cls: type, values: Mapping[str, Any], *,
                    same_defaults: bool = True) -> list[str]:
    """What is wrong with a YAML ``ros__parameters`` mapping for ``cls``: unknown names, values
    of another type, and (``same_defaults``) values that differ from the dataclass default."""
    problems = []
    known = defaults(cls)
    for name, value in values.items():
        if name not in known:
            problems.append(f"'{name}' is not a field of {cls.__name__}")
            continue
        default = known[name]
        if not _same_kind(default, value):
            problems.append(f"'{name}': {value!r} is not of the type of the default {default!r}")
        elif same_defaults and _normal(value) != _normal(default):
            problems.append(f"'{name}': the YAML says {value!r}, {cls.__name__} says {default!r}")
    return problems


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value if v != ""]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _same_kind(default: Any, value: Any) -> bool:
    if default is None or default == "":
        return isinstance(value, str) or value is None
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _tuple_items(hint: Any) -> tuple[type, int | str] | None:
    """``tuple[float, float]`` -> (float, 2); ``tuple[str, ...]`` -> (str, "*"); else None."""
    if typing.get_origin(hint) is not tuple:
        return None
    args = typing.get_args(hint)
    kind = args[0] if args and args[0] in (bool, int, float, str) else str
    return kind, "*" if len(args) == 2 and args[1] is Ellipsis else len(args)


def _base_type(hint: Any) -> tuple[type, bool]:
    """``int | None`` -> (int, True); ``float`` -> (float, False); containers -> (str, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if inner and isinstance(inner[0], type) else str), True
    return (hint if hint in (bool, int, float, str) else str), False
