"""Check plain values (from YAML or the command line) against a dataclass's field types.

YAML gives ``1.5`` for a thread count, ``true`` for a trial count or ``"three"`` for a
layer count; a dataclass accepts them all and the mistake surfaces later as an unrelated
traceback. :func:`type_problems` finds them at the edge, for the simple field types
(``int``, ``float``, ``bool``, ``str`` and their ``| None``); other annotations are left to
the dataclass's own ``__post_init__``.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

_SIMPLE = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}
MAX_SEED = 2**31 - 1  # NumPy takes seeds 0 .. 2**32 - 1; a sampler adds an offset (trials so far, a worker's salt)


def seed_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable seed (a whole number 0 .. MAX_SEED), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        return f"must be a whole number from 0 to {MAX_SEED}, got {value!r}"
    return None


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


@functools.cache
def _field_kinds(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Field name -> (simple types allowed, None allowed), for fields with a simple annotation."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: leave checking to the class
        return {}
    out: dict[str, tuple[tuple[type, ...], bool]] = {}
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        allows_none = type(None) in args
        kinds = tuple(a for a in args if a is not type(None))
        if kinds and all(k in _SIMPLE for k in kinds):
            out[f.name] = (kinds, allows_none)
    return out


def type_problems(cls: type, values: dict[str, Any]) -> list[str]:
    """One ``key must be ..., got ...`` line per value whose type does not fit its field."""
    problems = []
    for key, value in values.items():
        spec = _field_kinds(cls).get(key)
        if spec is None:
            continue
        kinds, allows_none = spec
        if (value is None and allows_none) or any(_fits(value, k) for k in kinds):
            continue
        wanted = " or ".join(_SIMPLE[k] for k in kinds) + (" (or null)" if allows_none else "")
        problems.append(f"'{key}' must be {wanted}, got {value!r}")
    return problems
