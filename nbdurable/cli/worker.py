"""Events and suspended runs from the command line: ``send`` and ``worker``."""

from __future__ import annotations

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
@click.option("--max-concurrent", type=AtLeast(1, integer=True), default=4, metavar="N",
              help="At most N runs started by this worker execute at once (default 4; at least 1).")
@click.option("--once", is_flag=True,
              help="One pass: fire the slots due now, resume the runs due now, start the runs waiting to start; "
                   "wait for them to end, then exit.")
@click.option("--poll", type=AtLeast(0.1), default=10.0, metavar="SECONDS",
              help="Seconds between passes, at least 0.1 (default 10).")
@click.option("--max-runs", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="Start (or resume) at most N runs, wait for them to end, then exit (at least 1).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              help="How decisions are logged to stderr: one readable line each (text, the default) or one JSON "
                   "object each (json: ts, event and the event's fields).")
@click.option("--run-logs", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Keep each started run's own output (stdout/stderr of its process) in DIR. Default: a temporary "
                   "directory; what a run prints that matters (notices, how it ended) is in the worker's log.")
@click.option("--queue", "queues", multiple=True, metavar="NAME",
              help="Start only queued runs of the queue NAME (`nbdurable submit --queue`; runs from schedules, "
                   "triggers and child runs are in the queue `default`). Repeatable. Default: every queue.")
@suspend_option
@on_change_option
def worker(store: str | None, max_concurrent: int, once: bool, poll: float, max_runs: int | None, log_format: str,
           run_logs: Path | None, queues: tuple[str, ...], suspend_after: float | None, on_change: str) -> None:
    """Run the engine that fires schedules, resumes suspended runs when due and starts claimed runs.

    Each pass claims the due slots of every schedule (`nbdurable schedule`), resumes the suspended runs that
    are due (a `nbd.sleep` whose time came, a `nbd.wait_for_event` whose event arrived or whose wait timed
    out) and starts the claimed runs in priority order. Every run executes in a process of its own (it keeps
    going if the worker is killed), at most --max-concurrent at once. Several workers on one store (on a
    shared store, on any machines) cooperate: a slot or a submitted run starts one run, a suspended run is
    resumed once, a cancelled run never, and a run whose process died mid-run (its lease expired) is
    resumed from its last committed cell by one of them. Logs each decision to stderr,
    one line each; Ctrl-C stops it (the runs it started go on)."""
    from nbdurable.headless.worker import Worker
    from nbdurable.headless.worker_log import format_line
    from nbdurable.store.queues import check_queue_name

    def log(event: str, **fields: Any) -> None:
        click.echo(format_line(event, fields, json_format=log_format == "json"), err=True)

    engine = Worker(open_store(store), log=log, max_concurrent=int(max_concurrent), suspend_after=suspend_after,
                    on_change=on_change, grace=max(60.0, 3 * poll), run_logs=str(run_logs) if run_logs else None,
                    queues=[check_queue_name(q) for q in queues] or None)
    try:
        engine.work(once=once, poll=poll, max_runs=int(max_runs) if max_runs is not None else None)
    except KeyboardInterrupt:
        pass
    finally:
        engine.close()
    log("worker_stopped", resumed=engine.resumed, started=engine.new_runs, running=engine.running)
