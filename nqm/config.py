"""The one configuration resolver: defaults < TOML file < command line.

Every command's configuration is a frozen dataclass whose defaults are the one
visible block of defaults, validated in its ``__post_init__``.
:func:`resolve_config` layers a TOML file and then explicit overrides (command
line options) on top, coercing each value to its field's type, and
:func:`config_to_toml` writes the resolved configuration as a TOML document that
:func:`resolve_config` reads back, to be saved beside the results.

Coercion follows the field's type annotation:

* ``int``: integers, integral floats, or text such as ``"2000"`` (not ``bool``);
* ``float``: numbers or text; ``bool``: ``true``/``false`` (or that text);
* ``str``, :class:`pathlib.Path`, ``str`` enums (checked against their values);
* ``tuple[X, ...]``: a list, a single value, or comma-separated text;
* ``X | None``: ``None`` or the text ``"none"`` gives ``None``.

A field can name its own parser in its metadata,
``dataclasses.field(default=..., metadata={"parse": fn})``; ``fn(value)`` then
replaces the coercion (for example batch sizes written ``"2^0..2^20"``).
Keys may use ``-`` for ``_`` (``kl-clip`` is ``kl_clip``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "resolve_config",
    "load_toml",
    "coerce_value",
    "config_to_toml",
    "from_fields",
]

C = TypeVar("C")

#: The metadata key of a field's own parser (see the module docstring).
PARSE = "parse"


def resolve_config(
    cls: type[C],
    file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: C | None = None,
    table: str | None = None,
) -> C:
    """Build ``cls`` from its defaults, then a TOML file, then overrides.

    Args:
        cls: a frozen dataclass; its ``__post_init__`` validates the result.
        file: optional TOML file of ``field = value`` pairs.
        overrides: field name -> value, e.g. parsed command line options. ``None``
            values mean "not given" and are skipped, so that an unset option
            does not mask the file (set an optional field to ``None`` with
            ``"none"``).
        base: the starting point instead of ``cls()`` (e.g. a preset).
        table: read the file's ``[table]`` section when it has one.

    Returns:
        The validated configuration.

    Raises:
        ValueError: one line naming the unknown key (and the file) or the field
            whose value cannot be read, or the validation error of ``cls``.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"cls must be a dataclass type, got {cls!r}")
    merged: dict[str, Any] = {}
    if file is not None:
        merged.update(load_toml(cls, file, table=table))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = _field_name(cls, key, "unknown config key")
        merged[name] = coerce_value(cls, name, value)
    return dataclasses.replace(base if base is not None else cls(), **merged)


def load_toml(
    cls: type, path: str | os.PathLike, *, table: str | None = None
) -> dict[str, Any]:
    """Read a TOML file of ``cls``'s fields, coerced to their types.

    Args:
        cls: the dataclass whose fields the file sets.
        path: the TOML file.
        table: read the ``[table]`` section when the file has one.

    Returns:
        Field name -> coerced value, for the keys the file sets.

    Raises:
        ValueError: if the file is unreadable or not TOML, has an unknown key, or
            a value that cannot be read as its field's type (naming the file).
    """
    where = f"config file {os.fspath(path)!r}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {where}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where} is not valid TOML: {exc}") from exc
    if table is not None and isinstance(data.get(table), dict):
        data = data[table]
    out = {}
    for key, value in data.items():
        name = _field_name(cls, key, f"{where} has unknown key")
        try:
            out[name] = coerce_value(cls, name, value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return out


def _field_name(cls: type, key: str, message: str) -> str:
    name = str(key).replace("-", "_")
    known = [f.name for f in dataclasses.fields(cls)]
    if name not in known:
        raise ValueError(f"{message} {key!r}; known keys: {', '.join(sorted(known))}")
    return name


def coerce_value(cls: type, name: str, value: Any) -> Any:
    """Bring a TOML or command-line value to the type of field ``name``.

    Args:
        cls: the dataclass.
        name: one of its field names.
        value: a TOML value or command-line text.

    Returns:
        The value as the field's type (see the module docstring).

    Raises:
        ValueError: naming the field, if the value cannot be read as its type.
    """
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if field is None:
        raise ValueError(f"unknown config key {name!r}")
    parse: Callable[[Any], Any] | None = field.metadata.get(PARSE)
    if parse is not None:
        return parse(value)
    return _coerce(name, typing.get_type_hints(cls)[name], value)


def _coerce(name: str, kind: Any, value: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            if value is None or (isinstance(value, str) and value.lower() == "none"):
                return None
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1:
                return _coerce(name, rest[0], value)
        raise ValueError(f"{name}: unsupported field type {kind!r}")  # a bug
    if value is None:
        raise ValueError(f"{name} may not be none")
    if origin is tuple:
        item = args[0] if args else Any
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        return tuple(_coerce(name, item, v) for v in items)
    if kind is bool:
        return _as_bool(name, value)
    if kind is int:
        return _as_int(name, value)
    if kind is float:
        return _as_float(name, value)
    if kind is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if kind is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{name} must be a path, got {value!r}")
        return Path(value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in kind)
            raise ValueError(
                f"{name} must be one of {choices}, got {value!r}"
            ) from None
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = _as_float(name, text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def from_fields(cls: type[C], source: Any, **values: Any) -> C:
    """The dataclass ``cls`` built from the same-named attributes of ``source``.

    For a configuration that holds the options of a narrower one (a sweep's
    configuration and its workload): every field of ``cls`` is read from
    ``source`` unless given in ``values``.

    Raises:
        AttributeError: if ``source`` lacks a field of ``cls`` not in ``values``.
    """
    kwargs = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(cls)
        if f.init and f.name not in values
    }
    return cls(**kwargs, **values)


def config_to_toml(cfg: Any, header: str | None = None) -> str:
    """The configuration as a TOML document that :func:`resolve_config` reads back.

    TOML has no null: a ``None`` field is left out when ``None`` is its
    default, and written ``"none"`` (which reads back as ``None``) otherwise. Tuples become arrays, enums their values, paths
    strings; floats are written with :func:`repr` so that they round-trip.

    Args:
        cfg: a dataclass instance.
        header: optional first line, written as a ``#`` comment.

    Returns:
        The TOML text, one ``key = value`` line per field, in field order.
    """
    lines = [] if header is None else [f"# {header}"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is not None:
            lines.append(f"{f.name} = {_toml_value(value)}")
        elif f.default is not None:  # None is not the default: say so
            lines.append(f'{f.name} = "none"')
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, enum.Enum):
        return _toml_value(value.value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # inf, -inf and nan are TOML floats too
    if isinstance(value, int):
        return str(value)
    raise ValueError(f"cannot write {value!r} as TOML")
