"""Restore by dataflow: a cell is restored when a recorded execution of the same code read the same values.

Each executed cell records its *inputs* with its commit (``step_end.inputs``):

- ``reads``: every global it may read (``CellNames.reads``, plus the globals reached through notebook
  functions it calls) with the *version* of the value it read: the content key the capture already keeps
  for that variable (``NamespaceTracker``: never a new hash of an untouched object), ``""`` for a name that
  was not defined, ``"?"`` for one whose version the session did not know;
- ``ambient``: the version of each piece of interpreter state outside variables it could depend on (the
  configuration-like ones — warnings filters, rcParams, options, the environment, ``sys.path``, the working
  directory, logging — whenever they are not at their initial state; a random generator only when the cell
  drew from it, i.e. changed it);
- ``files``: the files it opened for reading (path, size, mtime), seen by an audit hook on ``open``;
- ``dynamic``: its reads cannot be known (``exec``, ``eval``, ``globals()``…): never restored.

A cell about to run is **restored** when, among the recorded executions the session may use (the
notebook's resume chain; with *reuse*, every completed run of the notebook), one has the same source hash
(and step name) and its recorded inputs equal the session's current versions — known from what was restored
or executed before it in this session — and its files are unchanged. Position does not matter. Anything
else executes, and ``Verdict.reason`` says why. Restoring an execution makes the versions of what it wrote
current (the recorded keys), exactly as executing it would have (the assumption: the same code reading the
same values writes the same values; nondeterministic cells are declared ``--always``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nbdurable.capture.namespace import ABSENT, UNKNOWN

if TYPE_CHECKING:  # replay.py builds the recorded executions this module matches
    from nbdurable.runtime.replay import PlannedStep

__all__ = ["ABSENT", "UNKNOWN", "DRAWN", "Inputs", "Verdict", "choose", "chain", "changed_file", "file_state"]
# Ambient state that only the cells drawing from it depend on (drawing changes it): a generator's state.
DRAWN = frozenset({"%random", "%numpy.random", "%torch.random"})


@dataclass(frozen=True)
class Inputs:
    """What one execution read (``step_end.inputs``)."""

    reads: Mapping[str, str] = field(default_factory=dict)
    ambient: Mapping[str, str] = field(default_factory=dict)
    files: tuple[tuple[str, int, int], ...] = ()
    dynamic: bool = False
    wrote: tuple[tuple[str, int, int], ...] = ()  # files it wrote, as it left them (checked for reuse only)

    def completed(self, files: Any, drawn: Any, wrote: Any = None) -> Inputs:
        """These inputs (as journaled when the step began) with what its end added: the files it read, and
        the generators it drew from (a generator is an input only of the cells that draw from it). A step
        restored from another carries its origin's completed inputs in its start record: nothing to add."""
        if files is None and drawn is None and wrote is None:
            return self
        drawn_names = {str(d) for d in drawn or ()}
        ambient = {k: v for k, v in self.ambient.items() if k not in DRAWN or k in drawn_names}
        return Inputs(self.reads, ambient, _states(files), self.dynamic, _states(wrote))

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"reads": dict(self.reads), "ambient": dict(self.ambient),
                                  "files": [list(f) for f in self.files]}
        if self.dynamic:
            record["dynamic"] = True
        if self.wrote:
            record["wrote"] = [list(f) for f in self.wrote]
        return record

    @classmethod
    def from_record(cls, record: Any) -> Inputs | None:
        """None for a record without inputs (written before this rule existed, or by a step that cannot say)."""
        if not isinstance(record, dict):
            return None
        try:
            return cls({str(k): str(v) for k, v in (record.get("reads") or {}).items()},
                       {str(k): str(v) for k, v in (record.get("ambient") or {}).items()},
                       _states(record.get("files")), bool(record.get("dynamic")), _states(record.get("wrote")))
        except (TypeError, ValueError, AttributeError):
            return None


def _states(files: Any) -> tuple[tuple[str, int, int], ...]:
    """Recorded file states ``[[path, size, mtime_ns], ...]`` as tuples (a damaged list counts as none)."""
    try:
        return tuple((str(p), int(s), int(m)) for p, s, m in files or ())
    except (TypeError, ValueError):
        return ()


def file_state(path: str) -> tuple[str, int, int] | None:
    """(path, size, mtime_ns) of a file now, or None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_size, st.st_mtime_ns


def changed_file(files: Iterable[tuple[str, int, int]]) -> str | None:
    """The first recorded file that is not as it was (changed, or gone), else None."""
    for recorded in files:
        if file_state(recorded[0]) != tuple(recorded):
            return recorded[0]
    return None


@dataclass(frozen=True)
class Verdict:
    """What Run All does with a cell: restore ``step``; re-execute it (``step`` and a ``reason``: it matched,
    but its state cannot be loaded); or execute (no ``step``), and why."""

    step: PlannedStep | None
    reason: str = ""

    @property
    def restores(self) -> bool:
        return self.step is not None and not self.reason


# Why a read does not match, from the name, its recorded version and its current one.
Describe = Callable[[str, str, str], str]


def describe_read(name: str, recorded: str, current: str) -> str:
    """The default wording of a read that does not match (callers add who changed it)."""
    if current == ABSENT:
        return f"it reads `{name}`, which is not defined now"
    if recorded == ABSENT:
        return f"it reads `{name}`, which was not defined when it ran"
    if current == UNKNOWN or recorded == UNKNOWN:
        return f"it reads `{name}`, whose value cannot be vouched for (not stored, or set outside a recorded cell)"
    return f"it reads `{name}`, which changed"


def choose(candidates: Sequence[PlannedStep], version: Callable[[str], str], ambient: Callable[[str], str], *,
           always: bool = False, describe: Describe = describe_read) -> Verdict:
    """The restore rule (module docstring) for one cell: the newest candidate whose inputs match the current
    versions is restored (or re-executed, if it cannot be loaded); otherwise the cell executes, with the
    reason the newest candidate gives."""
    if always:
        return Verdict(None, "it is marked %%durable --always")
    if not candidates:
        return Verdict(None, "new or edited: no recorded execution of this code")
    first: Verdict | None = None
    for planned in candidates:
        inputs = planned.inputs
        if inputs is None:
            reason = "it was recorded by an older nbdurable, without what it read"
        elif inputs.dynamic:
            reason = "what it reads cannot be known (exec, eval, globals(), %run, `!cmd {var}`)"
        else:
            reason = _mismatch(inputs, version, ambient, describe) or ""
            if not reason:
                changed = changed_file(inputs.files)
                written = changed_file(inputs.wrote) if planned.reused else None
                if changed is None and written is None:
                    return Verdict(planned, planned.execution_reason() or "")
                reason = (f"the file `{changed}` it read changed" if changed is not None else
                          f"it wrote `{written}`, which is not as it left it in run {planned.origin['run_id']}")
        first = first or Verdict(None, reason)
    assert first is not None
    return first


def _mismatch(inputs: Inputs, version: Callable[[str], str], ambient: Callable[[str], str],
              describe: Describe) -> str | None:
    for name, recorded in inputs.reads.items():
        current = version(name)
        if recorded == UNKNOWN or current != recorded:
            return describe(name, recorded, current)
    for name, recorded in inputs.ambient.items():
        if ambient(name) != recorded:
            return f"{name} is not as it was when the cell ran"
    return None


def chain(previous: str, key: str) -> str:
    """The version of a piece of interpreter state after a change keyed ``key``: what is recorded of it is
    often a difference (changed options, set environment variables), so its version is the chain of them."""
    return hashlib.blake2b(f"{previous}\0{key}".encode(), digest_size=12).hexdigest()


def ambient_inputs(current: Mapping[str, str]) -> dict[str, str]:
    """The ambient versions an execution may depend on, at its start: every piece of interpreter state that
    is not at its initial state (``Inputs.completed`` later keeps a generator only if the cell drew from it)."""
    return {name: v for name, v in current.items() if v}
