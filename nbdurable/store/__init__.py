"""The store: the only code that touches journals, object files, leases and the DuckDB catalog.

A store is a directory::

    FORMAT              {"format": 2, "created_by": "nbdurable"}
    journals/<run>.jsonl    one append-only journal per run (the truth)
    journals/<run>.reopened marker: the journal was reopened by append_journal (the catalog then keeps
                            checking it even after its run_end)
    objects/<ab>/<cdef..>   content-addressed object files
    leases/<run>.lease      one writer per run (flock + heartbeat)
    tmp/                    temporary files, renamed into objects/ and events/
    events/<id>.json        events sent with `nbd.send_event` / `nbdurable send` (one file each)
    idempotency/<sha256>    the event id sent with an idempotency key (`send_event_once`, the server's API)
    control/<run>.cancel    a durable request to cancel a run (`nbdurable cancel`; who, when, why)
    claims/<kind>/…         claims: "this key starts exactly one run" (store/claims.py)
    triggers/<name>.trigger event triggers' definitions (store/triggers.py)
    schedules/<name>.json   a schedule's definition (`nbdurable schedule add`); <name>.state its cursor
    queues/<name>.json      a queue's setting (`nbdurable queue set`: its concurrency; store/queues.py)
    catalog.duckdb          derived from the journals; can always be rebuilt
    catalog.lock            queue (flock) of the processes that want the catalog
    gc.json                 runs whose objects `nbdurable gc` collected (check does not call them damaged)

The store knows nothing of IPython or of the runtime. A ``postgresql://`` URL in place of the directory
opens a shared store instead (``store/shared/``: PostgreSQL for journals, events, leases and cancel
requests, fsspec for objects), a virtual subclass of ``Store`` with the same interface.
"""

from __future__ import annotations

import abc
import json
import os
import pathlib
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, StoreFormatError
from . import records
from .claims import ClaimsMixin
from .control import ControlMixin
from .crypto import encryption_key
from .event_log import EventLog, recover_event_log
from .events import EventsMixin
from .journal import JournalsMixin, JournalWriter, fsync_dir, io_error, read_records
from .lease import Lease, LeasesMixin
from .objects import ObjectsMixin
from .queues import QueuesMixin
from .schedules import SchedulesMixin
from .triggers import TriggersMixin

if TYPE_CHECKING:
    from .catalog import Catalog

_SUBDIRS = ("journals", "objects", "leases", "tmp", "events", "control", "claims")
_REOPENED_SUFFIX = ".reopened"  # = catalog.REOPENED_SUFFIX (the catalog imports duckdb: not imported here)
_FORMAT_FILE = "FORMAT"
_FORMAT_TMP_PREFIX = ".FORMAT."  # a FORMAT being written by a concurrent Store.open; not foreign content


class Store(JournalsMixin, ObjectsMixin, LeasesMixin, EventsMixin, ControlMixin, ClaimsMixin, TriggersMixin,
            SchedulesMixin, QueuesMixin, metaclass=abc.ABCMeta):
    """A store directory. Create or open one with ``Store.open(path)`` (a ``postgresql://`` URL opens a
    ``SharedStore``)."""

    FORMAT_VERSION = 2  # 2: journal lines and objects authenticated (HMAC-SHA256); 1 had plain checksums

    @classmethod
    def __subclasshook__(cls, subclass: type) -> Any:
        """``SharedStore`` (``store/shared``, which cannot import this module) counts as a ``Store``."""
        if cls is Store and getattr(subclass, "shared_store", False) is True:
            return True
        return NotImplemented

    def __init__(self, path: pathlib.Path) -> None:
        """Use ``Store.open``: it checks and creates the layout."""
        self.path = path
        self._claims_read = {}  # ClaimsMixin._claims_marked's claims already read, by marker

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> Store:
        """Open a store directory; with ``create=True`` (default) create it (mode 0o700) if missing or empty.
        A ``postgresql://`` URL opens the shared store there (``store/shared``).

        Raises StoreFormatError if it is missing (``create=False``), is a non-empty directory without a FORMAT
        file, has an unreadable FORMAT, or was written by a newer nbdurable.
        """
        if is_store_url(path):
            return open_shared(str(path), create=create)
        root = pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
        if not root.exists():
            if not create:
                raise StoreFormatError(f"no nbdurable store at {root}",
                                       hint="check the path (or NBDURABLE_STORE); open it with create=True to make one")
            _make_root(root)
        elif not root.is_dir():
            raise StoreFormatError(f"{root} is a file, not an nbdurable store directory",
                                   hint="point NBDURABLE_STORE at a directory")
        format_file = root / _FORMAT_FILE
        if not format_file.exists():
            _initialize(root, create)
        _check_format(format_file, cls.FORMAT_VERSION)
        for sub in _SUBDIRS:  # a store opened while another process was still creating it
            (root / sub).mkdir(mode=0o700, exist_ok=True)
        store = cls(root)
        store._sweep_tmp()
        try:
            recover_event_log(store)
        except StoreError as exc:  # reading the store must not fail on it; the next open tries again
            warnings.warn(f"nbdurable: the events of a stopped server could not be recovered yet: {exc}",
                          stacklevel=2)
        return store

    def open_event_writer(self) -> EventLog:
        """A writer storing batches of events durably with one sync each (``event_log.py``): for a process
        receiving many events at once. One thread writes; ``close()`` it when done."""
        return EventLog(self)

    def append_journal(self, run_id: str) -> JournalWriter:
        """Reopen an existing journal to append (``JournalsMixin.append_journal``), leaving the marker
        ``journals/<run>.reopened`` first (durably): the catalog skips the journals that ended with
        ``run_end`` when it looks for new records, except the reopened ones."""
        self._existing_journal(run_id)  # a run without a journal: its error, before any marker
        marker = self.reopened_marker(run_id)
        if not marker.exists():
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
                fsync_dir(marker.parent)
            except OSError as exc:
                raise io_error(exc, f"reopening the journal of run {run_id}", marker) from exc
        return super().append_journal(run_id)

    def reopened_marker(self, run_id: str) -> pathlib.Path:
        """``journals/<run>.reopened``: present once ``append_journal`` reopened the run's journal."""
        return self.journal_path(run_id).with_name(run_id + _REOPENED_SUFFIX)

    def catalog(self) -> Catalog:
        """The DuckDB catalog of this store (cheap: it opens the database only per operation).

        Imported on first use: duckdb and pyarrow cost a kernel ~0.12 s to import, and a kernel that
        only records steps never needs them."""
        from .catalog import Catalog

        return Catalog(self)

    @property
    def location(self) -> str:
        """What names this store to another process (``--store``, ``NBDURABLE_STORE``): its directory."""
        return str(self.path)

    @property
    def display(self) -> str:
        """How messages name this store: its directory."""
        return str(self.path)

    @property
    def local_dirs(self) -> list[str]:
        """The local directories this store writes (its files are nobody's inputs): the store directory."""
        return [str(self.path)]

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def is_store_url(location: object) -> bool:
    """True if ``location`` is a ``postgresql://`` URL (a shared store), not a directory."""
    return isinstance(location, str) and location.lower().startswith(("postgresql://", "postgres://"))


def open_shared(url: str, *, create: bool = True, objects: str | None = None) -> Store:
    """The shared store at ``url`` (imported on first use: psycopg and fsspec cost a local store nothing);
    ``objects``: where its objects are (default: ``NBDURABLE_OBJECTS``, else what the store records)."""
    from .shared import SharedStore

    return SharedStore.open(url, create=create, objects=objects)  # type: ignore[return-value]


def _make_root(root: pathlib.Path) -> None:
    try:
        root.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return  # created concurrently by another process: it sets the mode
    os.chmod(root, 0o700)  # mkdir's mode is filtered by the umask; pickled variables are private to the user


def _initialize(root: pathlib.Path, create: bool) -> None:
    """Make an empty directory a store: FORMAT first (atomically), then the subdirectories."""
    foreign = [name for name in os.listdir(root) if not name.startswith(_FORMAT_TMP_PREFIX)]
    if (root / _FORMAT_FILE).exists():
        return  # initialized concurrently by another process
    if foreign:
        raise StoreFormatError(
            f"{root} is not an nbdurable store: it is a non-empty directory without a FORMAT file",
            hint="use another directory for the store (NBDURABLE_STORE), or empty this one",
        )
    if not create:
        raise StoreFormatError(f"{root} is an empty directory, not an nbdurable store",
                               hint="open it with create=True to make it a store")
    info: dict[str, Any] = {"format": Store.FORMAT_VERSION, "created_by": "nbdurable"}
    if encryption_key() is not None:
        info["encrypted"] = True  # from now on, a process without the key may not write here
    content = json.dumps(info).encode() + b"\n"
    tmp = root / f"{_FORMAT_TMP_PREFIX}{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / _FORMAT_FILE)  # concurrent creators write the same content: last rename wins
    fsync_dir(root)


def _check_format(format_file: pathlib.Path, supported: int) -> None:
    try:
        info: Any = json.loads(format_file.read_bytes())
        version = info["format"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError(version)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreFormatError(
            f"the store's FORMAT file {format_file} is unreadable ({type(exc).__name__}: {exc})",
            hint='if this is an nbdurable store, restore FORMAT to '
            f'{{"format": {supported}, "created_by": "nbdurable"}}',
        ) from exc
    if version > supported:
        raise StoreFormatError(
            f"the store {format_file.parent} was written by a newer nbdurable "
            f"(format {version}; this one reads format {supported})",
            hint="upgrade with pip install -U nbdurable",
        )
    if version == 1:
        raise StoreFormatError(
            f"the store {format_file.parent} was written by nbdurable 0.1, whose records are not authenticated "
            "(format 1): this version does not load them",
            hint="start a new store (move this one away, or set NBDURABLE_STORE); its runs cannot be resumed",
        )
    if version < 1:
        raise StoreFormatError(f"the store {format_file.parent} has an unknown format {version}",
                               hint="check that this directory is an nbdurable store")
    if info.get("encrypted") and encryption_key() is None:
        raise StoreFormatError(
            f"the store {format_file.parent} is encrypted and no key is set: nothing can be read or written",
            hint="set NBDURABLE_ENCRYPTION_KEY (or NBDURABLE_ENCRYPTION_KEY_FILE) to the store's key",
        )


__all__ = ["Store", "JournalWriter", "Lease", "Catalog", "is_store_url", "open_shared", "records", "read_records"]


def __getattr__(name: str) -> Any:
    if name == "Catalog":  # lazily, like Store.catalog()
        from .catalog import Catalog

        return Catalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
