"""Store maintenance commands: ``nbdurable check`` and ``nbdurable gc`` (the logic is in ``store/maintenance.py``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from nbdurable.cli.base import EXIT_FAILED, AtLeast, main, open_store, store_option

if TYPE_CHECKING:
    from nbdurable.errors import LeaseHeldError
    from nbdurable.store.maintenance import CheckReport, GcReport


@main.command("check")
@store_option
@click.option("--repair", is_flag=True,
              help="Truncate torn tails, salvage damaged journals (originals kept aside), rebuild the catalog.")
def check(store: str | None, repair: bool) -> None:
    """Verify a store: journals, the object files they refer to, the catalog. Exit 1 on damage."""
    from nbdurable.store.maintenance import check_store, repair_store

    st = open_store(store)
    report = check_store(st)
    click.echo(f"Store {st.display}")
    _echo_check(report)
    refused: list[LeaseHeldError] = []
    if repair:
        actions, refused = repair_store(st, report)
        click.echo("Repairs:" if actions else "Repairs: nothing to repair.")
        for action in actions:
            click.echo(f"  {action}")
        for exc in refused:
            click.echo(f"refused: {exc.message}\n  What to do: {exc.hint}")
        if actions:
            report = check_store(st)
            click.echo("After repair:")
            _echo_check(report)
    if report.damage or refused:
        sys.exit(EXIT_FAILED)


def _echo_check(report: CheckReport) -> None:
    """The counts, then every warning and every damage with what to do, then the verdict."""
    journals = report.journals
    torn = sum(1 for s in journals if s.torn)
    runs = sum(1 for s in journals if s.first("run"))
    records = sum(len(s.records) for s in journals)
    click.echo(f"  journals: {len(journals)} ({_n(records, 'record')}, {_n(runs, 'run')}), {_n(torn, 'torn tail')}")
    collected = f", {report.collected} collected by gc" if report.collected else ""
    click.echo(f"  objects: {report.referenced} referenced: {report.present} present, {report.missing} missing, "
               f"{report.damaged} damaged{collected}; {report.unreferenced} unreferenced (`nbdurable gc` deletes them)")
    click.echo(f"  catalog: {'to rebuild' if report.catalog_problem else 'ok'}")
    for kind, findings in (("warning", report.warnings), ("DAMAGE", report.damage)):
        for message, hint in findings:
            click.echo(f"{kind}: {message}\n  What to do: {hint}")
    click.echo(f"Result: damaged ({_n(len(report.damage), 'problem')})" if report.damage else "Result: ok")


@main.command("gc")
@store_option
@click.option("--keep-last", type=AtLeast(0, integer=True), default=10, metavar="N",
              help="Keep the N (default 10) most recent runs of each notebook "
                   "(live, unfinished and resumed-from runs are always kept).")
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--prune-runs", is_flag=True,
              help="Also delete the journals (and leases) of the runs not kept; rebuild the catalog.")
def gc(store: str | None, keep_last: int, dry_run: bool, prune_runs: bool) -> None:
    """Delete the object files that no kept run refers to."""
    from nbdurable.store.maintenance import GC_MIN_AGE_S, collect_garbage

    report = collect_garbage(open_store(store), keep_last=keep_last, dry_run=dry_run, prune_runs=prune_runs)
    click.echo(f"Kept {_n(len(report.kept), 'run')} (the {keep_last} most recent of each notebook, plus live, "
               f"unfinished and resumed-from runs); {_n(len(report.collected), 'run')} not kept.")
    _echo_gc(report, prune_runs, GC_MIN_AGE_S)
    for exc in report.refused:
        click.echo(f"refused: {exc.message}\n  What to do: {exc.hint}")


def _echo_gc(report: GcReport, prune_runs: bool, min_age: float) -> None:
    verb = "Would delete" if report.dry_run else "Deleted"
    freed = "would be freed" if report.dry_run else "freed"
    click.echo(f"{verb} {_n(report.deleted, 'object file')}: {_n(report.freed, 'byte')} "
               f"({_human(report.freed)}) {freed}.")
    if report.spared_recent:
        click.echo(f"Spared {_n(report.spared_recent, 'unneeded object file')} modified in the last {min_age / 60:g} "
                   "minutes (a live run may be committing them).")
    if prune_runs and report.dry_run:
        click.echo(f"Would prune {_n(len(report.collected), 'run')} (their journals and leases).")
    elif prune_runs:
        rebuilt = "; catalog rebuilt" if report.pruned else ""
        click.echo(f"Pruned {_n(len(report.pruned), 'run')} (their journals and leases){rebuilt}.")
    if report.dry_run:
        click.echo("Dry run: nothing was deleted.")


def _human(size: int) -> str:
    """1234567 -> '1.2 MiB'."""
    if size < 1024:
        return f"{size} B"
    value, unit = float(size) / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def _n(count: int, noun: str) -> str:
    """'1 run', '2 runs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
