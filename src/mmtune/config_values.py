"""Typed values from YAML and the command line: reading config files (``inherit:`` chains) and dotted
overrides, coercion of raw values and building config dataclasses.

``build(cls, mapping)`` turns a nested mapping (from YAML or dotted overrides) into dataclass ``cls``,
resolving a section's ``preset`` first; ``coerce`` converts one raw value to a field's annotated type.
Every failure is a :class:`mmtune.errors.ConfigError` naming the dotted field.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mmtune import presets
from mmtune.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a mapping", list: "a list"}.get(origin or tp, str(tp))


def _yaml_value(text: str, path: str, allowed: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(path, text, allowed) from None


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Turns a YAML or command-line value into ``tp``, or raises ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        assert len(args) == 1, f"unsupported union {tp}"
        return coerce(value, args[0], path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(path, value, _type_name(tp))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, value, _type_name(tp))
        return build(tp, value, path)
    if origin is list:
        if isinstance(value, str):
            value = _yaml_value(value, path, "a list")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, path, "a mapping")
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(path, value, "true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(path, value, _type_name(tp))
        try:
            number = float(value) if tp is float else int(str(value), 0) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(path, value, _type_name(tp)) from None
        if tp is int and not isinstance(number, int):
            if isinstance(number, float) and number.is_integer():
                return int(number)
            raise ConfigError(path, value, "an integer")
        return tp(number)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(path, value, "a string")
        return str(value)
    return value


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved type annotations of dataclass ``cls``, by field name."""
    return typing.get_type_hints(cls)


def build(cls: type, values: dict, path: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, resolving a ``preset`` key first."""
    values = dict(values)
    preset_name = values.get("preset")
    if preset_name is not None and "preset" in hints(cls):
        table = presets.table_for(cls.__name__)
        if preset_name not in table:
            raise ConfigError(f"{path}.preset" if path else "preset", preset_name,
                              "one of " + ", ".join(sorted(table)))
        values = {**table[preset_name], **values}
    types_by_field = hints(cls)
    kwargs = {}
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in types_by_field:
            raise ConfigError(where, value, "a known field (" + ", ".join(types_by_field) + ")")
        kwargs[key] = coerce(value, types_by_field[key], where)
    return cls(**kwargs)


FREE_FORM = ("hf_config", "options")
"""Config fields that hold a free-form mapping passed on to another library."""


def merge(base: dict, extra: dict, whole_free_form: bool = True) -> dict:
    """Deep-merges mapping ``extra`` over ``base``. A free-form ``hf_config``/``options`` in ``extra``
    replaces the inherited one whole unless ``whole_free_form`` is False (dotted overrides, which
    name one key of it)."""
    out = dict(base)
    for key, value in extra.items():
        if (isinstance(value, dict) and isinstance(out.get(key), dict)
                and (key not in FREE_FORM or not whole_free_form)):
            out[key] = merge(out[key], value, whole_free_form)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Reads a config file, following ``inherit:`` chains."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "an existing YAML file")
    if path.resolve() in _seen:
        raise ConfigError("inherit", str(path), "a file that does not inherit itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path}{where}", "valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "a YAML mapping of sections")
    parent = data.pop("inherit", None)
    if parent:
        data = merge(read_yaml(path.parent / parent, _seen + (path.resolve(),)), data)
    return data


def parse_overrides(argv: list[str]) -> dict:
    """``["--training.lr", "1e-4", "--data.batching=padded"]`` -> nested dict of raw strings (typed by
    the fields later), except inside free-form mappings, where values are read as YAML."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError("override", arg, "--section.field VALUE")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(arg[2:], None, "a value after the option")
            key, value = arg[2:], argv[i + 1]
            i += 2
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _free_form_value(value) if set(FREE_FORM) & set(parents) else value
    return out


def _free_form_value(text: str) -> Any:
    """A value for a key inside ``hf_config``/``options``, read as a YAML scalar or list (no field type
    says what it is): ``0.1`` -> 0.1, ``true`` -> True, ``[1, 2]`` -> [1, 2]; otherwise the text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
