"""Typed option values: every option dataclass (a method's ``Config``, a protocol's, ``TrainConfig``) refuses a
value of the wrong type by name before any work, instead of a traceback at the first training step.

The check follows the dataclass's own annotations, so a new method or protocol gets it without writing any: a
``float`` option takes a number (an int too, as YAML writes ``1`` for ``1.0``), an ``int`` a whole number, a
``bool`` only true or false, a ``str`` text, ``X | None`` also null, a ``tuple``/``list`` a sequence whose items
are checked alike. A value's range is the owner's to check (``__post_init__``, e.g. a mask ratio in (0, 1)).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        plural = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "texts"}
        return f"a list of {plural.get(args[0], _name(args[0]))}" if args else "a list"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML or the command line gives it) is a ``tp``; types it cannot judge pass."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(tp))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(tp)
        if not args:
            return True
        if origin is tuple and Ellipsis not in args and len(args) != len(value):
            return False
        items = [args[0]] * len(value) if (origin is list or Ellipsis in args) else list(args)
        return all(fits(v, a) for v, a in zip(value, items))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: left to its owner


def check_types(cls: type, values: dict[str, Any]) -> None:
    """A ``ValueError`` naming the first option of ``values`` whose value does not fit ``cls``'s annotation."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values and f.name in hints and not fits(values[f.name], hints[f.name]):
            raise ValueError(f"{f.name}={values[f.name]!r}: expected {_name(hints[f.name])}")
