"""What a cell reads, for the restore rule of ``runtime/dataflow.py``, kept for one shell.

- **Versions.** A variable's version is its content key as the tracker recorded it (``NamespaceTracker
  .version``: never a new hash); a piece of interpreter state's version is the chain of the changes recorded
  for it (``dataflow.chain``), kept here and advanced by every executed or restored cell.
- **Reads** of an executing cell, taken as it begins: the globals its code may read before assigning them
  (``CellNames.reads``) and the globals reached through the notebook functions and classes it names, each
  with its version; the interpreter state that is not at its initial state; and whether what it reads
  cannot be known (``exec``, ``eval``, ``globals()``…).
- **Files** it opened for writing, with their state when it ended: an execution reused from another
  completed run (``--reuse``) is restored only if they are still as it left it (a clean run would write
  them again: a file emptied then appended to by later cells must not keep the other run's lines).
- **Files** it opened for reading while it ran, seen by an audit hook on ``open`` (``io.open``, ``open``,
  ``os.open``, ``io.open_code``), with their size and modification time when the cell ended. It cannot see
  reads that do not go through Python's ``open``: native readers (C/C++ libraries opening paths themselves:
  some HDF5, Parquet or image readers), memory maps of already open files, subprocesses, network storage.
  Files under the Python installation, site-packages, ``__pycache__``, ``/proc``, ``/sys``, ``/dev`` and the
  store are not inputs. At most ``MAX_FILES`` files are kept per cell.
"""

from __future__ import annotations

import builtins
import os
import site
import sys
from collections.abc import Sequence
from typing import Any

from nbdurable.capture.names import CellNames, reachable_globals
from nbdurable.capture.namespace import UNKNOWN, Change, NamespaceTracker
from nbdurable.runtime.dataflow import DRAWN, Inputs, ambient_inputs, chain, describe_read, file_state
from nbdurable.runtime.replay import PlannedStep

MAX_FILES = 10_000
_ACCESS = os.O_RDONLY | os.O_WRONLY | os.O_RDWR


class _OpenedFiles:
    """The process's audit hook (one per process: audit hooks cannot be removed), collecting the paths
    opened for reading while a cell runs (``collecting`` is a set) and doing nothing otherwise."""

    def __init__(self) -> None:
        self.collecting: set[str] | None = None
        self.writing: set[str] = set()  # opened for writing meanwhile (a reused execution must find them as left)
        self.ignored: tuple[str, ...] = ()
        self._installed = False

    def install(self, store_paths: Sequence[str]) -> None:
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # nbdurable's own modules
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages(),
                 *(os.path.abspath(p) for p in store_paths), package}
        self.ignored = tuple(sorted({os.path.join(os.path.realpath(r), "") for r in roots if r}
                                    | {"/proc/", "/sys/", "/dev/"}))
        if not self._installed:
            sys.addaudithook(self._hook)
            self._installed = True

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or self.collecting is None:
            return
        try:
            path, mode, flags = args
            if isinstance(path, int) or path is None:
                return  # an already open descriptor
            if mode is None:  # os.open: the flags say how
                reads, writes = flags & _ACCESS != os.O_WRONLY, flags & _ACCESS != os.O_RDONLY
            else:
                writes = any(c in mode for c in "wax+")
                reads = "r" in mode or "+" in mode
            text = os.path.abspath(os.fsdecode(path))
            if text.startswith(self.ignored) or "__pycache__" in text or len(self.collecting) >= MAX_FILES:
                return
            if reads:
                self.collecting.add(text)
            if writes:
                self.writing.add(text)
        except Exception:  # an audit hook must never break the code it watches
            return


_OPENED = _OpenedFiles()


class CellInputs:
    """The versions one shell knows, and the reads of its executing cells."""

    def __init__(self, tracker: NamespaceTracker, store_paths: Sequence[str]) -> None:
        """``store_paths``: the local directories the store writes (its own files are no cell's inputs)."""
        self.tracker = tracker
        self.ambient: dict[str, str] = {}  # pseudo-variable -> version ("" or absent: initial)
        self.writers: dict[str, str] = {}  # name -> the cell that last changed it (for the reasons shown)
        _OPENED.install(store_paths)

    def reset(self) -> None:
        self.ambient.clear()
        self.writers.clear()

    # ----- versions -----------------------------------------------------------------------------

    def version(self, name: str) -> str:
        return self.tracker.version(name)

    def ambient_version(self, name: str) -> str:
        return self.ambient.get(name, "")

    def describe(self, name: str, recorded: str, current: str) -> str:
        """Why a read does not match, naming the cell that changed it when this session knows it."""
        text = describe_read(name, recorded, current)
        writer = self.writers.get(name)
        if writer and current == UNKNOWN and name in self.tracker.bindings:
            return f"it reads `{name}`, which could not be stored and was rebuilt ({writer})"
        return f"{text} ({writer})" if writer and text.endswith("changed") else text

    def executed(self, changes: list[Change], label: str) -> None:
        """An executed cell's delta is committed: what it changed has the versions the tracker now holds."""
        for change in changes:
            self.writers[change.name] = f"changed by {label}"
            if change.name.startswith("%") and change.serialized is not None:
                self.ambient[change.name] = chain(self.ambient.get(change.name, ""), change.serialized.key)

    def restored(self, planned: PlannedStep, label: str) -> None:
        """A recorded execution was applied: its interpreter-state changes advance their versions."""
        for ref in planned.variables:
            name = ref["name"]
            self.writers[name] = f"restored by {label}"
            if name.startswith("%") and ref.get("op") == "set":
                self.ambient[name] = chain(self.ambient.get(name, ""), str(ref.get("object")))

    # ----- an executing cell ------------------------------------------------------------------------

    def begin(self, names: CellNames) -> Inputs:
        """What the cell about to run reads, as it begins; starts collecting the files it opens."""
        ns = self.tracker.namespace
        wanted = set(names.reads) | reachable_globals(names.reads, ns)
        reads = {}
        for name in sorted(wanted):
            if self.tracker.ignored(name) or (name not in ns and hasattr(builtins, name)):
                continue
            reads[name] = self.tracker.version(name)
        _OPENED.collecting, _OPENED.writing = set(), set()
        return Inputs(reads, ambient_inputs(self.ambient), (), names.dynamic_reads)

    def end(self, changes: list[Change]) -> dict[str, Any]:
        """The cell ended: the files it opened for reading (as they are now) and the generators it drew
        from (``step_end`` fields; see ``Inputs.completed``)."""
        opened, _OPENED.collecting = _OPENED.collecting or set(), None
        written, _OPENED.writing = _OPENED.writing, set()
        files = [list(state) for state in map(file_state, sorted(opened)) if state is not None]
        wrote = [list(state) for state in map(file_state, sorted(written)) if state is not None]
        drawn = sorted(c.name for c in changes if c.name in DRAWN)
        return {"files": files, "drawn": drawn, "wrote": wrote}

    @staticmethod
    def abandon() -> None:
        """The cell's reads will not be recorded (its step could not begin)."""
        _OPENED.collecting = None
