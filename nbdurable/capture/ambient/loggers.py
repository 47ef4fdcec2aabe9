"""The provider of the ``logging`` configuration: logger levels, ``propagate``/``disabled``, the handlers
of each logger (with their levels and formatters), and ``logging.disable``.

A kernel has tens to hundreds of loggers; scanning them all twice per cell is what this avoids. The
fingerprint is a cheap *token*, and the full table of loggers is scanned again only when the token moves:

- a generation bumped whenever ``Manager._clear_cache`` ran: ``Logger.setLevel``, ``logging.disable``,
  ``basicConfig``/``dictConfig``/``fileConfig`` (through ``setLevel``) all call it, and it clears every
  logger's ``_cache`` dict, the root's included. The provider plants a private key in ``logging.root._cache``
  (``isEnabledFor`` only ever looks up level numbers there) and sees it gone;
- ``logging.disable``'s level; the number of loggers (``getLogger`` of a new name);
- the number of live handlers (``logging._handlerList``, which every ``Handler.__init__`` appends to):
  creating a handler to add it moves this;
- the root logger's handlers (``basicConfig``).

What the token misses until it next moves (the change is then recorded with that later cell): adding to
or removing from a non-root logger a handler created in an earlier cell, ``handler.setLevel``/
``setFormatter`` on an existing handler, ``logger.propagate``/``disabled`` set by hand, ``logger.level``
assigned directly, logger and handler filters.

Re-created on apply: ``StreamHandler``s on sys.stdout/sys.stderr (bound to the streams current at apply
time), ``FileHandler``s (same path, mode ``'a'``, encoding) and ``NullHandler``s, with their level, name
and a plain ``logging.Formatter`` (format, datefmt, style, defaults); a handler equal to one the logger
already has is not added twice. A cell that adds any other handler, or one with filters or a formatter of
another class, is ``Unrestorable`` with the reason, except on a logger created during the cell and named
after a module in ``sys.modules`` (``getLogger(__name__)`` in a library the cell imported): importing that
module again re-creates it, so it is left out.

Libraries configure their loggers when imported (a ``NullHandler``, sometimes a level): the importing cell
records that too. The extension should apply a restored cell's ambient state *after* restoring its
variables (which imports the modules they reference), so that those handlers are found and not doubled.
"""

from __future__ import annotations

import sys
from typing import Any

from nbdurable.capture.ambient.base import Unrestorable

_STYLES = {"PercentStyle": "%", "StrFormatStyle": "{", "StringTemplateStyle": "$"}


class _Unsupported(Exception):
    """A handler that cannot be described for re-creation (the message says why)."""


def _label(name: str) -> str:
    return f"logger {name!r}" if name else "the root logger"


def _stream_name(stream: Any) -> str | None:
    """'stdout'/'stderr' for the process's or the kernel's standard streams, or a tee in front of one (a
    wrapper holding it as ``_stream``, like the extension's output capture in a plain IPython shell)."""
    for _ in range(4):
        for name in ("stdout", "stderr"):
            if stream is getattr(sys, name) or stream is getattr(sys, f"__{name}__"):
                return name
        try:
            label = getattr(stream, "name", None)
            inner = getattr(stream, "_stream", None)
        except Exception:
            return None
        if isinstance(label, str) and label in _STREAM_NAMES:
            return _STREAM_NAMES[label]
        if inner is None or inner is stream:
            return None
        stream = inner
    return None


_STREAM_NAMES = {"<stdout>": "stdout", "stdout": "stdout", "<stderr>": "stderr", "stderr": "stderr"}


def _formatter_spec(logging: Any, formatter: Any, where: str) -> tuple[Any, ...] | None:
    if formatter is None:
        return None
    if type(formatter) is not logging.Formatter:
        kind = type(formatter)
        raise _Unsupported(f"a handler of {where} uses the formatter class {kind.__module__}.{kind.__qualname__}")
    style = _STYLES.get(type(formatter._style).__name__, "%")
    return (formatter._fmt, formatter.datefmt, style, getattr(formatter._style, "_defaults", None))


def _describe(logging: Any, handler: Any, level: int, formatter: Any, where: str) -> dict[str, Any]:
    """What re-creates ``handler``: a plain dict, or ``_Unsupported``."""
    kind = type(handler)
    if getattr(handler, "filters", None):
        raise _Unsupported(f"a handler of {where} has filters")
    base = {"level": level, "formatter": _formatter_spec(logging, formatter, where), "name": handler.name}
    if kind is logging.FileHandler:
        return {"kind": "file", "path": handler.baseFilename, "encoding": handler.encoding,
                "errors": getattr(handler, "errors", None), **base}
    if kind is logging.NullHandler:
        return {"kind": "null", **base}
    if kind is logging.StreamHandler:
        stream = _stream_name(handler.stream)
        if stream is None:
            raise _Unsupported(f"adds to {where} a StreamHandler on {handler.stream!r}, neither sys.stdout "
                               "nor sys.stderr")
        return {"kind": "stream", "stream": stream, **base}
    raise _Unsupported(f"adds a {kind.__module__}.{kind.__qualname__} to {where} (only StreamHandlers on "
                       "sys.stdout/sys.stderr, FileHandlers and NullHandlers are re-created)")


def _matches(logging: Any, handler: Any, spec: dict[str, Any]) -> bool:
    if spec["kind"] == "other":
        return bool(f"{type(handler).__module__}.{type(handler).__qualname__}" == spec["class"])
    try:
        return bool(_describe(logging, handler, handler.level, handler.formatter, "") == spec)
    except _Unsupported:
        return False


def _build(logging: Any, spec: dict[str, Any]) -> Any:
    if spec["kind"] == "null":
        handler = logging.NullHandler()
    elif spec["kind"] == "stream":
        handler = logging.StreamHandler(sys.stdout if spec["stream"] == "stdout" else sys.stderr)
    else:
        handler = logging.FileHandler(spec["path"], mode="a", encoding=spec["encoding"], errors=spec["errors"])
    handler.setLevel(spec["level"])
    if spec["formatter"] is not None:
        fmt, datefmt, style, defaults = spec["formatter"]
        handler.setFormatter(logging.Formatter(fmt, datefmt, style, **({"defaults": defaults} if defaults else {})))
    if spec["name"]:
        handler.set_name(spec["name"])
    return handler


Entry = tuple[int, bool, bool, tuple[tuple[Any, int, Any], ...]]  # level, propagate, disabled, handlers


def _entry(logger: Any) -> Entry:
    return (logger.level, logger.propagate, logger.disabled, tuple((h, h.level, h.formatter) for h in logger.handlers))


class LoggingProvider:
    """See the module docstring."""

    name = "%logging"
    module: str | None = "logging"

    def __init__(self) -> None:
        self._mark = object()  # the key planted in logging.root._cache
        self._generation = 0
        self._token: object = None
        self._table: dict[str, Any] = {}

    def _current_token(self, logging: Any) -> object:
        root = logging.root
        cache = getattr(root, "_cache", None)
        if type(cache) is not dict or self._mark not in cache:
            self._generation += 1  # _clear_cache ran (or no cache to watch: always rescan)
            if type(cache) is dict:
                cache[self._mark] = True
        manager = root.manager
        return (self._generation, manager.disable, len(manager.loggerDict), len(getattr(logging, "_handlerList", ())),
                tuple(root.handlers))

    @staticmethod
    def _scan(logging: Any) -> dict[str, Any]:
        root = logging.root
        loggers = {"": _entry(root)}
        for name, logger in list(root.manager.loggerDict.items()):
            if isinstance(logger, logging.Logger):
                loggers[name] = _entry(logger)
        return {"disable": root.manager.disable, "loggers": loggers}

    def fingerprint(self) -> object:
        logging = sys.modules["logging"]
        token = self._current_token(logging)
        if token != self._token:
            self._table, self._token = self._scan(logging), token
        return (token, self._table)

    def capture(self, before: object | None) -> object | None:
        logging = sys.modules["logging"]
        self.fingerprint()  # rescans if the token moved
        table = self._table
        old: dict[str, Any] = before[1] if isinstance(before, tuple) else {"disable": 0, "loggers": {}}
        fresh: Entry = (logging.NOTSET, True, False, ())
        changes: dict[str, Any] = {}
        try:
            for name, entry in table["loggers"].items():
                prev: Entry = old["loggers"].get(name) or (fresh if name else (logging.WARNING, True, False, ()))
                if entry != prev:
                    # A new logger named after a module imported by the cell: that import configured it, and
                    # importing the module again re-creates a handler of its own kind (skipped, not Unrestorable).
                    by_import = name not in old["loggers"] and name in sys.modules and name != "__main__"
                    change = self._change(logging, name, prev, entry, by_import)
                    if change:
                        changes[name] = change
        except _Unsupported as exc:
            return Unrestorable(str(exc))
        value: dict[str, Any] = {"loggers": changes} if changes else {}
        if table["disable"] != old["disable"]:
            value["disable"] = table["disable"]
        return value or None

    @staticmethod
    def _change(logging: Any, name: str, prev: Entry, entry: Entry, by_import: bool) -> dict[str, Any]:
        where = _label(name)
        change: dict[str, Any] = {key: new for key, old, new in zip(("level", "propagate", "disabled"), prev[:3],
                                                                    entry[:3], strict=True) if old != new}
        removed = [h for h in prev[3] if h not in entry[3]]
        added = [h for h in entry[3] if h not in prev[3]]
        if removed:
            specs = []
            for handler, level, formatter in removed:
                try:
                    specs.append(_describe(logging, handler, level, formatter, where))
                except _Unsupported:  # removed on apply by its class: the best match there is
                    specs.append({"kind": "other", "class": f"{type(handler).__module__}.{type(handler).__qualname__}"})
            change["remove"] = specs
        specs = []
        for handler, level, formatter in added:
            try:
                specs.append(_describe(logging, handler, level, formatter, where))
            except _Unsupported:
                if not by_import:
                    raise
        if specs:
            change["add"] = specs
        return change

    def apply(self, value: Any) -> None:
        logging = sys.modules["logging"]
        if "disable" in value:
            logging.disable(value["disable"])
        for name, change in value.get("loggers", {}).items():
            logger = logging.getLogger(name) if name else logging.getLogger()
            if "level" in change:
                logger.setLevel(change["level"])
            if "propagate" in change:
                logger.propagate = change["propagate"]
            if "disabled" in change:
                logger.disabled = change["disabled"]
            for spec in change.get("remove", ()):
                for handler in list(logger.handlers):
                    if _matches(logging, handler, spec):
                        logger.removeHandler(handler)
                        handler.close()
                        break
            for spec in change.get("add", ()):
                if not any(_matches(logging, handler, spec) for handler in logger.handlers):  # re-imported first
                    logger.addHandler(_build(logging, spec))
