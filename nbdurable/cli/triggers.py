"""``nbdurable trigger add|list|pause|resume|delete``: event triggers (``headless/triggers.py``)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import click

from nbdurable.cli.base import AtLeast, main, open_store, store_option
from nbdurable.errors import OptionsError


@main.group("trigger", cls=type(main))
def trigger() -> None:
    """Start a run of a notebook for every matching event: add, list, pause, resume and delete triggers.

    `nbdurable worker` decides each event sent (`nbdurable send`, `nbd.send_event`) once per trigger and
    starts the runs."""


def _json_option(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise OptionsError(f"{option} is not JSON: {exc}",
                           hint=f"quote it for the shell: {option} '{{\"plan\": \"pro\"}}'") from None


@trigger.command("add")
@click.argument("name")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--on", "on", required=True, metavar="EVENT", help="The event name that starts runs.")
@click.option("--match", default=None, metavar="JSON",
              help="Only events whose data contains this JSON object (nested objects: recursively).")
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter of every run (typed like papermill). Repeatable. `event` is the event's data.")
@click.option("--concurrency", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="At most N runs of this trigger execute at once (per value of --key). Suspended runs do "
              "not count.")
@click.option("--key", default=None, metavar="EXPR",
              help="What --concurrency, --debounce and --rate count by, e.g. 'event[\"customer\"]'.")
@click.option("--debounce", default=None, metavar="DURATION",
              help="One run DURATION after the last event of a burst (per --key), with that event's data.")
@click.option("--rate", default=None, metavar="N/PERIOD",
              help="At most N runs started per PERIOD (per --key), e.g. 10/1m.")
@click.option("--rate-mode", type=click.Choice(["drop", "delay"]), default="drop", show_default=True,
              help="Excess events under --rate: dropped (recorded), or their runs delayed until allowed.")
@click.option("--priority", type=int, default=0, show_default=True, metavar="P",
              help="Higher starts first when runs wait for a free place.")
@click.option("--idempotency-key", default=None, metavar="EXPR",
              help="A second event with the same value of EXPR within --idempotency-window starts nothing.")
@click.option("--idempotency-window", default="24h", show_default=True, metavar="DURATION",
              help="How long an --idempotency-key value holds.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write each run's output notebook here (NOTEBOOK-RUN_ID.ipynb).")
@store_option
def add(name: str, notebook: Path, on: str, match: str | None, parameters: tuple[tuple[str, str], ...],
        concurrency: int | None, key: str | None, debounce: str | None, rate: str | None, rate_mode: str,
        priority: int, idempotency_key: str | None, idempotency_window: str, output_dir: str | None,
        store: str | None) -> None:
    """Add the trigger NAME, which starts one run of NOTEBOOK for every event --on EVENT sent from now on.

    Only events whose data contains --match count. The run's parameter `event` is the event's data (declare
    `event = {}` in the cell tagged `parameters`); `-p` adds parameters. `nbdurable worker` decides each
    event exactly once (across crashes and several workers) and starts the runs."""
    from nbdurable.headless.params import load_parameters
    from nbdurable.headless.triggers import define_trigger
    from nbdurable.runtime.flow import FlowControl, parse_rate
    from nbdurable.runtime.policy import parse_duration

    flow = FlowControl(concurrency=concurrency, key=key, debounce=parse_duration(debounce) if debounce else None,
                       rate=parse_rate(rate) if rate else None, rate_mode=rate_mode, priority=priority,
                       idempotency_key=idempotency_key, idempotency_window=parse_duration(idempotency_window))
    definition = define_trigger(name, notebook, on=on, match=_json_option(match, "--match"),
                                params=load_parameters(parameters, ()), flow=flow, output_dir=output_dir)
    open_store(store, create=True).add_trigger(definition)
    click.echo(f"trigger {name}: {on}{' matching ' + json.dumps(definition['match']) if definition['match'] else ''}"
               f" → {notebook} ({flow.describe()})")


@trigger.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per trigger, with its counts.")
@store_option
def list_triggers(as_json: bool, store: str | None) -> None:
    """List the triggers with their event, match, notebook, state and flow control, and what they decided.

    Counts: runs claimed (of which delayed by --rate-mode delay), events dropped by --rate, duplicates of
    an --idempotency-key."""
    from nbdurable.headless.triggers import is_paused, trigger_counts
    from nbdurable.runtime.flow import FlowControl

    opened = open_store(store)
    for definition in opened.triggers():
        counts = trigger_counts(opened, definition)
        if as_json:
            click.echo(json.dumps({**definition, "paused": is_paused(definition), "counts": counts}))
            continue
        state = "paused" if is_paused(definition) else "active"
        created = dt.datetime.fromtimestamp(definition["created_at"]).isoformat(sep=" ", timespec="seconds")
        match = f" matching {json.dumps(definition['match'])}" if definition.get("match") else ""
        notebook = _relative(definition["notebook"])
        click.echo(f"{definition['name']}  [{state}]  on {definition['on']}{match} → {notebook}")
        click.echo(f"    flow: {FlowControl.from_dict(definition.get('flow') or {}).describe()}; since {created}")
        missing = f", notebook missing {counts['notebook_missing']}" if counts["notebook_missing"] else ""
        click.echo("    runs {runs} (delayed {delayed}), dropped {dropped}, duplicates {duplicates}".format(**counts)
                   + missing)
    if not as_json and not opened.triggers():
        click.echo("no triggers (add one with `nbdurable trigger add NAME NOTEBOOK --on EVENT`)")


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


@trigger.command("pause")
@click.argument("name")
@store_option
def pause(name: str, store: str | None) -> None:
    """Pause the trigger NAME, so events sent while it is paused never start runs (not after resume either)."""
    from nbdurable.headless.triggers import pause_trigger

    click.echo(f"trigger {name}: {'paused' if pause_trigger(open_store(store), name) else 'was paused already'}")


@trigger.command("resume")
@click.argument("name")
@store_option
def resume(name: str, store: str | None) -> None:
    """Resume the trigger NAME, so events sent from now on start runs again."""
    from nbdurable.headless.triggers import resume_trigger

    click.echo(f"trigger {name}: {'resumed' if resume_trigger(open_store(store), name) else 'was not paused'}")


@trigger.command("delete")
@click.argument("name")
@store_option
def delete(name: str, store: str | None) -> None:
    """Delete the trigger NAME; runs it already decided still start, and its history stays."""
    open_store(store).delete_trigger(name)
    click.echo(f"trigger {name}: deleted")
