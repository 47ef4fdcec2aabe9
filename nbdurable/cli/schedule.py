"""``nbdurable schedule add|list|pause|resume|delete|backfill``: notebooks run on a cron or an interval by
``nbdurable worker`` (definitions in the store, ``store/schedules.py``; slots in ``runtime/schedules.py``)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from nbdurable.cli import tables
from nbdurable.cli.base import AtLeast, main, open_store, store_option
from nbdurable.errors import OptionsError
from nbdurable.runtime.schedules import CATCHUP_POLICIES, MAX_SLOTS, Timing, format_interval, parse_time, slots


@main.group("schedule")
def schedule() -> None:
    """Run a notebook on a schedule: `schedule add`, `list`, `pause`, `resume`, `delete`, `backfill`.

    `nbdurable worker` fires the schedules of its store: each slot starts exactly one run (across worker
    crashes and several workers), with the slot's time as the parameter `scheduled_at`."""


@schedule.command("add")
@click.argument("name")
@click.argument("notebook", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cron", default=None, metavar="EXPR", help="A five-field cron expression, e.g. '0 6 * * 1-5'.")
@click.option("--tz", default=None, metavar="ZONE",
              help="The cron's time zone (an IANA name such as Europe/Paris; default UTC). Slots follow its "
                   "daylight-saving changes.")
@click.option("--every", default=None, metavar="DURATION",
              help="Instead of --cron: fire every DURATION (15m, 1h, 1d, at least 1s), aligned on the Unix epoch "
                   "(1h fires on the hour, UTC).")
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter of every run, typed as papermill types it. Repeatable.")
@click.option("--catchup", type=click.Choice(CATCHUP_POLICIES), default="all",
              help="Slots missed while no worker ran (older than the grace period): all run (default), only "
                   "the latest runs, or none run.")
@click.option("--concurrency", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="At most N runs of this schedule execute at once (a slot waits for a free one); default no limit.")
@click.option("--output-dir", default=None, metavar="DIR",
              help="Write each run's output notebook to DIR/NAME-<slot>.ipynb.")
@click.option("--priority", type=int, default=0, metavar="P",
              help="Runs with a higher priority start first when the worker is at --max-concurrent (default 0).")
@store_option
def add(name: str, notebook: Path, cron: str | None, tz: str | None, every: str | None,
        parameters: tuple[tuple[str, str], ...], catchup: str, concurrency: int | None, output_dir: str | None,
        priority: int, store: str | None) -> None:
    """Add the schedule NAME: run NOTEBOOK on a cron (--cron EXPR [--tz ZONE]) or an interval (--every DURATION).

    Each run gets the schedule's parameters and `scheduled_at`, the slot's time in ISO 8601 with its offset.
    Slots count from now: earlier ones run only by `schedule backfill`."""
    from nbdurable.headless.params import load_parameters
    from nbdurable.headless.scheduler import make_schedule
    from nbdurable.runtime.policy import parse_duration

    seconds = parse_duration(every) if every is not None else None
    definition = make_schedule(name, notebook, cron=cron, tz=tz, every=seconds, params=load_parameters(parameters, ()),
                               catchup=catchup, concurrency=int(concurrency) if concurrency else None,
                               output_dir=output_dir, priority=priority)
    open_store(store, create=True).add_schedule(definition)
    click.echo(f"schedule {name}: {Timing.of(definition).describe()}, runs {tables.notebook(definition['notebook'])}"
               f"; `nbdurable worker` fires it")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per schedule instead of the table.")
@store_option
def list_schedules(as_json: bool, store: str | None) -> None:
    """List the schedules: timing, next fire time, paused or active, the last run's status."""
    from nbdurable.headless.scheduler import next_fire
    from nbdurable.runtime.clock import clock

    opened = open_store(store)
    definitions = opened.schedules()
    last = _last_runs(opened) if definitions else {}
    now = clock().now()
    rows = []
    for d in definitions:
        fire = next_fire(opened, d, now)
        rows.append({"name": d["name"], "when": Timing.of(d).describe(), "notebook": d["notebook"],
                     "next": _local(fire), "paused": bool(d.get("paused")), "catchup": d.get("catchup"),
                     "concurrency": d.get("concurrency"), "params": d.get("params") or {}, **last.get(d["name"], {})})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    if not rows:
        click.echo("no schedules (`nbdurable schedule add NAME NOTEBOOK --cron EXPR` adds one)")
        return
    header = ("NAME", "WHEN", "NEXT", "STATE", "CATCHUP", "LIMIT", "LAST RUN", "NOTEBOOK")
    table = [header] + [(r["name"], r["when"], r["next"] if not r["paused"] else "-", "paused" if r["paused"]
                         else "active", str(r["catchup"]), str(r["concurrency"] or "-"),
                         f"{r['last_status']} {r['last_started']}" if r.get("last_status") else "-",
                         tables.notebook(r["notebook"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _last_runs(opened: Any) -> dict[str, dict[str, Any]]:
    """Each schedule's newest run: its status and start."""
    frame = opened.catalog().query(
        "SELECT schedule, status, started_at FROM runs WHERE schedule IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY schedule ORDER BY started_at DESC, run_id DESC) = 1")
    return {str(r["schedule"]): {"last_status": r["status"], "last_started": tables.when(r["started_at"])}
            for r in frame.to_dict("records")}


def _local(when: float | None) -> str:
    if when is None:
        return "-"
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@schedule.command("pause")
@click.argument("name")
@store_option
def pause(name: str, store: str | None) -> None:
    """Pause the schedule NAME: no slot fires until `schedule resume` (runs already started go on)."""
    from nbdurable.headless.scheduler import pause_schedule

    pause_schedule(open_store(store), name)
    click.echo(f"schedule {name}: paused")


@schedule.command("resume")
@click.argument("name")
@store_option
def resume(name: str, store: str | None) -> None:
    """Resume the paused schedule NAME from now: the slots that passed while it was paused do not run
    (`schedule backfill` runs them)."""
    from nbdurable.headless.scheduler import resume_schedule

    resume_schedule(open_store(store), name)
    click.echo(f"schedule {name}: active")


@schedule.command("delete")
@click.argument("name")
@store_option
def delete(name: str, store: str | None) -> None:
    """Delete the schedule NAME. Its runs stay in the history; slots it already claimed still start."""
    open_store(store).delete_schedule(name)
    click.echo(f"schedule {name}: deleted")


@schedule.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, metavar="TIME",
              help="The first time (ISO 8601: 2026-12-01 or 2026-12-01T06:00, with or without offset; without "
                   "one, in the schedule's zone).")
@click.option("--to", "end", required=True, metavar="TIME", help="The last time (included), as --from.")
@store_option
def backfill(name: str, start: str, end: str, store: str | None) -> None:
    """Claim a run for each slot of the schedule NAME between --from and --to (both included); `nbdurable
    worker` starts them. A slot that already has a run gets no second one (backfilling twice adds nothing)."""
    from nbdurable.headless.scheduler import claim_slots

    opened = open_store(store)
    definition = opened.read_schedule(name)
    timing = Timing.of(definition)
    first, last = parse_time(start, timing.tz), parse_time(end, timing.tz)
    if first > last:
        raise OptionsError(f"--from {start} is after --to {end}", hint="give the earlier time with --from")
    found = slots(timing, first - 1e-6, last, limit=MAX_SLOTS)
    if len(found) == MAX_SLOTS:
        raise OptionsError(f"more than {MAX_SLOTS} slots between {start} and {end} ({timing.describe()})",
                           hint="backfill a shorter period at a time")
    made = claim_slots(opened, definition, found, log=lambda *_, **__: None, backfill=True)
    every = f" ({format_interval(timing.every)} apart)" if timing.every else ""
    click.echo(f"schedule {name}: {len(found)} slot(s){every} from {start} to {end}: {made} claimed, "
               f"{len(found) - made} already had a run; `nbdurable worker` starts them")
