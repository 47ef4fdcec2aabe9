"""What every ambient state provider shares: the protocol, ``Unrestorable``, the secret rule, equality that
never raises, and reads of a C object's own struct (the cheapest fingerprint of a C-level state)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# The rule for variable names (``capture/secrets.py``) applies to environment variable names; the extension
# passes its own ``SecretRules.is_secret`` so configured patterns apply too.
from nbdurable.capture.secrets import default_is_secret as default_is_secret


class AmbientProvider(Protocol):
    """One piece of interpreter state outside the namespace that a cell can change.

    ``name`` is the pseudo-variable the change is recorded under (it starts with ``%``). ``module``: the
    provider is active only while this module is in ``sys.modules`` (``None``: always active); the registry
    never imports it, except to ``apply`` a change recorded by a cell that had imported it.
    """

    name: str
    module: str | None

    def fingerprint(self) -> object:
        """Cheap; compares equal (``==``, after ``is``) iff the state did not change. Never ``None``."""
        ...

    def capture(self, before: object | None) -> object | None:
        """What to store for the change since ``before`` (a fingerprint of this provider; ``None`` when the
        provider became active during the cell, i.e. its module was imported: compare with the state right
        after the import, or capture the whole state). Picklable with cloudpickle, or an ``Unrestorable``;
        ``None`` when nothing worth storing changed after all."""
        ...

    def apply(self, value: Any) -> None:
        """Re-create in this interpreter a change that ``capture`` returned."""
        ...


@dataclass(frozen=True)
class Unrestorable:
    """A change that cannot be stored or re-created: the cell that made it must run again."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def same(a: object, b: object) -> bool:
    """``a is b or a == b``, False when the comparison raises or is not a plain truth value."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


# A CPython object starts with its header (reference count, type, and in free-threaded builds the owning
# thread): ``object.__basicsize__`` bytes. What follows up to ``type.__basicsize__`` is the object's own
# struct. The reference count moves whenever anyone looks at the object, the rest only when its state does.
_HEADER = object.__basicsize__
_string_at: Callable[[int, int], bytes] | None = None


def struct_reader() -> Callable[[object, int], bytes] | None:
    """``read(obj, end)``: the bytes of ``obj``'s struct from past its header up to ``end`` (a
    ``__basicsize__``), one memcpy; ``None`` where that is not possible (not CPython, no ctypes).
    Callers check the reader on a private instance before trusting it (see ``reads_state``)."""
    global _string_at
    if sys.implementation.name != "cpython":
        return None
    if _string_at is None:
        try:
            import ctypes
        except ImportError:
            return None
        _string_at = ctypes.string_at
    string_at = _string_at

    def read(obj: object, end: int) -> bytes:
        return string_at(id(obj) + _HEADER, end - _HEADER)

    return read


def reads_state(fingerprint: Callable[[], object], draw: Callable[[], object], save: Callable[[], Any],
                restore: Callable[[Any], object]) -> bool:
    """Whether ``fingerprint`` (of a private instance) tracks its state: it changes with a draw and comes back
    when the saved state is restored. Any error: no."""
    try:
        state = save()
        first = fingerprint()
        draw()
        drawn = fingerprint()
        draw()
        drawn_again = fingerprint()
        restore(state)
        return first != drawn and drawn != drawn_again and fingerprint() == first
    except Exception:
        return False
