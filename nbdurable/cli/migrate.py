"""``nbdurable migrate --from DIR --to postgresql://... [--objects URL]``: a directory store into a shared one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nbdurable.cli.base import EXIT_FAILED, main
from nbdurable.errors import OptionsError
from nbdurable.store import Store, is_store_url, open_shared


@main.command("migrate")
@click.option("--from", "source", required=True, type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="The directory store to copy (it is only read).")
@click.option("--to", "target", required=True, metavar="URL",
              help="The shared store: postgresql://user@host:port/database (a password only from the URL or "
              "PGPASSWORD / ~/.pgpass; it is never shown).")
@click.option("--objects", default=None, metavar="URL",
              help="Where the shared store keeps objects (an fsspec URL: file:///dir, s3://bucket/prefix); "
              "default: NBDURABLE_OBJECTS, or the location the store already records.")
@click.option("--progress/--no-progress", default=True, help="Show progress (default: on).")
def migrate(source: Path, target: str, objects: str | None, progress: bool) -> None:
    """Copy a local store into a shared store, verifying every authentication tag: journals and the objects
    they need, events and their idempotency keys, cancel requests, claims (the run queue, schedule slots,
    trigger decisions) with their state, and the schedules, triggers, queue settings and cursors. Stop the
    source's workers first (their leases are not copied). Idempotent and resumable: run it again after an
    interruption (or to copy runs added since) and it finishes the job. Exit code 1 if something was left
    out (damaged or missing in the source: listed)."""
    from nbdurable.store.shared.migrate import migrate_store

    if not is_store_url(target):
        raise OptionsError(f"--to must be a postgresql:// URL, not {target!r}",
                           hint="for example --to postgresql://me@dbhost:5432/nbdurable")
    from_store = Store.open(source, create=False)
    to_store = open_shared(target, objects=objects)
    last: dict[str, int] = {}

    def tick(what: str, done: int, total: int) -> None:
        if progress and (done == total or done - last.get(what, 0) >= max(total // 20, 1)):
            last[what] = done
            click.echo(f"  {what}: {done}/{total}", err=True)

    click.echo(f"Migrating {from_store.display} into {to_store.display}", err=True)
    report = migrate_store(from_store, to_store, tick)
    click.echo(f"Copied {report.runs} runs ({report.records} records), {report.events} events, {report.cancels} "
               f"cancel requests, {report.objects} objects ({report.objects_present} already there, verified).")
    click.echo(f"Copied {report.claims} claims ({report.claims_present} already there), {report.keys} idempotency "
               f"keys, {report.definitions} schedules, triggers, queue settings and cursors "
               f"({report.definitions_present} already there, kept).")
    for what in report.skipped:
        click.echo(f"left out: {what}", err=True)
    if not report.ok:
        sys.exit(EXIT_FAILED)

