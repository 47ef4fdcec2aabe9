"""Providers of the interpreter's own state: ``sys.path``, the working directory, ``os.environ``, the
recursion limit, ``warnings.filters`` and the ``random`` module's generator."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from nbdurable.capture.ambient.base import Unrestorable, reads_state, struct_reader


class SysPathProvider:
    """``sys.path``, the whole list (``sys.path.insert``/``append``, ``sys.path = [...]``)."""

    name = "%sys.path"
    module: str | None = None

    def fingerprint(self) -> object:
        return tuple(sys.path)

    def capture(self, before: object | None) -> object | None:
        return list(sys.path)

    def apply(self, value: Any) -> None:
        sys.path[:] = list(value)


class CwdProvider:
    """The working directory (``os.chdir``, ``%cd``)."""

    name = "%cwd"
    module: str | None = None

    def fingerprint(self) -> object:
        try:
            return os.getcwd()
        except OSError as exc:  # the directory was removed under us
            return f"<gone: {exc}>"

    def capture(self, before: object | None) -> object | None:
        try:
            return os.getcwd()
        except OSError as exc:
            return Unrestorable(f"changes to a working directory that no longer exists ({exc})")

    def apply(self, value: Any) -> None:
        os.chdir(value)


class RecursionLimitProvider:
    """``sys.setrecursionlimit``."""

    name = "%sys.recursionlimit"
    module: str | None = None

    def fingerprint(self) -> object:
        return sys.getrecursionlimit()

    def capture(self, before: object | None) -> object | None:
        return sys.getrecursionlimit()

    def apply(self, value: Any) -> None:
        sys.setrecursionlimit(int(value))


class EnvironProvider:
    """``os.environ`` (``os.environ[k] = v``, ``del``, ``%env``), as a diff: ``{"set": {k: v}, "unset": [k]}``.

    The fingerprint is a copy of ``os.environ._data`` (the encoded dict: no decoding). A change that sets a
    variable whose name is a secret (``is_secret``) is never stored: it is ``Unrestorable``, so the cell
    runs again and sets it from wherever it came. ``os.putenv``/``os.unsetenv`` bypass ``os.environ``: unseen.
    """

    name = "%os.environ"
    module: str | None = None

    def __init__(self, is_secret: Callable[[str], bool]) -> None:
        self.is_secret = is_secret

    @staticmethod
    def _data() -> dict[Any, Any]:
        env = os.environ
        data = getattr(env, "_data", None)
        return data.copy() if isinstance(data, dict) else dict(env)

    def fingerprint(self) -> object:
        return self._data()

    def capture(self, before: object | None) -> object | None:
        if not isinstance(before, dict):
            return None  # os is always imported: never happens
        after = self._data()
        env = os.environ
        decode_key: Callable[[Any], str] = getattr(env, "decodekey", str)
        decode_value: Callable[[Any], str] = getattr(env, "decodevalue", str)
        changed = {decode_key(k): decode_value(v) for k, v in after.items() if before.get(k, _MISSING) != v}
        unset = sorted(decode_key(k) for k in before if k not in after)
        secret = sorted(k for k in changed if self.is_secret(k))
        if secret:
            what = "variable " + secret[0] if len(secret) == 1 else "variables " + ", ".join(secret)
            return Unrestorable(f"sets the secret environment {what}")
        if not changed and not unset:
            return None
        return {"set": changed, "unset": unset}

    def apply(self, value: Any) -> None:
        for key, val in value["set"].items():
            os.environ[key] = val
        for key in value["unset"]:
            os.environ.pop(key, None)


_MISSING = object()


class WarningsProvider:
    """``warnings.filters``, the whole list (``filterwarnings``, ``simplefilter``, ``resetwarnings``).

    Entries are ``(action, message regex, category, module regex, lineno)``: regexes pickle by pattern and
    flags, categories by reference (a warning class defined in the notebook is pickled by value, so the
    restored filter names a copy of the class, not the class a restored variable holds)."""

    name = "%warnings"
    module: str | None = "warnings"

    def fingerprint(self) -> object:
        return tuple(sys.modules["warnings"].filters)

    def capture(self, before: object | None) -> object | None:
        return list(sys.modules["warnings"].filters)

    def apply(self, value: Any) -> None:
        warnings = sys.modules["warnings"]
        warnings.filters[:] = list(value)
        mutated = getattr(warnings, "_filters_mutated", None) or getattr(warnings, "_filters_mutated_lock_held", None)
        if mutated is not None:  # the C module caches the filters by version: tell it they changed
            mutated()


class RandomProvider:
    """The ``random`` module's generator (``random.seed``, and every draw): ``getstate()``/``setstate()``.

    ``getstate()`` builds 625 ints (~19 µs): the fingerprint reads the generator's C struct instead (the
    Mersenne Twister's 624 words and index, one memcpy) plus ``gauss_next``, once that read is checked on a
    private ``random.Random``; elsewhere it falls back to ``getstate()``."""

    name = "%random"
    module: str | None = "random"

    def __init__(self) -> None:
        self._read: Callable[[object, int], bytes] | None = None
        self._checked = False
        self._end = 0

    def _reader(self) -> Callable[[object, int], bytes] | None:
        if not self._checked:
            self._checked = True
            import _random
            import random

            read, end = struct_reader(), _random.Random.__basicsize__
            if read is not None:
                probe = random.Random(1)

                def state() -> object:
                    return (read(probe, end), getattr(probe, "gauss_next", None))

                if reads_state(state, probe.random, probe.getstate, probe.setstate):
                    self._read, self._end = read, end
        return self._read

    @staticmethod
    def _instance() -> Any:
        return sys.modules["random"]._inst

    def fingerprint(self) -> object:
        inst = self._instance()
        read = self._read if self._checked else self._reader()
        if read is None:
            return inst.getstate()
        return (read(inst, self._end), inst.gauss_next)

    def capture(self, before: object | None) -> object | None:
        state: tuple[Any, ...] = self._instance().getstate()
        return state

    def apply(self, value: Any) -> None:
        self._instance().setstate(value)
