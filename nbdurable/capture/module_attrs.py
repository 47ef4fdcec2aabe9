"""Attributes a cell assigns on imported modules (``np.foo = 1``, ``mymod.settings.DEBUG = True``).

Such an assignment changes no variable of the notebook, so the state delta would not see it, and a
restored cell would leave the module as it was. The candidates come from the cell's code
(``CellNames.attribute_stores``: dotted targets rooted at a global name); before the cell, the identity
of each candidate's current value is noted; after it, every candidate whose *parent* is a module and
whose value is another object (or was deleted) is a change, recorded as the pseudo-variable
``%setattr:<module>.<attribute>`` and set again, on the module imported by name, when the cell is restored.

Not seen: ``setattr(module, name, value)`` and assignments made by functions defined in earlier cells
(their code is not this cell's); attributes of objects that are not modules (those objects are
variables, or the state of a library, captured elsewhere).
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterable
from typing import Any

PREFIX = "%setattr:"
_MISSING = object()


class Deleted:
    """The value recorded for an attribute the cell deleted."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deleted)

    def __hash__(self) -> int:
        return hash(Deleted)


def _parent(namespace: dict[str, Any], chain: tuple[str, ...]) -> types.ModuleType | None:
    """The module holding the last attribute of ``chain``, or None if the chain does not reach one."""
    obj: Any = namespace.get(chain[0], _MISSING)
    for part in chain[1:-1]:
        if obj is _MISSING:
            return None
        obj = getattr(obj, part, _MISSING)
    return obj if isinstance(obj, types.ModuleType) else None


def before(namespace: dict[str, Any], chains: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], int | None]:
    """The identity of each candidate's value before the cell (None: not reachable yet or missing)."""
    seen: dict[tuple[str, ...], int | None] = {}
    for chain in chains:
        if len(chain) < 2:
            continue
        module = _parent(namespace, chain)
        value = getattr(module, chain[-1], _MISSING) if module is not None else _MISSING
        seen[chain] = None if value is _MISSING else id(value)
    return seen


def changes(namespace: dict[str, Any], seen: dict[tuple[str, ...], int | None]) -> list[tuple[str, Any]]:
    """``(pseudo-variable name, value or Deleted())`` for each module attribute the cell changed."""
    found: dict[str, Any] = {}
    for chain, identity in seen.items():
        module = _parent(namespace, chain)
        if module is None:
            continue
        value = getattr(module, chain[-1], _MISSING)
        now = None if value is _MISSING else id(value)
        if now == identity and identity is not None:
            continue
        if value is _MISSING and identity is None:
            continue  # deleted something that was not there: nothing happened
        found[f"{PREFIX}{module.__name__}.{chain[-1]}"] = Deleted() if value is _MISSING else value
    return sorted(found.items())


def is_module_attr(name: str) -> bool:
    """Whether a recorded name is one of these pseudo-variables."""
    return name.startswith(PREFIX)


def apply(name: str, value: Any) -> None:
    """Set (or delete) the recorded attribute on its module, imported by name."""
    target = name[len(PREFIX):]
    module_name, _, attr = target.rpartition(".")
    module = importlib.import_module(module_name)
    if isinstance(value, Deleted):
        if hasattr(module, attr):
            delattr(module, attr)
        return
    setattr(module, attr, value)
