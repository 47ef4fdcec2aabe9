"""Store maintenance: verify (``check_store``), repair (``repair_store``), delete unneeded objects
(``collect_garbage``).

Repairs never delete user data (a journal corrupt mid-file is kept aside as ``<run>.jsonl.corrupt-<time>``) and hold
the run's lease: a live run is never touched. The catalog is derived: missing, it is rebuilt, not damage. GC spares
object files modified in the last ``GC_MIN_AGE_S`` s (a live run writes an object before its commit record, and
``write_object`` refreshes the mtime of content it finds already stored); only a reuse between gc's check and
its delete could race, so collect while no notebook runs to be certain. Collected runs are
listed in ``gc.json``: their missing objects are not damage.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import pathlib
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import duckdb

from ..errors import CatalogLockedError, CorruptJournalError, LeaseHeldError, StoreError
from .auth import Tagger
from .catalog import CATALOG_FILE
from .crypto import OBJECT_MAGIC
from .events import EVENT_SUFFIX
from .journal import _checked_body, fsync_dir, io_error
from .records import part_objects

if TYPE_CHECKING:
    from . import Store

GC_MIN_AGE_S = 600.0  # object files younger than this may belong to a commit in progress
GC_FILE = "gc.json"  # {"collected_runs": [...]}: runs whose objects garbage collection may have deleted
FILE_FORMATS = ("pickle", "ndarray", "parquet")
_MAGIC = {"pickle": b"NBDP", "ndarray": b"NBDA", "delta": b"NBDD"}
_NOT_OBJECT = "authenticated but the content is not a JSON object"
_ASIDE = ".corrupt-"
_KEY_IN_JSON = re.compile(rb'"object":"([0-9a-f]{32})"')
_OBJECT_HINTS = {"missing": "copy it back from a backup of the store if you have one; else that step cannot be "
                            "restored: run the notebook afresh (`%durable new`)",
                 "damaged": "copy a good version back from a backup, or delete it and run the notebook afresh "
                            "(`%durable new`)"}


@dataclass
class JournalScan:
    """One journal as found: its valid records up to the first bad line, and how it ends."""

    run_id: str
    path: pathlib.Path
    records: list[dict[str, Any]]
    good_end: int  # byte offset just after the last valid record
    size: int
    bad_line: int | None = None  # first bad line with more data after it: damage
    bad_why: str = ""

    @property
    def torn(self) -> bool:
        """True if the journal ends with a torn write (harmless; the next writer truncates it)."""
        return self.bad_line is None and self.good_end < self.size

    def first(self, kind: str) -> dict[str, Any]:
        """The first record of type ``kind`` (``run``, ``run_end``...), {} if there is none."""
        return next((r for r in self.records if r.get("t") == kind), {})


def scan_journal(store: Store, run_id: str) -> JournalScan:
    """Read a journal without raising for damage: a corrupt line ends the records and is noted."""
    if _shared(store):
        return _scan_rows(run_id, store.journal_rows(run_id))  # type: ignore[attr-defined]
    path = store.journal_path(run_id)
    try:
        return _scan_lines(run_id, path, path.read_bytes())
    except OSError as exc:
        raise io_error(exc, f"reading the journal of run {run_id}", path) from exc


def _decode(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The record of one journal line (without its newline), or None and why the line is bad."""
    if (body := _checked_body(line)) is None:
        return None, "fails authentication" if b"\t" in line else "no tag"
    with contextlib.suppress(ValueError):
        if isinstance(record := json.loads(body), dict):
            return record, ""
    return None, _NOT_OBJECT


def _scan_lines(run_id: str, path: pathlib.Path, data: bytes) -> JournalScan:
    """Read a journal line by line, by the rules of ``read_records`` (a bad last line is a torn write)."""
    scan, lines = JournalScan(run_id, path, [], 0, len(data)), data.split(b"\n")
    partial = lines.pop()
    for number, line in enumerate(lines, 1):
        record, why = _decode(line)
        if record is None:
            if not (number == len(lines) and not partial and why != _NOT_OBJECT):
                scan.bad_line, scan.bad_why = number, why
            return scan
        scan.records.append(record)
        scan.good_end += len(line) + 1
    return scan


def _shared(store: Store) -> bool:
    """A shared store (``store/shared``): journals as rows, settings in the database."""
    return hasattr(store, "journal_rows")


def _scan_rows(run_id: str, rows: list[tuple[int, bytes, str]]) -> JournalScan:
    """A shared store's journal rows as a scan: the bad "line" is the seq of the first row failing its tag."""
    scan = JournalScan(run_id, pathlib.Path(run_id), [], len(rows), len(rows))
    for seq, body, tag in rows:
        record, why = _decode(body + b"\t" + tag.encode("ascii"))
        if record is None:
            scan.bad_line, scan.bad_why = seq, why
            return scan
        scan.records.append(record)
    return scan


def _aside_keys(store: Store) -> set[str]:
    """Every object key named in the damaged journals that repairs kept aside, damaged lines included."""
    keys: set[str] = set()
    if _shared(store):
        return {k.decode() for body in store.aside_bodies() for k in _KEY_IN_JSON.findall(body)}  # type: ignore[attr-defined]
    for path in (store.path / "journals").glob(f"*{_ASIDE}*"):
        try:
            keys.update(key.decode() for key in _KEY_IN_JSON.findall(path.read_bytes()))
        except OSError as exc:  # stop: delete nothing rather than what it may need
            raise io_error(exc, "reading a damaged journal kept aside", path) from exc
    return keys


@dataclass(frozen=True)
class ObjectUse:
    """A place where a journal refers to an object."""

    key: str
    format: str | None  # None: a big output (JSON) stored as an object file
    needs_file: bool  # restoring it reads the object's file (not inline, not a module or an unrestorable)
    run_id: str
    where: str  # "variable `df` of step 3 of run <id>", "output 2 of step 3 of run <id>"
    tag: str | None = None  # the authentication tag the record keeps for the file


def object_uses(run_id: str, records: Iterable[dict[str, Any]]) -> Iterator[ObjectUse]:
    """The object references in a journal's ``step_end`` records (variables and big outputs)."""
    for r in records:
        if r.get("t") != "step_end":
            continue
        for v in r.get("variables") or []:
            if isinstance(v, dict) and isinstance(key := v.get("object"), str):
                where = f"variable `{v.get('name')}` of step {r.get('ordinal')} of run {run_id}"
                parts = part_objects(v)
                needs_file = v.get("format") in FILE_FORMATS and v.get("inline") is None and not parts
                yield ObjectUse(key, v.get("format"), needs_file, run_id, where, v.get("tag"))
                for part, tag, role in parts:  # a delta's base and patch files, a frame's column files
                    fmt = "delta" if role.startswith("patch") else v.get("format")
                    yield ObjectUse(part, fmt, True, run_id, f"{where} ({role})", tag)
        for i, o in enumerate(r.get("outputs") or []):
            if isinstance(o, dict) and o.get("output_type") == "object" and isinstance(key := o.get("object"), str):
                yield ObjectUse(key, None, True, run_id, f"output {i} of step {r.get('ordinal')} of run {run_id}",
                                o.get("tag"))


def object_problem(store: Store, use: ObjectUse) -> tuple[Literal["missing", "damaged"], str] | None:
    """None if the object file is whole and authentic, else what is wrong with it (size and magic bytes
    first, then every byte against the record's authentication tag)."""
    try:
        with open(store.object_path(use.key), "rb") as f:
            size, head = os.fstat(f.fileno()).st_size, f.read(4)
            tail = os.pread(f.fileno(), 4, max(0, size - 4))
    except ValueError:
        return "damaged", "has an invalid key (expected 32 hex characters)"
    except FileNotFoundError:
        return "missing", "is missing"
    except OSError as exc:
        return "damaged", f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "damaged", "is empty"
    if head == OBJECT_MAGIC:  # encrypted: the format's own bytes are inside; the tag below covers it all
        pass
    elif (magic := _MAGIC.get(str(use.format))) is not None and head != magic:
        return "damaged", f"does not start with the {use.format} magic {magic!r} (overwritten or truncated)"
    elif use.format == "parquet" and (size < 12 or head != b"PAR1" or tail != b"PAR1"):
        return "damaged", "is not a whole Parquet file (no PAR1 at both ends: truncated?)"
    elif use.format is None and head[:1] != b"{":
        return "damaged", "is not a JSON output (it does not start with '{')"
    if use.tag is None:
        return "damaged", "has no authentication tag in the record that refers to it"
    try:
        with open(store.object_path(use.key), "rb") as f:
            tagger = Tagger()
            while chunk := f.read(8 * 2**20):
                tagger.update(chunk)
    except OSError as exc:
        return "damaged", f"cannot be read ({exc.strerror or exc})"
    if not hmac.compare_digest(tagger.hexdigest(), use.tag):
        return "damaged", "fails authentication (damaged, tampered with, or written under another key)"
    return None


@dataclass
class CheckReport:
    """What ``check_store`` found. Object counts are of distinct object files the journals need."""

    journals: list[JournalScan] = field(default_factory=list)
    damage: list[tuple[str, str]] = field(default_factory=list)  # (what happened, what to do): the check fails
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (what happened, what to do): the check passes
    referenced: int = 0
    present: int = 0
    missing: int = 0
    damaged: int = 0
    collected: int = 0  # missing, but only runs collected by gc needed them
    unreferenced: int = 0  # object files no journal refers to (gc deletes them)
    catalog_problem: str | None = None  # missing or unreadable: repairable
    damaged_events: list[str] = field(default_factory=list)  # ids of event files that do not read back


def check_store(store: Store) -> CheckReport:
    """Verify the journals, the object files they refer to, and the catalog."""
    report = CheckReport(journals=[scan_journal(store, run_id) for run_id in store.run_ids()])
    for scan in report.journals:
        _check_journal(store, scan, report)
    _check_objects(store, report)
    _check_events(store, report)
    _check_catalog(store, report)
    return report


def _check_events(store: Store, report: CheckReport) -> None:
    for event_id in store.event_ids():
        if store.read_event(event_id) is None:
            report.damaged_events.append(event_id)
            report.damage.append((f"events/{event_id}{EVENT_SUFFIX} is damaged or not authentic (tag or format): "
                                  "no run will receive it",
                                  "ask its sender to send it again; `nbdurable check --repair` moves the file aside"))


def _check_journal(store: Store, scan: JournalScan, report: CheckReport) -> None:
    name = f"journals/{scan.path.name}"
    if scan.torn:
        live = " (the run is live: a write may be in progress)" if store.is_live(scan.run_id) else ""
        report.warnings.append((f"{name}: torn tail (a crash mid-write), harmless{live}: "
                                f"{scan.size - scan.good_end} bytes after record {len(scan.records)} are ignored",
                                "`nbdurable check --repair` truncates it"))
    if scan.bad_line is not None:
        report.damage.append((f"{name} is damaged at line {scan.bad_line} ({scan.bad_why}); "
                              f"the {len(scan.records)} records before it are intact",
                              "`nbdurable check --repair` keeps the original aside and salvages them"))


def _check_objects(store: Store, report: CheckReport) -> None:
    uses: dict[str, list[ObjectUse]] = {}
    for scan in report.journals:
        for use in object_uses(scan.run_id, scan.records):
            uses.setdefault(use.key, []).append(use)
    collected = read_collected(store)
    for key, refs in uses.items():
        if not (needing := [u for u in refs if u.needs_file]):
            continue
        report.referenced += 1
        problem = object_problem(store, needing[0])
        if problem is None:
            report.present += 1
        elif problem[0] == "missing" and all(u.run_id in collected for u in needing):
            report.collected += 1
        else:
            report.missing += problem[0] == "missing"
            report.damaged += problem[0] == "damaged"
            more = f" (and {len(needing) - 1} more references)" if len(needing) > 1 else ""
            what = f"object {key} ({needing[0].format or 'output'}) {problem[1]}: {needing[0].where} needs it{more}"
            report.damage.append((what, _OBJECT_HINTS[problem[0]]))
    report.unreferenced = sum(1 for key in store.object_keys() if key not in uses)


def _check_catalog(store: Store, report: CheckReport) -> None:
    """The catalog must ingest; missing or unreadable it is noted (repairable); busy, it is skipped."""
    if not (store.path / CATALOG_FILE).exists():
        report.catalog_problem = f"{CATALOG_FILE} is missing"
    else:
        try:
            with contextlib.suppress(CorruptJournalError):  # reported with the journals; the others are ingested
                store.catalog().ingest()
        except CatalogLockedError as exc:
            report.warnings.append((f"catalog not checked: {exc.message}", exc.hint or "retry"))
        except (StoreError, duckdb.Error) as exc:
            report.catalog_problem = f"{CATALOG_FILE} is unreadable ({getattr(exc, 'message', exc)})"
    if report.catalog_problem:
        report.warnings.append((report.catalog_problem,
                                "it is derived from the journals: `nbdurable check --repair` rebuilds it"))


def repair_store(store: Store, report: CheckReport) -> tuple[list[str], list[LeaseHeldError]]:
    """Truncate torn tails, salvage journals corrupt mid-file, rebuild the catalog if needed. Returns what was
    done, and the errors of the journals left alone because their run is live."""
    actions, refused = [], []
    for scan in report.journals:
        if scan.torn or scan.bad_line is not None:
            try:
                actions.append(_repair_journal(store, scan.run_id))
            except LeaseHeldError as exc:
                refused.append(exc)
    for event_id in report.damaged_events:
        if _shared(store):
            store.set_aside_event(event_id)  # type: ignore[attr-defined]
            actions.append(f"event {event_id}: set aside (table nbd_aside)")
            continue
        path = store.path / "events" / f"{event_id}{EVENT_SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            aside = _keep_aside(path)
            os.unlink(path)
            actions.append(f"events/{path.name}: moved aside as events/{aside.name}")
    if actions or report.catalog_problem is not None:
        try:
            actions.append(f"rebuilt the catalog from the journals ({store.catalog().rebuild()} records)")
        except CorruptJournalError:
            actions.append("rebuilt the catalog from every journal but the damaged ones left unrepaired")
    return actions, refused


def _repair_journal(store: Store, run_id: str) -> str:
    """Repair one journal under its run's lease (LeaseHeldError if a live process drives the run)."""
    with store.acquire_lease(run_id):
        scan = scan_journal(store, run_id)  # again, under the lease: it may have changed since the check
        name = f"journals/{scan.path.name}"
        if scan.bad_line is not None and _shared(store):
            moved = store.salvage_journal(run_id, scan.bad_line)  # type: ignore[attr-defined]
            return (f"{name}: record {scan.bad_line} was damaged; {moved} records from it on are kept in the table "
                    f"nbd_aside; the {len(scan.records)} records before it stay")
        if scan.bad_line is not None:
            return f"{name}: {_salvage(store, scan)}"
        if scan.torn:
            store.append_journal(run_id).close()  # truncates the torn tail and syncs
            return f"{name}: truncated the torn tail ({scan.size - scan.good_end} bytes)"
        return f"{name}: nothing to repair any more"


def _salvage(store: Store, scan: JournalScan) -> str:
    """Keep the damaged journal aside; put the records before its first bad line in its place."""
    try:
        aside = _keep_aside(scan.path)
        tmp = store.path / "tmp" / f"{scan.path.name}.salvage-{os.getpid()}"
        _write_synced(tmp, aside.read_bytes()[: scan.good_end])
        os.replace(tmp, scan.path)
        fsync_dir(scan.path.parent)
    except OSError as exc:
        raise io_error(exc, f"salvaging the journal of run {scan.run_id}", scan.path) from exc
    return (f"line {scan.bad_line} was damaged; the original is kept as journals/{aside.name}; "
            f"salvaged the {len(scan.records)} records before it")


def _keep_aside(path: pathlib.Path) -> pathlib.Path:
    """Hard-link a damaged file to ``<name>.corrupt-<UTC time>[-n]`` beside it; returns that path."""
    stamp, n = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), 0
    while True:
        aside = path.with_name(f"{path.name}{_ASIDE}{stamp}{f'-{n}' if n else ''}")
        with contextlib.suppress(FileExistsError):
            os.link(path, aside)
            return aside
        n += 1


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass
class GcReport:
    """What ``collect_garbage`` kept and deleted (or would delete, in a dry run)."""

    kept: list[str]
    collected: list[str]  # runs not kept: their objects may be deleted
    dry_run: bool
    deleted: int = 0
    freed: int = 0  # bytes
    spared_recent: int = 0  # object files no kept run needs, left because they are too recent
    pruned: list[str] = field(default_factory=list)  # runs whose journal and lease were deleted
    refused: list[LeaseHeldError] = field(default_factory=list)


def collect_garbage(store: Store, *, keep_last: int = 10, dry_run: bool = False, prune_runs: bool = False,
                    min_age: float = GC_MIN_AGE_S) -> GcReport:
    """Delete the object files no kept run needs; with ``prune_runs`` also the other runs' journals. Raises
    CorruptJournalError if a journal is damaged: what its unreadable records need is unknown."""
    scans = {run_id: scan_journal(store, run_id) for run_id in store.run_ids()}
    if damaged := [s for s in scans.values() if s.bad_line is not None]:
        raise CorruptJournalError(f"journal {damaged[0].path} is damaged at line {damaged[0].bad_line}: "
                                  "gc cannot know which objects it needs",
                                  hint="run `nbdurable check --repair` first (it salvages the intact records)")
    kept = kept_runs(store, scans, keep_last)
    report = GcReport(sorted(kept), sorted(set(scans) - kept), dry_run)
    if prune_runs and not dry_run:
        _prune(store, report)  # journals first: a crash half-way leaves orphans, never dangling references
    if not dry_run:
        write_collected(store, (read_collected(store) | set(report.collected)) - set(report.kept))
    needed = {u.key for run_id in report.kept for u in object_uses(run_id, scans[run_id].records)}
    needed |= _aside_keys(store)
    _delete_objects(store, needed, report, time.time() - min_age)
    if report.pruned:
        store.catalog().rebuild()
    return report


def kept_runs(store: Store, scans: dict[str, JournalScan], keep_last: int) -> set[str]:
    """The N most recent runs of each notebook, live or unfinished runs, and the runs kept runs resumed from."""
    by_notebook: dict[str | None, list[str]] = {}
    for run_id in sorted(scans):  # run ids sort by time
        notebook = scans[run_id].first("run").get("notebook")
        by_notebook.setdefault(notebook if isinstance(notebook, str) else None, []).append(run_id)
    kept = {r for ids in by_notebook.values() for r in ids[max(0, len(ids) - keep_last):]} if keep_last > 0 else set()
    kept |= {r for r, scan in scans.items() if not scan.first("run_end") or store.is_live(r)}
    todo = list(kept)
    while todo:
        parent = scans[todo.pop()].first("run").get("resumed_from")
        if isinstance(parent, str) and parent in scans and parent not in kept:
            kept.add(parent)
            todo.append(parent)
    return kept


def _prune(store: Store, report: GcReport) -> None:
    """Delete the journal and lease file of each collected run, under its lease (live runs are refused)."""
    for run_id in report.collected:
        try:
            with store.acquire_lease(run_id):
                if _shared(store):
                    store.delete_journal(run_id)  # type: ignore[attr-defined]
                    report.pruned.append(run_id)
                    continue
                store.journal_path(run_id).unlink(missing_ok=True)
                store.reopened_marker(run_id).unlink(missing_ok=True)
                store._lease_path(run_id).unlink(missing_ok=True)
            report.pruned.append(run_id)
        except LeaseHeldError as exc:  # resumed or reopened since the scan: live now, so kept
            report.refused.append(exc)
            report.kept.append(run_id)
        except OSError as exc:
            raise io_error(exc, f"deleting the journal of run {run_id}", store.journal_path(run_id)) from exc
    report.collected = [r for r in report.collected if r not in report.kept]
    if not _shared(store):
        fsync_dir(store.path / "journals")


def _delete_objects(store: Store, needed: set[str], report: GcReport, cutoff: float) -> None:
    """Delete (in a dry run: count) the object files not ``needed`` last modified before ``cutoff``."""
    for key in [k for k in store.object_keys() if k not in needed]:
        with contextlib.suppress(FileNotFoundError, StoreError):  # deleted meanwhile: nothing to do
            if store.object_mtime(key) > cutoff:
                report.spared_recent += 1
            else:
                size = store.object_size(key)
                if not report.dry_run:
                    store.delete_object(key)
                report.deleted, report.freed = report.deleted + 1, report.freed + size


def read_collected(store: Store) -> set[str]:
    """The runs whose objects garbage collection may have deleted (``gc.json``; unreadable: none)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        data = (store.setting(GC_FILE) or "") if _shared(store) else (store.path / GC_FILE).read_bytes()  # type: ignore[attr-defined]
        return {r for r in json.loads(data).get("collected_runs") if isinstance(r, str)}
    return set()


def write_collected(store: Store, runs: set[str]) -> None:
    """Replace ``gc.json`` atomically, listing only the runs that still have a journal."""
    existing = [r for r in sorted(runs) if store.journal_exists(r)]
    if _shared(store):
        store.set_setting(GC_FILE, json.dumps({"collected_runs": existing}))  # type: ignore[attr-defined]
        return
    tmp = store.path / "tmp" / f"{GC_FILE}.{os.getpid()}"
    try:
        _write_synced(tmp, json.dumps({"collected_runs": existing}, indent=0).encode() + b"\n")
        os.replace(tmp, store.path / GC_FILE)
        fsync_dir(store.path)
    except OSError as exc:
        raise io_error(exc, "writing the list of collected runs", store.path / GC_FILE) from exc
