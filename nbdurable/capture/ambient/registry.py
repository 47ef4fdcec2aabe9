"""The registry the extension uses: ``Ambient`` (snapshot before a cell, changes after it, apply on restore)
and the providers of the ``nbdurable.ambient`` entry point group."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast

from nbdurable.capture.ambient.base import AmbientProvider, Unrestorable, default_is_secret
from nbdurable.errors import RestoreError

ENTRY_POINT_GROUP = "nbdurable.ambient"
_INACTIVE = object()  # a snapshot's entry for a provider whose module was not imported
_OFF = "\0 switched off"  # the module of a provider switched off: never in sys.modules
Entry = tuple[str | None, Callable[[], object], AmbientProvider]  # module, fingerprint, provider


def builtin_providers(is_secret: Callable[[str], bool] = default_is_secret) -> list[AmbientProvider]:
    """The built-in providers, in the order changes are recorded and applied (paths and environment first:
    applying the later ones may import libraries)."""
    from nbdurable.capture.ambient.interpreter import (
        CwdProvider,
        EnvironProvider,
        RandomProvider,
        RecursionLimitProvider,
        SysPathProvider,
        WarningsProvider,
    )
    from nbdurable.capture.ambient.libraries import (
        NumpyPrintOptionsProvider,
        NumpyRandomProvider,
        PandasOptionsProvider,
        RcParamsProvider,
        TorchRandomProvider,
    )
    from nbdurable.capture.ambient.loggers import LoggingProvider

    return [
        SysPathProvider(), CwdProvider(), EnvironProvider(is_secret), RecursionLimitProvider(), WarningsProvider(),
        LoggingProvider(), RandomProvider(), NumpyRandomProvider(), NumpyPrintOptionsProvider(),
        PandasOptionsProvider(), RcParamsProvider(), TorchRandomProvider(),
    ]  # fmt: skip


def _warn(message: str) -> None:
    try:
        print(f"nbdurable: {message}", file=sys.stderr)
    except Exception:  # a closed stderr never breaks the kernel
        pass


def _check(provider: Any) -> AmbientProvider:
    name = getattr(provider, "name", None)
    if not isinstance(name, str) or not name.startswith("%"):
        raise TypeError(f"its name must be a str starting with '%', not {name!r}")
    module = getattr(provider, "module", None)
    if module is not None and not isinstance(module, str):
        raise TypeError(f"its module must be a str or None, not {module!r}")
    for method in ("fingerprint", "capture", "apply"):
        if not callable(getattr(provider, method, None)):
            raise TypeError(f"it has no method {method}()")
    return cast(AmbientProvider, provider)


def entry_point_providers(taken: Iterable[str] = ()) -> list[AmbientProvider]:
    """The providers of the ``nbdurable.ambient`` entry points: each loads a provider object, a provider
    class or a zero-argument factory. A broken one is skipped with one line on stderr naming it."""
    names = set(taken)
    found: list[AmbientProvider] = []
    try:
        points = _entry_points(ENTRY_POINT_GROUP)
    except Exception as exc:
        _warn(f"could not list the {ENTRY_POINT_GROUP} entry points: {type(exc).__name__}: {exc}")
        return found
    for point in points:
        try:
            obj = point.load()
            if isinstance(obj, type) or (callable(obj) and not callable(getattr(obj, "fingerprint", None))):
                obj = obj()
            provider = _check(obj)
            if provider.name in names:
                raise ValueError(f"its name {provider.name} is taken")
        except Exception as exc:
            _warn(f"skipping the ambient state provider of entry point {point.name} = {point.value} "
                  f"(group {ENTRY_POINT_GROUP}): {type(exc).__name__}: {exc}")
            continue
        names.add(provider.name)
        found.append(provider)
    return found


def _entry_points(group: str) -> list[Any]:
    """``importlib.metadata.entry_points(group=group)``, for a third of its time: that parses and names every
    installed distribution's entry points (17 ms for 250 distributions, on a kernel's first cell); here only
    the distributions whose ``entry_points.txt`` mentions the group are parsed. As there, a distribution
    found twice on ``sys.path`` counts once, where it is found first."""
    from importlib.metadata import distributions

    header, seen, points = f"[{group}]", set(), []
    for dist in distributions():
        text = dist.read_text("entry_points.txt")
        if not text or header not in text:
            continue
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower()
        if name in seen:
            continue
        seen.add(name)
        points += [point for point in dist.entry_points if point.group == group]
    return points


class Snapshot:
    """The fingerprints of the providers before a cell (opaque to the extension)."""

    __slots__ = ("entries", "fingerprints")

    def __init__(self, entries: tuple[Entry, ...], fingerprints: list[object]) -> None:
        self.entries = entries
        self.fingerprints = fingerprints


class Ambient:
    """The ambient state providers of this interpreter.

    Around each executed cell: ``before = ambient.snapshot()``, then ``ambient.changes(before)`` returns
    ``(name, value)`` pairs to record like variables (``name`` starts with ``%``; ``value`` may be an
    ``Unrestorable``: the cell must then be re-executed rather than restored). On restore,
    ``ambient.apply(name, value)`` for each recorded pair, in order, best *after* the cell's variables are
    restored (restoring a module reference imports it, and imports configure state too: a library's
    logging handler found already there is not added twice).

    A provider whose module was imported during the cell (it was inactive in the snapshot) is captured with
    ``before=None``: it compares with the state right after the import where that is known (pandas
    defaults, ``rcParamsOrig``, numpy's default print options) and captures the whole state otherwise (the
    generators: a seed or a draw in the importing cell is kept, and so is the unseeded state).

    A provider that raises in ``fingerprint`` is switched off with one line on stderr (that cell's change,
    if any, is then ``Unrestorable``); one that raises in ``capture`` records ``Unrestorable``.
    """

    def __init__(self, providers: Iterable[AmbientProvider] | None = None, *,
                 is_secret: Callable[[str], bool] = default_is_secret) -> None:
        self._given = None if providers is None else [_check(p) for p in providers]
        self._is_secret = is_secret
        self._providers: tuple[AmbientProvider, ...] | None = None
        self._entries: tuple[Entry, ...] = ()

    @staticmethod
    def is_ambient(name: str) -> bool:
        """True for the pseudo-variable names of ambient state."""
        return name.startswith("%")

    @property
    def providers(self) -> tuple[AmbientProvider, ...]:
        """Built-ins then entry points (loaded on first use), or the providers given."""
        return self._providers if self._providers is not None else self._load()

    def _load(self) -> tuple[AmbientProvider, ...]:
        if self._given is not None:
            providers = list(self._given)
        else:
            providers = builtin_providers(self._is_secret)
            providers += entry_point_providers(p.name for p in providers)
        self._providers = tuple(providers)
        self._entries = tuple((p.module, p.fingerprint, p) for p in self._providers)
        return self._providers

    def _switch_off(self, provider: AmbientProvider, exc: BaseException) -> None:
        """No more fingerprints of a provider that raised in one (its module is never in sys.modules now)."""
        self._entries = tuple((_OFF if p is provider else m, f, p) for m, f, p in self._entries)
        _warn(f"ambient state {provider.name} is no longer recorded: its fingerprint() raised "
              f"{type(exc).__name__}: {exc}")

    def snapshot(self) -> Snapshot:
        """The fingerprints of the active providers (before a cell)."""
        if self._providers is None:
            self._load()
        entries, modules = self._entries, sys.modules
        fingerprints: list[object] = []
        for module, fingerprint, provider in entries:
            if module is not None and module not in modules:
                fingerprints.append(_INACTIVE)
                continue
            try:
                fingerprints.append(fingerprint())
            except Exception as exc:
                self._switch_off(provider, exc)
                fingerprints.append(_INACTIVE)
        return Snapshot(entries, fingerprints)

    def changes(self, before: Snapshot) -> list[tuple[str, object]]:
        """``(name, value)`` of what changed since ``before``, in registry order."""
        modules = sys.modules
        found: list[tuple[str, object]] = []
        for (module, fingerprint, provider), old in zip(before.entries, before.fingerprints, strict=True):
            if module is not None and module not in modules:
                continue
            if old is not _INACTIVE:
                try:
                    new = fingerprint()
                except Exception as exc:
                    self._switch_off(provider, exc)
                    found.append((provider.name, Unrestorable(f"{provider.name} could not be read: {exc}")))
                    continue
                try:
                    if new is old or new == old:
                        continue
                except Exception:  # not comparable: take it as changed
                    pass
            try:
                value = provider.capture(None if old is _INACTIVE else old)
            except Exception as exc:
                value = Unrestorable(f"{provider.name} could not be captured: {type(exc).__name__}: {exc}")
            if value is not None:
                found.append((provider.name, value))
        return found

    def apply(self, name: str, value: object) -> None:
        """Re-create a recorded change; ``RestoreError`` naming the provider when it cannot."""
        provider = {p.name: p for p in self.providers}.get(name)  # loads the entry points: may be a plug-in's
        if provider is None:
            raise RestoreError(f"no ambient state provider is named {name}",
                               hint=f"install the library whose {ENTRY_POINT_GROUP} entry point recorded it, "
                                    "or run that cell again")
        if isinstance(value, Unrestorable):
            raise RestoreError(f"{name} cannot be re-applied: {value.reason}", hint="run that cell again")
        if provider.module is not None and provider.module not in sys.modules:
            try:
                importlib.import_module(provider.module)
            except Exception as exc:
                raise RestoreError(f"{name} cannot be re-applied: importing {provider.module} failed: {exc}",
                                   hint=f"install {provider.module.split('.')[0]}, or run that cell again") from exc
        try:
            provider.apply(value)
        except RestoreError:
            raise
        except Exception as exc:
            raise RestoreError(f"{name} cannot be re-applied: {type(exc).__name__}: {exc}",
                               hint="run that cell again") from exc
