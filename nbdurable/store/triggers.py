"""Event triggers' definitions: ``triggers/<name>.trigger``, one authenticated line each, replaced atomically.

A definition is a JSON object (``headless/triggers.py`` builds it: the event, the match, the notebook, the
parameters, the flow control, when it was created and its pauses). ``add_trigger`` links the file into
place, so of two processes adding the same name exactly one succeeds; ``update_trigger`` (pause, resume)
writes a new file and renames it over the old one; a reader sees the old definition or the new one, never a
mix. A file that fails its tag (edited by hand, damaged, another user's key) is never used.
``triggers/<name>.cursor`` remembers how far the trigger pass got (a shortcut for a restarted worker).

Decisions that start no run (an event dropped by a rate limit, a duplicate of an idempotency key, a rate
token taken) are recorded as claims too (``record_decision``): first stands, and durable before they are
acted on; their *started* marker is written before the claim itself, so they never enter the engine's queue
(``open_claims``).
"""

from __future__ import annotations

import os
import pathlib
import re
import time
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import OptionsError
from .journal import encode_line, fsync_dir, io_error, read_signed_file

TRIGGERS_DIR = "triggers"
TRIGGER_SUFFIX = ".trigger"
CURSOR_SUFFIX = ".cursor"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_trigger_name(name: str) -> str:
    """``name`` if it can name a trigger, else OptionsError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise OptionsError(f"not a trigger name: {name!r}",
                           hint="use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
                           "(e.g. 'new-order')")
    return name


class TriggerLookup:
    """``trigger(name)`` over a store's ``read_trigger`` and ``triggers`` (a directory's or a shared store's)."""

    if TYPE_CHECKING:
        def read_trigger(self, name: str) -> dict[str, Any] | None: ...
        def triggers(self) -> list[dict[str, Any]]: ...

    def trigger(self, name: str) -> dict[str, Any]:
        """The trigger ``name``; OptionsError naming the known ones if there is none."""
        found = self.read_trigger(name)
        if found is None:
            known = ", ".join(t["name"] for t in self.triggers()) or "none"
            raise OptionsError(f"no trigger named {name!r} (triggers: {known})",
                               hint="`nbdurable trigger list` shows them; `nbdurable trigger add` makes one")
        return found


class TriggersMixin(TriggerLookup):
    """The triggers half of ``Store``."""

    path: pathlib.Path

    if TYPE_CHECKING:
        def _claim_path(self, kind: str, key: str, suffix: str = ...) -> pathlib.Path: ...  # ClaimsMixin
        def claim(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]: ...

    def _trigger_path(self, name: str) -> pathlib.Path:
        return self.path / TRIGGERS_DIR / (check_trigger_name(name) + TRIGGER_SUFFIX)

    def _write_trigger(self, definition: dict[str, Any], *, replace: bool) -> None:
        final = self._trigger_path(str(definition.get("name")))
        tmp = self.path / "tmp" / f"trigger-{final.stem}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(encode_line(definition))
                f.flush()
                os.fsync(f.fileno())
            if replace:
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)  # never replaces: of two adds of one name, one stands
                except FileExistsError:
                    raise OptionsError(f"a trigger named {definition['name']!r} exists already",
                                       hint=f"pick another name, or `nbdurable trigger delete {definition['name']}` "
                                       "first") from None
                finally:
                    os.unlink(tmp)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise io_error(exc, f"writing the trigger {definition.get('name')!r}", final) from exc

    def add_trigger(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Store a new trigger (``definition["name"]`` must be free: OptionsError otherwise)."""
        self._write_trigger(definition, replace=False)
        return definition

    def update_trigger(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Replace an existing trigger's definition atomically (OptionsError if there is none)."""
        self.trigger(str(definition.get("name")))
        self._write_trigger(definition, replace=True)
        return definition

    def read_trigger(self, name: str) -> dict[str, Any] | None:
        """The trigger ``name``, or None (none, or a file that fails its tag)."""
        return _read(self._trigger_path(name))

    def triggers(self) -> list[dict[str, Any]]:
        """Every trigger, by name. A file that fails its tag is skipped with a warning."""
        directory = self.path / TRIGGERS_DIR
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(TRIGGER_SUFFIX))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            definition = _read(directory / name)
            if definition is None:
                warnings.warn(f"nbdurable: ignoring the trigger file {TRIGGERS_DIR}/{name}: it fails its "
                              "authentication tag or does not parse (add the trigger again)", stacklevel=2)
            else:
                found.append(definition)
        return found

    def delete_trigger(self, name: str) -> None:
        """Delete the trigger ``name`` (OptionsError if there is none). Runs it already claimed still start."""
        self.trigger(name)
        path = self._trigger_path(name)
        try:
            path.unlink()
            path.with_suffix(CURSOR_SUFFIX).unlink(missing_ok=True)
            fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise io_error(exc, f"deleting the trigger {name!r}", path) from exc

    def read_trigger_cursor(self, name: str) -> dict[str, Any] | None:
        """Where a trigger pass got to (``write_trigger_cursor``), or None."""
        return _read(self._trigger_path(name).with_suffix(CURSOR_SUFFIX))

    def write_trigger_cursor(self, name: str, cursor: dict[str, Any]) -> None:
        """Remember where a trigger pass got to (``{"name", "incarnation", "after"}``): every event sent before
        ``after`` is decided, so a restarted pass need not read them again. Only a shortcut: not fsync'ed (a
        lost cursor means reading more events again, never deciding one twice: claims do that)."""
        final = self._trigger_path(name).with_suffix(CURSOR_SUFFIX)
        tmp = self.path / "tmp" / f"cursor-{final.stem}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            tmp.write_bytes(encode_line({**cursor, "name": name}))
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise io_error(exc, f"writing the cursor of trigger {name!r}", final) from exc

    def record_decision(self, kind: str, key: str, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """A claim that starts no run (``kind`` e.g. ``dropped``, ``rate``): first stands, as ``claim``; marked
        started before it exists, so the engine never queues it."""
        marker = self._claim_path(kind, key, ".started")
        marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        marker.touch(mode=0o600)
        self._claim_path(kind, key, ".finished").touch(mode=0o600)  # nor checks it for a run that died
        return self.claim(kind, key, record)


def _read(path: pathlib.Path) -> dict[str, Any] | None:
    definition = read_signed_file(path)
    if definition is None or definition.get("name") != path.name[: -len(path.suffix)]:
        return None
    return definition


__all__ = ["TRIGGERS_DIR", "TriggersMixin", "check_trigger_name"]
