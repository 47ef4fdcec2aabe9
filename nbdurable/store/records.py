"""The journal's record schema: the one place that says what a record holds.

A run's journal is a sequence of JSON records. The journal writer adds ``seq`` (1, 2, 3… per journal) and
``ts`` (unix seconds) to every record. The runtime builds records with the functions below; the catalog
ingests them. Record types:

``run``        first record of every journal: who runs what (a fork: ``forked_from``, ``forked_at_cell``).
``step_start`` a step (a cell, or later an explicit step) begins.
``step_end``   a step ends: its status, timings, state delta (``variables``), ``outputs`` and ``error``.
               This is the commit record; the journal is fdatasync'ed after it.
``run_end``    the run finished with a final status: ``completed``, ``failed``, ``suspended``,
               ``interrupted`` (stopped before its end, resumable) or ``cancelled`` (stopped for good on
               request, with ``cancel``: ``{"by", "reason", "requested_at"}``). Before ``interrupted``
               existed, a resumable stop was written ``cancelled`` without ``cancel``: ``run_end_status``
               reads such a record as ``interrupted``. A run ended (suspended, failed, crashed...) and then
               cancelled where it stands gets a second ``run_end``: the last one is its status.
``superseded`` a later run resumed this one (``by``): this run is no longer unfinished.
``attempt``    one attempt of an explicit step (or of a cell with a retry policy) ended (``error`` None
               when it succeeded).
``consumed``   a ``wait_for_event`` step took an event (``event``: its id): no later wait of this run
               (or of a run resuming it) returns that event again.
``time_skip``  from here on the run's times are those of a time-skipping clock (``runtime/clock.py``); a
               run that skipped from its start says so in its ``run`` record (``time_skipped``) instead.
               The ``ts`` the journal writer adds stays wall-clock time; the times in the records
               (``started_at``, ``ended_at``, ``wake_at``, ``timeout_at``) are the clock's.
``compensating`` the run began running the compensations of its completed steps (``reason``); each
               compensation is then an explicit step (``options.compensates``: the step it undoes).

An explicit step (``@nbd.step``) is a ``step_start`` with ``parent`` = its cell's ordinal and
``options`` = ``{"call": N, "seq": S, "args": "<hash>"}`` (its N-th call by that name, the S-th step
call of the cell, the hash of its arguments), and a ``step_end`` whose ``variables`` hold one reference
named ``result`` (or ``error``: the exception it finally raised).

Durable waits are explicit steps named ``nbd.sleep`` and ``nbd.wait_for_event`` whose ``options`` also
hold ``wake_at`` (unix seconds) or ``event``/``match``/``timeout_at``, written *before* the wait, so a
run resuming after a crash (or after suspending) waits only for the time that remains. A cell cut short
by a suspension ends with status ``suspended`` and no variables (it runs again on resume, its completed
step calls replayed); its run ends with ``run_end`` status ``suspended`` plus ``wake_at`` or
``waiting_for`` (``{"name", "match", "timeout_at", "after"}``).

A variable reference (``VarRef``) in ``step_end.variables``::

    {"name": "df", "op": "set" | "del",
     "object": "<32 hex: xxh3-128 content key>" | None,   # None for del; no file for module/unrestorable
     "tag": "<64 hex: HMAC-SHA256 of the object file>",   # for an object file: checked before loading
     "format": "pickle" | "ndarray" | "parquet" | "module" | "unrestorable" | None,
     "format_version": 1,
     "type": "pandas.core.frame.DataFrame", "size": 1234,
     "instance": "<run>:<seq>:<n>",     # identity group: refs with the same instance restore as one object
     "inline": "<base64>" | None,       # small objects live in the record itself, not in a file
     "module": "numpy" | None,          # for format "module"
     "origin": "/path/to/mod.py",      # optional, format "module": the file it was imported from
     "reason": "..." | None,            # for format "unrestorable"
     "inert": true,                     # optional: nothing to restore or rebuild (a closed file)
     "refs": [[instance, key], ...],    # optional, a pickle holding (or an array viewing) other variables'
                                        # objects: pickled as references to them, resolved on restore
     "member": "fig",                   # optional: variables reaching each other (a figure and its axes) are
                                        # one pickle {name: obj}; each record names its own member
     "pieces": {...},                   # optional, a big array/pickle written whole: its buffers' piece hashes
     "delta": {"base": {"object", "tag", "format", "piece", "buffers"},   # optional: stored as a delta
               "patch": {"object", "tag", "size"}, "head": [at, len], "piece": N,
               "buffers": [[offset in base, length, [[piece index, at in patch], ...]], ...]},
     "frame": {"labels": [...], "labels_dtype": "str", "labels_name": None, "rows": N,   # optional: a big
               "range": [start, stop, step, name] | absent, "index": [key, tag] | None,  # DataFrame stored
               "columns": [[label, key, tag], ...]}}                                      # column by column

A delta (``runtime/deltas.py``) has no file of its own under ``object`` (the content key): its head and
changed pieces are in the ``patch`` file, the rest in the ``base`` file (a whole version of the variable).
A frame stored by column (``runtime/frames.py``) has none either: each column (and a non-range index) is a
Parquet object of its own, keyed by its data, shared by every version and variable that holds it.

An output (``step_end.outputs``) is an nbformat v4 output dict (``stream``, ``display_data``,
``execute_result``, ``error``) as the frontend showed it (``runtime/output_fold.py``; a display keeps its
``transient.display_id``), an ``update_display_data`` entry for a display of an *earlier* cell that this cell
updated (applied to it on restore), or ``{"output_type": "object", "object": key}`` for a large one stored as
an object file (with its ``tag``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

JOURNAL_FORMAT = 1

STEP_STATUSES = ("completed", "failed", "interrupted", "restored", "suspended")
RUN_STATUSES = ("running", "completed", "failed", "suspended", "interrupted", "cancelled", "crashed")
FINAL_RUN_STATUSES = ("completed", "failed", "suspended", "interrupted", "cancelled")

StepStatus = Literal["completed", "failed", "interrupted", "restored", "suspended"]


class VarRef(TypedDict, total=False):
    name: str
    op: Literal["set", "del"]
    object: str | None
    format: str | None
    format_version: int
    type: str | None
    size: int
    tag: str
    instance: str | None
    inline: str | None
    module: str | None
    origin: str
    reason: str | None
    inert: bool
    pieces: dict[str, Any]
    delta: dict[str, Any]
    refs: list[list[str]]
    member: str


def part_objects(ref: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """The object files a reference stored in parts needs: (key, tag, role), for a delta its base and patch
    files, for a frame stored by column each column's file and its index's."""
    found: list[tuple[str, str | None, str]] = []
    delta, frame = ref.get("delta"), ref.get("frame")
    if isinstance(delta, dict):
        for role in ("base", "patch"):
            entry = delta.get(role)
            if isinstance(entry, dict) and isinstance(entry.get("object"), str):
                tag = entry.get("tag")
                found.append((entry["object"], tag if isinstance(tag, str) else None, f"{role} of its delta"))
    if isinstance(frame, dict):
        parts = [(f"column {c[0]!r}", c[1:]) for c in frame.get("columns") or [] if isinstance(c, list) and len(c) == 3]
        if isinstance(frame.get("index"), list):
            parts.append(("its index", frame["index"]))
        for role, entry in parts:
            if len(entry) == 2 and isinstance(entry[0], str):
                found.append((entry[0], entry[1] if isinstance(entry[1], str) else None, role))
    return found


def run_record(
    run_id: str,
    *,
    notebook: str | None,
    notebook_path: str | None,
    kind: Literal["interactive", "headless"],
    params: dict[str, Any] | None = None,
    output_path: str | None = None,
    resumed_from: str | None = None,
    root_run: str | None = None,
    environment: dict[str, Any] | None = None,
    time_skipped: bool = False,
    forked_from: str | None = None,
    forked_at_cell: int | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The first record of a run's journal (``time_skipped``: its times are a time-skipping clock's). A fork
    (``%durable checkout``, ``nbdurable fork``/``rerun``) names the run it started from (``forked_from``) and
    the cell of that run whose state it took (``forked_at_cell``: the state after that cell; 0 = before the
    first). A fork is not a resume: it never supersedes its origin. ``origin``: what started the run when
    not a person (a JSON object: ``schedule`` and ``slot``, ``trigger`` and ``event``, ``parent_run`` and
    ``parent_step``, ``claim``...); a run resuming it carries the same origin."""
    record = {
        "t": "run",
        "format": JOURNAL_FORMAT,
        "run_id": run_id,
        "notebook": notebook,
        "notebook_path": notebook_path,
        "kind": kind,
        "params": params or {},
        "output_path": output_path,
        "resumed_from": resumed_from,
        "root_run": root_run or run_id,
        "environment": environment or {},
    }
    if time_skipped:
        record["time_skipped"] = True
    if forked_from is not None:
        record.update(forked_from=forked_from, forked_at_cell=forked_at_cell)
    if origin:
        record["origin"] = origin
    return record


def step_start_record(
    ordinal: int,
    *,
    source: str,
    source_hash: str,
    name: str | None = None,
    options: dict[str, Any] | None = None,
    parent: int | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A step begins. ``parent`` is the ordinal of the enclosing cell step for explicit steps; ``inputs``
    what a cell read as it began (``runtime/dataflow.py``; a restored step carries its origin's)."""
    record = {
        "t": "step_start",
        "ordinal": ordinal,
        "name": name,
        "source": source,
        "source_hash": source_hash,
        "options": options or {},
        "parent": parent,
    }
    if inputs is not None:
        record["inputs"] = inputs
    return record


def step_end_record(
    ordinal: int,
    *,
    status: StepStatus,
    started_at: float,
    ended_at: float,
    duration: float,
    variables: list[VarRef],
    outputs: list[dict[str, Any]],
    error: dict[str, Any] | None = None,
    restored_from: dict[str, Any] | None = None,
    read: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A step's commit record. For a restored step, ``duration`` is the original execution time
    (the time saved is ``duration`` minus the restore time ``ended_at - started_at``). ``read``: what an
    executed cell was seen to read while it ran (``files``, the generators it ``drawn`` from)."""
    return {
        **(read or {}),
        "t": "step_end",
        "ordinal": ordinal,
        "status": status,
        "started_at": started_at,
        "ended_at": ended_at,
        "duration": duration,
        "variables": variables,
        "outputs": outputs,
        "error": error,
        "restored_from": restored_from,
    }


def error_with_traceback(error: dict[str, Any] | None, outputs: list[Any] | None) -> dict[str, Any] | None:
    """A step's ``error`` with the traceback of its last error output when the error itself has none
    (``step_end.error`` keeps name and value; the formatted traceback is in the step's outputs)."""
    if not error or error.get("traceback"):
        return error
    shown = next((o for o in reversed(outputs or []) if isinstance(o, dict) and o.get("output_type") == "error"), None)
    return {**error, "traceback": shown.get("traceback")} if shown else error


def run_end_record(status: str, *, wake_at: float | None = None, waiting_for: dict[str, Any] | None = None,
                   cancel: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's final record; a suspended run says what it waits for (a time, an event), a cancelled one
    who cancelled it, when and why (``cancel``, always present: its presence tells it from an old record)."""
    if status not in FINAL_RUN_STATUSES:
        raise ValueError(f"not a final run status: {status!r}")
    record: dict[str, Any] = {"t": "run_end", "status": status}
    if status == "suspended":
        record.update(wake_at=wake_at, waiting_for=waiting_for)
    if status == "cancelled":
        info = cancel or {}
        record["cancel"] = {key: info.get(key) for key in CANCEL_KEYS}
    return record


CANCEL_KEYS = ("by", "reason", "requested_at")


def run_end_status(record: dict[str, Any]) -> str:
    """The status a ``run_end`` record says, journals written before ``interrupted`` existed included:
    their ``cancelled`` (no ``cancel`` key) meant stopped before its end, resumable: ``interrupted``."""
    status = str(record.get("status"))
    return "interrupted" if status == "cancelled" and "cancel" not in record else status


def superseded_record(by: str) -> dict[str, Any]:
    """Appended to a finished-but-unfinished run's journal when a later run resumes it."""
    return {"t": "superseded", "by": by}


def consumed_record(ordinal: int, event_id: str, name: str) -> dict[str, Any]:
    """A wait step (``ordinal``) took the event ``event_id``."""
    return {"t": "consumed", "ordinal": ordinal, "event": event_id, "name": name}


def attempt_record(ordinal: int, attempt: int, *, started_at: float, ended_at: float,
                   error: dict[str, Any] | None, next_delay: float | None) -> dict[str, Any]:
    """One attempt of an explicit step; ``next_delay`` is the wait before the next one, if any."""
    return {"t": "attempt", "ordinal": ordinal, "attempt": attempt, "started_at": started_at,
            "ended_at": ended_at, "error": error, "next_delay": next_delay}


def time_skip_record() -> dict[str, Any]:
    """The run's clock skips time from here on (its times are virtual)."""
    return {"t": "time_skip"}


def compensating_record(reason: str) -> dict[str, Any]:
    """The run begins running the compensations of its completed steps, because of ``reason``."""
    return {"t": "compensating", "reason": reason}
