"""Copy a directory store into a shared store (``nbdurable migrate``), every tag verified: journals, the
objects they refer to, events and their idempotency keys, cancel requests, claims with their state (the run
queue, schedule slots, trigger decisions, rate tokens, child runs), and the definitions of schedules,
triggers and queues with the schedules' and triggers' cursors. Leases are not copied: they belong to live
processes (stop the source's workers and kernels first; a run still going is copied as far as it got, and
the next migrate copies the rest).

Idempotent and resumable: each run's journal goes in one transaction (all its records or none), rows that
are already there are compared, not rewritten (a different row is an error: two stores mixed up), and
objects already present under their key are verified, not uploaded again. Killed half-way, the same command
finishes the job. Nothing that fails its tag is copied: a damaged journal is reported and left out (its
records before the damage are not copied either: repair it first with ``nbdurable check --repair``).
Objects no journal refers to are garbage (``nbdurable gc`` deletes them) and are not copied. A claim
already in the target keeps its line and only gains state (started, finished); a different claim of the
same key is an error, as a different journal record is. A definition or cursor already in the target is
kept (the target's stands: it may have been changed there since).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...errors import StoreError
from ..auth import object_tag
from ..claims import CLAIM_SUFFIX, CLAIMS_DIR, FINISHED_SUFFIX, STARTED_SUFFIX, claim_digest
from ..control import CANCEL_SUFFIX, CONTROL_DIR
from ..events import EVENT_SUFFIX, IDEMPOTENCY_DIR
from ..journal import JOURNAL_SUFFIX, _checked_body
from ..maintenance import object_uses
from ..queues import QUEUE_SUFFIX, QUEUES_DIR
from ..schedules import DEFINITION_SUFFIX, SCHEDULES_DIR, STATE_SUFFIX
from ..triggers import CURSOR_SUFFIX, TRIGGER_SUFFIX, TRIGGERS_DIR
from .pg import database_error, pool

Progress = Callable[[str, int, int], None]  # (what, done, total)
# (directory, file suffix, what): the one-line files of definitions and cursors, each named after its name
_DEFINITIONS = [(SCHEDULES_DIR, DEFINITION_SUFFIX, "schedule"), (SCHEDULES_DIR, STATE_SUFFIX, "schedule cursor"),
                (TRIGGERS_DIR, TRIGGER_SUFFIX, "trigger"), (TRIGGERS_DIR, CURSOR_SUFFIX, "trigger cursor"),
                (QUEUES_DIR, QUEUE_SUFFIX, "queue")]


@dataclass
class MigrationReport:
    """What ``migrate_store`` copied (or found already copied), and what it left out and why."""

    runs: int = 0
    records: int = 0
    events: int = 0
    keys: int = 0  # idempotency keys of events
    cancels: int = 0
    claims: int = 0
    claims_present: int = 0  # already in the target (their state brought up to date)
    definitions: int = 0  # schedules, triggers, queue settings and cursors
    definitions_present: int = 0  # already in the target, kept
    objects: int = 0
    objects_present: int = 0  # already in the target, verified
    skipped: list[str] = field(default_factory=list)  # what was left out, and why

    @property
    def ok(self) -> bool:
        return not self.skipped


def _lines(data: bytes) -> list[bytes]:
    """The complete lines of a file (a torn last line, without its newline, is ignored as in a journal)."""
    lines = data.split(b"\n")
    lines.pop()
    return lines


def _verified(line: bytes) -> dict[str, Any] | None:
    body = _checked_body(line)
    try:
        value = json.loads(body.decode("utf-8")) if body is not None else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def migrate_store(source: Any, target: Any, progress: Progress | None = None) -> MigrationReport:
    """Copy ``source`` (a directory ``Store``) into ``target`` (a ``SharedStore``); see the module docstring."""
    report = MigrationReport()
    tick = progress or (lambda what, done, total: None)
    run_ids = source.run_ids()
    uses: dict[str, str] = {}  # object key -> a tag a verified record keeps for it
    for done, run_id in enumerate(run_ids, 1):
        records = _copy_journal(source, target, run_id, report)
        for use in object_uses(run_id, records):
            if use.needs_file and use.tag is not None:
                uses.setdefault(use.key, use.tag)
        tick("journals", done, len(run_ids))
    for ident, data, _ in _listed(source, "events", EVENT_SUFFIX, report, tick):
        target.put_event_line(ident, data)
        report.events += 1
    for _, _, value in _listed(source, IDEMPOTENCY_DIR, "", report, tick):
        _copy_event_key(target, value, report)
    for ident, data, _ in _listed(source, CONTROL_DIR, CANCEL_SUFFIX, report, tick):
        target.put_cancel_line(ident, data)
        report.cancels += 1
    _copy_claims(source, target, report, tick)
    for directory, suffix, what in _DEFINITIONS:
        for name, data, value in _listed(source, directory, suffix, report, tick, what=what):
            if value.get("name") != name:
                report.skipped.append(f"{directory}/{name}{suffix} names another {what}: not copied")
            elif target.put_definition_line(what, name, data):
                report.definitions += 1
            else:
                report.definitions_present += 1
    for done, (key, tag) in enumerate(sorted(uses.items()), 1):
        _copy_object(source, target, key, tag, report)
        tick("objects", done, len(uses))
    _flush(target)
    return report


def _flush(target: Any) -> None:
    """Wait until everything committed so far is on the server's disk (one synchronous commit)."""
    with pool(target.url).connection() as conn, conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT pg_current_xact_id()")


def _copy_journal(source: Any, target: Any, run_id: str, report: MigrationReport) -> list[dict[str, Any]]:
    """One run's journal in one transaction; the verified records (none if the journal is damaged)."""
    import psycopg

    try:
        data = (source.path / "journals" / (run_id + JOURNAL_SUFFIX)).read_bytes()
    except OSError as exc:
        report.skipped.append(f"run {run_id}: its journal cannot be read ({exc.strerror or exc})")
        return []
    rows, records = [], []
    for number, line in enumerate(_lines(data), 1):
        record = _verified(line)
        if record is None or not isinstance(record.get("seq"), int):
            report.skipped.append(f"run {run_id}: line {number} of its journal fails its tag: not copied "
                                  "(`nbdurable check --repair` on the source first)")
            return []
        rows.append((run_id, record["seq"], line[:-65], line[-64:].decode("ascii")))
        records.append(record)
    try:
        with pool(target.url).connection() as conn, conn.transaction(), conn.cursor() as cur:
            # Not waiting for each run's WAL flush: _flush waits once at the end (a server crash meanwhile loses
            # whole runs at most, which the next migrate copies again).
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("INSERT INTO nbd_journals (run_id) VALUES (%s) ON CONFLICT DO NOTHING", [run_id])
            cur.execute("SELECT seq, body, tag FROM nbd_records WHERE run_id = %s", [run_id])
            present = {int(s): (bytes(b), t) for s, b, t in cur.fetchall()}
            new = [r for r in rows if r[1] not in present]
            for _, seq, body, tag in rows:
                if seq in present and present[seq] != (body, tag):
                    raise StoreError(f"the target already has a different record {seq} of run {run_id}",
                                     hint="the target holds another store's run of the same id: migrate into an "
                                     "empty database")
            cur.executemany("INSERT INTO nbd_records (run_id, seq, body, tag) VALUES (%s, %s, %s, %s)", new)
    except psycopg.Error as exc:
        raise database_error(exc, target.url, f"copying the journal of run {run_id}") from None
    report.runs += 1
    report.records += len(rows)
    return records


def _listed(source: Any, directory: str, suffix: str, report: MigrationReport, tick: Progress, *,
            what: str | None = None) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """The one-line authenticated files ``directory/*suffix`` of the source that pass their tag, as (name
    without the suffix, the file's bytes, its record); the others are reported as left out. Progress is told
    after each one the caller handled."""
    try:
        names = sorted(n for n in os.listdir(source.path / directory) if n.endswith(suffix) and n[0] != ".")
    except FileNotFoundError:
        return
    found = []
    for name in names:
        data = (source.path / directory / name).read_bytes()
        value = _verified(data[:-1]) if data.endswith(b"\n") else None
        if value is None:
            report.skipped.append(f"{directory}/{name} fails its tag: not copied")
        else:
            found.append((name[: len(name) - len(suffix)], data, value))
    for done, item in enumerate(found, 1):
        yield item
        tick(what or directory, done, len(found))


def _copy_event_key(target: Any, value: dict[str, Any], report: MigrationReport) -> None:
    """An event's idempotency key: the target names the same event with it, or already named another."""
    key, event_id = value.get("key"), value.get("event_id")
    if not isinstance(key, str) or not isinstance(event_id, str):
        report.skipped.append("an idempotency key file names no key or event: not copied")
        return
    standing = target.claim_event_key(key, event_id)
    if standing != event_id:
        raise StoreError(f"the target already names event {standing} with the idempotency key {key!r}, "
                         f"the source {event_id}", hint="the target holds another store's events: migrate into an "
                         "empty database")
    report.keys += 1


def _copy_claims(source: Any, target: Any, report: MigrationReport, tick: Progress) -> None:
    """Every claim of every kind (not the flow keys' slots: leases), with its started and finished markers."""
    root = source.path / CLAIMS_DIR
    try:
        kinds = sorted(k for k in os.listdir(root) if not k.startswith("_") and (root / k).is_dir())
    except FileNotFoundError:
        return
    for kind in kinds:
        directory = f"{CLAIMS_DIR}/{kind}"
        for stem, data, value in _listed(source, directory, CLAIM_SUFFIX, report, tick, what=f"{kind} claims"):
            if value.get("kind") != kind or claim_digest(str(value.get("key"))) != stem:
                report.skipped.append(f"{directory}/{stem}{CLAIM_SUFFIX} is another key's claim: not copied")
                continue
            started, finished = ((root / kind / (stem + marker)).exists() for marker in (STARTED_SUFFIX,
                                                                                           FINISHED_SUFFIX))
            if target.put_claim_line(data, started=started, finished=finished):
                report.claims += 1
            else:
                report.claims_present += 1


def _copy_object(source: Any, target: Any, key: str, tag: str, report: MigrationReport) -> None:
    """Verify the source object against its record's tag, upload it unless present, verify the target's copy."""
    path = source.object_path(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report.skipped.append(f"object {key} is missing from the source (collected by gc?): not copied")
        return
    if not hmac.compare_digest(object_tag(data), tag):
        report.skipped.append(f"object {key} fails its tag in the source: not copied")
        return
    present = target.has_object(key)
    if not present:
        target.put_object_file(key, path)
    copy = target._fs.cat_file(target._remote(key))
    if not hmac.compare_digest(object_tag(copy), tag):
        raise StoreError(f"object {key} fails its tag in the target after copying",
                         hint="the target's object storage altered it: check NBDURABLE_OBJECTS, then run again")
    if present:
        report.objects_present += 1
    else:
        report.objects += 1


__all__ = ["MigrationReport", "migrate_store"]
