"""Durable child runs: ``nbd.run_notebook(path, params=None, wait=True)``.

In a durable cell the call is an explicit step (``runtime/steps.py``: its identity is its place in the cell;
a completed call returns its recorded result on resume). It *claims* a child run (``runtime/children.py``:
kind ``child``, a key made of the parent's root run, the call's identity and the attempt, a run id chosen
before the run exists, the origin ``{"parent_run", "parent_root", "parent_step", "attempt"}``); the call's
``step_start`` is journaled before the claim, so a parent killed anywhere and resumed finds the same claim
and never starts a second child. Then:

- **headless** (a runner with a suspend threshold): while the child has not ended, the parent suspends
  (``RunSuspended``, exit code 3, ``waiting_for={"child": run_id}``); the engine's dispatcher starts the
  claimed child, and the worker resumes the parent once the child ended (``headless/worker.py``'s
  ``why_due``); the resumed cell replays its steps up to this call, which now returns the child's result;
- **interactive** (or headless without suspension): the kernel starts the child itself (``Launcher``: its
  own process, forked from a warm forkserver; it holds the claim's lease) and waits with a live line.

The child sets its result with ``nbd.result(value)``. A child that ends failed, cancelled, crashed or
interrupted raises ``ChildRunFailed`` in the parent; under the call's ``retry`` policy each retry is a new
child (the attempt is part of the claim key). With ``wait=False`` the call claims (and, interactive, starts)
the child and returns a ``ChildRun`` handle at once: ``run_id``, ``status()``, ``result(timeout=None)``.

Fan-out: ``nbd.map(nbd.run_notebook, ["a.ipynb", "b.ipynb"])`` or ``nbd.map(functools.partial(
nbd.run_notebook, "child.ipynb"), [{"n": 1}, {"n": 2}])`` claims every child first (in item order), then
waits for all of them (headless: one suspension until all ended); results come back in item order, and the
first failed child's ``ChildRunFailed`` is raised once all ended (no retries in a fan-out).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.errors import ChildRunFailed, ChildRunTimeoutError, OptionsError, RunSuspended
from nbdurable.headless.dispatch import launch_spec
from nbdurable.headless.launch import EXIT_CLAIM_HELD, Launched, Launcher
from nbdurable.runtime.children import (
    CHILD_KIND,
    RUN_NOTEBOOK,
    ChildState,
    call_key,
    child_error,
    child_result,
    child_state,
    claim_key,
)
from nbdurable.runtime.clock import clock
from nbdurable.runtime.policy import NO_RETRY, RetryPolicy
from nbdurable.runtime.run import new_run_id
from nbdurable.runtime.session import ENV_ORIGIN, ENV_RUN_ID, current_step_context, default_store
from nbdurable.runtime.steps import Attempts
from nbdurable.store import Store

POLL_S = 0.1  # how often a waiting parent looks at its children
SHOW_EVERY = 1.0
_launcher = Launcher()  # this process's (the kernel's): started on the first child it starts itself
_launched: dict[str, Launched] = {}  # child run id -> its process, started from this process
_claims: dict[str, dict[str, Any]] = {}  # child run id -> its claim, once read


@dataclass(frozen=True)
class ChildRun:
    """A handle on a child run (``nbd.run_notebook(..., wait=False)``); recorded as the call's result."""

    run_id: str
    store: str
    notebook: str

    def status(self) -> str:
        """``pending`` (claimed, not started yet), ``running``, ``suspended``, ``completed``, ``failed``,
        ``cancelled``, ``crashed`` or ``interrupted`` (of the newest run of the child's resume chain)."""
        return child_state(Store.open(self.store), self.run_id).status

    def result(self, timeout: float | None = None) -> Any:
        """The child's result once it completed (``ChildRunFailed`` if it ended otherwise). Interactive: waits
        up to ``timeout`` seconds (None: as long as it takes), ``ChildRunTimeoutError`` after. In a headless
        durable cell a child that has not ended suspends the parent run instead of waiting."""
        return wait_children(Store.open(self.store), [self.run_id], timeout=timeout)[0]


def run_notebook(path: str | os.PathLike[str], params: dict[str, Any] | None = None, wait: bool = True, *,
                 retry: RetryPolicy | None = None) -> Any:
    """Run the notebook ``path`` (relative to this notebook's directory) as a durable child run of this run,
    in the same store, with ``params``; with ``wait``, return its result (``nbd.result``), else a ``ChildRun``.
    See the module docstring."""
    notebook, params = _check(path, params)
    policy = retry or NO_RETRY
    context = current_step_context()
    if context is None:  # outside a durable cell: a child run all the same, but nothing replays the call
        store = default_store()
        base = f"outside/{new_run_id()}/{secrets.token_hex(4)}"
        attempts = Attempts(policy)
        origin: dict[str, Any] = {}
    else:
        store = context.run.store
        slot = context.reserve(RUN_NOTEBOOK, (notebook, params), {"wait": wait})
        if slot.recorded is not None and slot.recorded.status != "waiting":
            return context.replay(slot)
        base = str((slot.recorded.options if slot.recorded else {}).get("child_key")
                   or call_key(context.run.root_run, context.run.run_id, context.cell.ordinal, slot.seq))
        handle = context.begin(slot, {"child_key": base, "notebook": notebook, "params": params, "wait": wait})
        context.run.wait_durable()  # the call's identity is on disk before its claim
        attempts = Attempts(policy, lambda n, s, e, d: context.run.record_attempt(handle, n, s, e, d),
                            lambda status, value: context.end(handle, status, value))
        origin = {"parent_run": context.run.run_id, "parent_root": context.run.root_run,
                  "parent_step": handle.ordinal}
    while True:
        attempts.start()
        run_id = claim_child(store, claim_key(base, attempts.attempt), notebook, params,
                             {**origin, "attempt": attempts.attempt})
        if context is None or context.suspend_after is None:
            start_child(store, run_id)
        if not wait:
            return attempts.succeeded(ChildRun(run_id, str(store.path), notebook))
        try:
            value = wait_children(store, [run_id])[0]
        except ChildRunFailed as exc:
            if exc.status == "cancelled":
                attempts.policy = NO_RETRY  # a cancelled child is not retried
            delay = attempts.failed(exc)
            if delay is None:
                raise
            if store.read_claim(CHILD_KIND, claim_key(base, attempts.attempt + 1)) is None:
                clock().sleep(delay)  # (a resume that finds the next attempt claimed does not wait again)
            continue
        except BaseException as exc:  # a suspension or an interrupt leaves the call open (a resume waits again)
            if not isinstance(exc, RunSuspended):
                attempts.policy = NO_RETRY  # anything else (the result unreadable...) fails the call
                attempts.failed(exc)
            raise
        return attempts.succeeded(value)


def _check(path: str | os.PathLike[str], params: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The child notebook's absolute path (relative to the parent notebook's directory) and its parameters."""
    if not isinstance(path, (str, os.PathLike)):
        raise OptionsError(f"run_notebook takes a notebook path, not {path!r}",
                           hint="e.g. nbd.run_notebook('child.ipynb')")
    if params is not None and not isinstance(params, dict):
        raise OptionsError(f"params must be a dict of parameter values, not {params!r}",
                           hint="e.g. nbd.run_notebook('child.ipynb', {'n': 3})")
    try:
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise OptionsError(f"the child's parameters must be JSON values ({exc})",
                           hint="pass strings, numbers, booleans, None, lists and dicts, as `nbdurable run -p` "
                           "would") from None
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = _parent_directory() / candidate
    if not candidate.is_file():
        raise OptionsError(f"no notebook {str(path)!r} (looked for {candidate})",
                           hint="give a path relative to this notebook's directory, or an absolute one")
    return str(candidate.resolve()), dict(params or {})


def _parent_directory() -> Path:
    context = current_step_context()
    notebook = context.run.notebook if context is not None else None
    if notebook and Path(notebook).is_absolute():
        return Path(notebook).parent
    return Path.cwd()


def claim_child(store: Store, key: str, notebook: str, params: dict[str, Any], origin: dict[str, Any]) -> str:
    """Claim the child run of ``key`` (or find the standing claim); its run id."""
    _, claim = store.claim(CHILD_KIND, key, {"run_id": new_run_id(), "notebook": notebook, "params": params,
                                             "origin": origin})
    return str(claim["run_id"])


def start_child(store: Store, run_id: str) -> None:
    """Start the claimed child ``run_id`` from this process unless it exists or another process is starting it."""
    before = _launched.get(run_id)
    if before is not None and (before.alive or before.exitcode != EXIT_CLAIM_HELD):
        return  # running, or ended (``_never_started`` says why if its run never began)
    claim = _claims.get(run_id) or next((c for c in store.claims(CHILD_KIND) if c.get("run_id") == run_id), None)
    if claim is None:
        return
    _claims[run_id] = claim
    if store.claim_state(claim) != "orphaned":
        return
    logs = store.path / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    _launched[run_id] = _launcher.start(launch_spec(store, claim, env=_child_env(), log_dir=str(logs)))


def _never_started(store: Store, run_id: str) -> ChildRunFailed | None:
    """The error of a child this process started whose process ended before its run existed (a notebook it
    could not read, a parameter it could not inject...), with the end of its log; None otherwise."""
    launched = _launched.get(run_id)
    if launched is None or launched.alive or launched.exitcode == EXIT_CLAIM_HELD or store.journal_exists(run_id):
        return None
    log = Path(launched.spec.log_path or "")
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
    return ChildRunFailed(f"child run {run_id} could not start (exit code {launched.exitcode})"
                          + (": " + " / ".join(tail) if tail else ""),
                          hint=f"see its log {log}; fix the child notebook, then run the cell again",
                          run_id=run_id, status="failed")


def _child_env() -> dict[str, str]:
    """What a child started from a kernel must not inherit: the kernel's own run's settings."""
    return {ENV_RUN_ID: "", ENV_ORIGIN: ""}  # (the runner sets the rest for the child's kernel)


def wait_children(store: Store, run_ids: list[str], *, timeout: float | None = None) -> list[Any]:
    """The results of the children ``run_ids`` once all ended (in order); the first failed one's
    ``ChildRunFailed``. A headless durable cell suspends instead of waiting; elsewhere this process starts
    children nobody is starting and waits, showing a live line."""
    context = current_step_context()
    suspend = context is not None and context.suspend_after is not None and not clock().skipping
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0.0
    while True:
        states = [child_state(store, run_id) for run_id in run_ids]
        pending = [s.run_id for s in states if not s.ended]
        if not pending:
            break
        if suspend:
            raise RunSuspended(waiting_for={"child": pending[0], "children": pending})
        for run_id in pending:
            start_child(store, run_id)
            if (error := _never_started(store, run_id)) is not None:
                raise error
        if deadline is not None and time.monotonic() >= deadline:
            raise ChildRunTimeoutError(f"child run {pending[0]} has not ended after {timeout:g} s",
                                       hint="wait longer (result(timeout=None) waits as long as it takes), or look "
                                       f"at it with `nbdurable show {pending[0]}`")
        if context is not None and context.show is not None and time.monotonic() - shown >= SHOW_EVERY:
            context.show(_waiting_line(states), False)
            shown = time.monotonic()
        time.sleep(POLL_S)
    if context is not None and context.show is not None and shown:
        context.show(_waiting_line(states), True)
    for state in states:
        if state.status != "completed":
            raise _failure(store, state)
    return [child_result(store, state) for state in states]


def _waiting_line(states: list[ChildState]) -> str:
    if len(states) == 1:
        s = states[0]
        verb = "ended" if s.ended else "waiting for"
        return f"{'✓' if s.ended else '⏳'} nbdurable: {verb} child run {s.current or s.run_id} ({s.status})"
    counts: dict[str, int] = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    done = all(s.ended for s in states)
    text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{'✓' if done else '⏳'} nbdurable: {len(states)} child runs: {text}"


def _failure(store: Store, state: ChildState) -> ChildRunFailed:
    which = state.current or state.run_id
    error = ChildRunFailed(f"child run {which} ended {state.status}: {child_error(store, state)}",
                           hint=f"see it with `nbdurable show {state.current or state.run_id}`; give run_notebook a "
                           "retry=nbd.RetryPolicy(...) to start a new child run when one fails",
                           run_id=state.run_id, status=state.status)
    return error


def fan_out(fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
    """``nbd.map`` over ``run_notebook`` (or a ``functools.partial`` of it): every child claimed (and,
    interactive, started) in item order before any is waited for; results in item order."""
    handles = [fn(item, wait=False) for item in items]
    if not handles:
        return []
    return wait_children(Store.open(handles[0].store), [h.run_id for h in handles])


run_notebook.nbdurable_fanout = fan_out  # type: ignore[attr-defined]  # how nbd.map recognizes it

__all__ = ["ChildRun", "claim_child", "fan_out", "run_notebook", "start_child", "wait_children"]
