"""Events and suspended runs from the command line: ``send`` and ``worker``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from nbdurable.cli.base import AtLeast, main, open_store, store_option
from nbdurable.cli.run import on_change_option, suspend_option
from nbdurable.errors import OptionsError


@main.command("send")
@click.argument("name")
@click.option("--data", default=None, metavar="JSON", help="The event's data, as JSON (e.g. '{\"week\": 47}').")
@click.option("--data-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the event's data from this JSON file.")
@store_option
def send(name: str, data: str | None, data_file: Path | None, store: str | None) -> None:
    """Send the event NAME to the runs of the store waiting on it (`nbd.wait_for_event`).

    The event is durable once this returns; a suspended run waiting on it is resumed by
    `nbdurable worker`. Prints the event id."""
    if data is not None and data_file is not None:
        raise OptionsError("give --data or --data-file, not both",
                           hint="nbdurable send report.approved --data '{\"week\": 47}'")
    try:
        text = data_file.read_text(encoding="utf-8") if data_file is not None else data
    except UnicodeDecodeError as exc:
        raise OptionsError(f"--data-file {data_file} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                           hint="JSON files are UTF-8: save it as UTF-8, or pass the data with --data") from None
    payload: Any = None
    if text is not None:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionsError(f"the event data is not JSON: {exc}",
                               hint="quote it for the shell: --data '{\"week\": 47}'") from None
        except RecursionError:  # the parser recurses once per level of [ or {
            raise OptionsError("the event data is nested too deeply to be read as JSON",
                               hint="send flatter data: an event's data is a small document, "
                                    "e.g. {\"week\": 47}") from None
    event = open_store(store, create=True).send_event(name, payload)
    click.echo(event["id"])


@main.command("worker")
@store_option
@click.option("--once", is_flag=True, help="One pass: resume the runs due now, then exit.")
@click.option("--poll", type=AtLeast(0.1), default=10.0, metavar="SECONDS",
              help="Seconds between passes, at least 0.1 (default 10).")
@click.option("--max-runs", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="Exit after resuming N runs (at least 1).")
@suspend_option
@on_change_option
def worker(store: str | None, once: bool, poll: float, max_runs: int | None, suspend_after: float | None,
           on_change: str) -> None:
    """Resume suspended runs when they are due: a `nbd.sleep` whose time came, a `nbd.wait_for_event`
    whose event arrived or whose wait timed out. Runs them one at a time, like `nbdurable resume`; two
    workers on one store never resume the same run; a cancelled run is never resumed. Logs what it does to
    stderr (per run: cells changed under it, and what --on-change decided); Ctrl-C stops it."""
    from nbdurable.headless.worker import Worker

    def log(message: str) -> None:
        click.echo(f"{dt.datetime.now().isoformat(sep=' ', timespec='seconds')} {message}", err=True)

    runner = Worker(open_store(store), log=log, suspend_after=suspend_after, on_change=on_change)
    try:
        count = runner.work(once=once, poll=poll, max_runs=max_runs)
    except KeyboardInterrupt:
        count = runner.resumed
    log(f"worker stopped: resumed {count} run(s)")
