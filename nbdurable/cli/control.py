"""Steering runs from the command line: ``nbdurable cancel``."""

from __future__ import annotations

import sys
from typing import Any

import click

from nbdurable.cli.base import EXIT_FAILED, main, open_store, resolve_run, store_option


@main.command("cancel")
@click.argument("run_id")
@click.option("--reason", default=None, metavar="TEXT", help="Why (recorded with who and when; `show` says it).")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=30.0, show_default=True, metavar="SECONDS",
              help="How long to wait for a live run's process to end it (0: return once the request is recorded).")
@store_option
def cancel(run_id: str, reason: str | None, wait: float, store: str | None) -> None:
    """Cancel RUN_ID for good: `run` and the worker never resume it (`nbdurable resume RUN_ID --force` can).

    A running headless run stops at once: its kernel is interrupted, and killed if it has not stopped within
    the grace period (NBDURABLE_CANCEL_GRACE seconds, default 5: a cell stuck in native code); its
    `nbdurable run` exits with code 4. A suspended run, one waiting for an event, or a failed, interrupted or
    crashed one is cancelled where it stands. An interactive run ends at its next cell (or `%durable cancel`
    in its notebook). A run that a later run resumed is cancelled through that later run. The request is
    durable: a run whose process ends it later still ends cancelled.

    \b
    Exit codes: 0 cancelled (or already cancelled);
    1 the request is recorded but the live run did not end within --wait;
    2 unknown run id, or the run completed (nothing to cancel)."""
    from nbdurable.runtime.control import cancel_run

    opened = open_store(store)
    outcome = cancel_run(opened, resolve_run(opened, run_id), reason=reason, wait=wait)
    click.echo(outcome.describe())
    if outcome.status == "cancelled":  # undos no kernel ran (a suspended run, a killed kernel) run now
        compensate_report(opened, outcome.run_id, outcome.request)
    if outcome.status != "cancelled":
        click.echo("The request stands: the run ends cancelled when its process next checks (a headless run "
                   "within its grace period, an interactive one at its next cell).", err=True)
        sys.exit(EXIT_FAILED)


def compensate_report(store: Any, run_id: str, request: dict[str, Any]) -> None:
    """Run the compensations a run cancelled without a kernel still owes (``headless/compensate.py``) and
    say so; nothing when it owes none."""
    from nbdurable.headless.compensate import compensate_cancelled
    from nbdurable.runtime.compensation import pending
    from nbdurable.runtime.control import chain_head

    run_id = chain_head(store, run_id)  # a run that already ran some of them resumed it
    owed = len(pending(store, run_id))
    if not owed:
        return
    click.echo(f"nbdurable: run {run_id} owes {owed} compensation(s): running them in a new kernel …", err=True)
    result = compensate_cancelled(store, run_id, request)
    left = len(pending(store, chain_head(store, run_id)))
    done = "all ran" if not left else f"{left} still owed (`nbdurable cancel {run_id}` runs them again)"
    click.echo(f"nbdurable: compensations of run {run_id}: {done}"
               + (f" (run {result.run_id}, cancelled)" if result is not None and result.run_id else ""), err=True)
