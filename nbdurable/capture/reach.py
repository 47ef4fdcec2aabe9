"""What a variable's object shares with others: the identities of the mutable objects it reaches.

A cell can change an object through a name it never mentions: a numpy view held by another variable
(``v[0] = 7`` changes ``a`` when ``v = a[2:5]``), a wrapper (``w.data[1] = 3`` changes ``arr`` when
``w.data is arr``), a container (``d['l'].append(3)`` changes ``lst``). The tracker therefore examines,
besides the names a cell touches, every recorded variable whose *reach* meets theirs.

The reach of an object is its own identity, the identities along an ndarray's ``base`` chain (its buffer's
owners), and, down to ``DEPTH`` levels, those of the members of builtin containers (list, tuple, set, dict
values) and of plain objects' ``__dict__`` values, at most ``CAP`` members per object. Nothing is called on
the objects (no ``__iter__`` of user classes, no properties): only builtin views of their storage. pandas
objects are not descended into: under copy-on-write, writes through one never show in another. A stale or
reused identity only costs an extra fingerprint (a variable examined that did not change), never a miss of
a change the rule covers.
"""

from __future__ import annotations

import types
from typing import Any

DEPTH = 2
CAP = 256

_ATOMIC: tuple[type, ...] = (
    int, float, complex, str, bytes, bool, type(None), range, type, types.ModuleType, types.FunctionType,
    types.BuiltinFunctionType, types.MethodType,
)  # fmt: skip
_OPAQUE_MODULES = ("pandas", "polars", "pyarrow")  # copy-on-write or immutable data: no shared writes to follow


def reach(obj: Any) -> set[int]:
    """The identities of the mutable objects ``obj`` reaches (see the module docstring)."""
    found: set[int] = set()
    try:
        _walk(obj, DEPTH, found)
    except RuntimeError:  # a container changed size under us (another thread): what was found stands
        pass
    return found


def _walk(obj: Any, depth: int, found: set[int]) -> None:
    if isinstance(obj, _ATOMIC) or id(obj) in found:
        return
    found.add(id(obj))
    cls = type(obj)
    if cls.__module__ == "numpy" and cls.__name__ == "ndarray":
        base = obj.base
        while base is not None:  # a view: its buffer's owners share every write
            found.add(id(base))
            base = base.base if type(base).__name__ == "ndarray" else None
        return
    if depth == 0 or cls.__module__.split(".")[0] in _OPAQUE_MODULES:
        return
    for member in _members(obj):
        _walk(member, depth - 1, found)


def _members(obj: Any) -> list[Any]:
    """Up to CAP members of a builtin container or of a plain object's ``__dict__``, read without calling
    anything the object's class defines."""
    if isinstance(obj, dict):
        return _first(dict.values(obj))
    if isinstance(obj, (list, tuple)):
        return list(obj[:CAP]) if type(obj) in (list, tuple) else _first(list.__iter__(obj) if isinstance(obj, list)
                                                                          else tuple.__iter__(obj))
    if isinstance(obj, (set, frozenset)):
        return _first(set.__iter__(obj) if isinstance(obj, set) else frozenset.__iter__(obj))
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return []
    return _first(dict.values(attrs)) if type(attrs) is dict else []


def _first(members: Any) -> list[Any]:
    out: list[Any] = []
    for member in members:
        if len(out) >= CAP:
            break
        out.append(member)
    return out
