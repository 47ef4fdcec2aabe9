"""``HistoryExplorer()`` / ``%durable history``: the runs of a store, filtered, one run's graph, two runs compared.

The frontend (``static/history.js``, behind ``graph_core.js``) only edits traits; this side does the work:

- ``filters`` (``{"notebook", "status", "params", "since", "until"}``, all text) → one SQL query with a LIMIT
  (newest first, at most ``MAX_RUNS``, plus the total that matched) → ``runs`` and ``total``. Changing filters
  queries the catalog as it is; ``refresh()`` (the refresh button) ingests new journal records first.
- ``selected_run`` → ``graph`` (``build_graph``: GraphData); the frontend shows a clicked node's details.
- ``compare`` (two run ids) → ``comparison`` (``compare.py``).
- the Fork / Rerun buttons of the selected run's graph (``fork(run, from_cell)``, ``rerun(run)``) start
  ``nbdurable fork``/``rerun`` as a process of its own (a headless run with its own kernel); ``action`` says
  what it does, and how it ended once a refresh finds it finished (its last line: the run it recorded).
- Anything that goes wrong (a bad filter, a run that disappeared, a locked catalog) becomes a line of
  ``error``, shown in the widget: never a traceback.

Filter syntax (``filters_query`` turns filters into SQL; every value is a bound parameter):

- ``notebook``: a notebook name or path, exactly; ``*`` and ``?`` make it a glob (``train*``).
- ``status``: one run status (running, completed, failed, suspended, interrupted, cancelled, crashed).
- ``params``: comma-separated ``name OP value`` terms, all of which must hold: ``lr=0.1, epochs>=3``. OP is
  one of ``= == != < <= > >=``; ``name`` may be dotted for nested parameters (``model.depth=4``). A value is
  read as JSON (``0.1``, ``true``, ``null``, ``[1, 2]``, ``"a b"``), else as bare text (``opt=adam``).
  Numbers compare numerically (``3`` equals ``3.0``); ``!=`` also matches runs without that parameter.
- ``since`` / ``until``: the run's start time bounds, inclusive: ``2024-05-01`` (a whole day for
  ``until``), ``2024-05-01 13:30``, ISO with a timezone, unix seconds, or a duration ago (``24h``, ``7d``,
  ``1h30m``). Times without a timezone are local.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import anywidget
import traitlets

from nbdurable.errors import NbdurableError, OptionsError
from nbdurable.runtime.policy import parse_duration
from nbdurable.store import Store
from nbdurable.store.records import RUN_STATUSES
from nbdurable.widgets.assets import static_text
from nbdurable.widgets.compare import compare_runs, json_row

MAX_RUNS = 200
FILTER_KEYS = ("notebook", "status", "params", "since", "until", "origin")
RUN_COLUMNS = (
    "run_id, notebook, notebook_path, kind, status, epoch(started_at) AS started_at, epoch(ended_at) AS ended_at, "
    "duration_s, steps_total, steps_executed, steps_restored, steps_failed, time_saved_s, params, resumed_from, "
    "schedule, trigger, parent_run"
)
ORIGIN_KINDS = {"schedule": "schedule", "trigger": "trigger", "parent": "parent_run"}
_ORIGIN_HINT = ("write schedule:NAME, trigger:NAME or parent:RUN_ID (a bare name matches a schedule or a trigger; "
                "* and ? for a pattern)")

_KEY = re.compile(r"[A-Za-z_][\w\-]*(?:\.[\w\-]+)*")
_TERM = re.compile(rf"\s*({_KEY.pattern})\s*(==|!=|>=|<=|=|>|<)\s*(.*?)\s*", re.DOTALL)
_DURATION = re.compile(r"\s*(\d+(\.\d*)?\s*[a-zA-Z]+\s*)+")
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_PARAMS_HINT = "write name=value terms separated by commas, e.g. lr=0.1, epochs=3 (also != < <= > >=)"
_DATE_HINT = "use a date (2024-05-01), a date and time (2024-05-01 13:30), unix seconds, or a duration ago (24h, 7d)"


# ----------------------------------------------------------------------------------------------------
# Filters → SQL


def _split_terms(text: str) -> list[str]:
    """Split on commas outside quotes and brackets (a value may be a JSON list or a quoted string)."""
    terms: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
            continue
        current.append(ch)
    terms.append("".join(current))
    return [t for t in (term.strip() for term in terms) if t]


def _param_value(text: str, term: str) -> Any:
    if not text:
        raise OptionsError(f"bad parameter filter {term!r}: no value after the operator", hint=_PARAMS_HINT)
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    try:
        value = json.loads(text)
    except ValueError:
        if text[0] in "<>=!":  # markup>>1, lr=<3: a mistyped operator, not a text to compare with
            raise OptionsError(f"bad parameter filter {term!r}: the value {text!r} starts with an operator",
                               hint=_PARAMS_HINT + "; quote a text that starts with one: name='>1'") from None
        return text  # bare text: opt=adam
    if isinstance(value, float) and not math.isfinite(value):
        return text  # json reads NaN and Infinity; as a filter they are words
    return value


def params_conditions(text: str) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) for a parameter filter text; OptionsError when it does not parse."""
    conditions: list[str] = []
    args: list[Any] = []
    for term in _split_terms(text):
        match = _TERM.fullmatch(term)
        if match is None:
            raise OptionsError(f"bad parameter filter {term!r}: expected name=value", hint=_PARAMS_HINT)
        key, op, raw = match.groups()
        value = _param_value(raw, term)
        op = "=" if op == "==" else op
        path = "$." + ".".join(f'"{part}"' for part in key.split("."))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            cond, cargs = (f"TRY_CAST(json_extract_string(params, ?) AS DOUBLE) {'=' if op == '!=' else op} ?",
                           [path, float(value)])
        elif isinstance(value, str):
            cond, cargs = f"json_extract_string(params, ?) {'=' if op == '!=' else op} ?", [path, value]
        elif op not in ("=", "!="):
            raise OptionsError(f"bad parameter filter {term!r}: {op} compares numbers or text, not {raw}",
                               hint=_PARAMS_HINT)
        elif value is None:
            cond, cargs = "json_type(params, ?) = 'NULL'", [path]
        else:  # true/false, lists and objects: compared as (minified, key-sorted) JSON text
            cond = "CAST(json_extract(params, ?) AS VARCHAR) = ?"
            cargs = [path, json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)]
        conditions.append(f"NOT coalesce({cond}, FALSE)" if op == "!=" else f"coalesce({cond}, FALSE)")
        args += cargs
    return conditions, args


def parse_time(text: str, *, end: bool = False, now: float | None = None) -> _dt.datetime | None:
    """A since/until filter as a naive UTC datetime (the catalog's timestamps); None when empty.

    ``end``: an ``until`` bound, so a bare date means the end of that day."""
    text = text.strip()
    if not text:
        return None
    now = time.time() if now is None else now
    stamp: float | None = None
    if _NUMBER.fullmatch(text):
        stamp = float(text)
    elif _DURATION.fullmatch(text):
        try:
            stamp = now - parse_duration(text)
        except OptionsError:
            stamp = None
    else:
        try:
            when = _dt.datetime.fromisoformat(text.replace("/", "-"))
        except ValueError:
            when = None
        if when is not None:
            date_only = re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.replace("/", "-")) is not None
            if date_only and end:
                when = when + _dt.timedelta(days=1) - _dt.timedelta(microseconds=1)
            stamp = when.timestamp()  # naive: local time, as typed
    if stamp is None or not math.isfinite(stamp):
        raise OptionsError(f"bad date {text!r} for {'until' if end else 'since'}", hint=_DATE_HINT)
    try:
        return _dt.datetime.fromtimestamp(stamp, _dt.timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        raise OptionsError(f"bad date {text!r} for {'until' if end else 'since'}: out of range",
                           hint=_DATE_HINT) from None


def normalize_filters(filters: Any) -> dict[str, str]:
    """The known filter keys as stripped text (unknown keys are ignored; None reads as empty)."""
    if not isinstance(filters, dict):
        raise OptionsError(f"filters must be a dict, not {type(filters).__name__}",
                           hint=f"keys: {', '.join(FILTER_KEYS)}")
    out = {}
    for key in FILTER_KEYS:
        value = filters.get(key)
        out[key] = "" if value is None else str(value).strip()
    return out


def filters_query(filters: dict[str, Any], *, limit: int = MAX_RUNS, now: float | None = None) -> tuple[str, list[Any]]:
    """One SQL query for the runs matching ``filters``: newest first, at most ``limit`` rows, each row also
    carrying ``total`` (how many runs matched, before the limit). OptionsError for a filter that does not parse."""
    f = normalize_filters(filters)
    where: list[str] = []
    args: list[Any] = []
    if f["notebook"]:
        if any(ch in f["notebook"] for ch in "*?["):
            where.append("(notebook GLOB ? OR notebook_path GLOB ?)")
        else:
            where.append("(notebook = ? OR notebook_path = ?)")
        args += [f["notebook"], f["notebook"]]
    if f["status"]:
        if f["status"] not in RUN_STATUSES:
            raise OptionsError(f"unknown run status {f['status']!r}", hint=f"use one of: {', '.join(RUN_STATUSES)}")
        where.append("status = ?")
        args.append(f["status"])
    if f["params"]:
        conditions, cargs = params_conditions(f["params"])
        where += conditions
        args += cargs
    if f["origin"]:
        condition, oargs = origin_condition(f["origin"])
        where.append(condition)
        args += oargs
    since, until = parse_time(f["since"], now=now), parse_time(f["until"], end=True, now=now)
    if since is not None and until is not None and since > until:
        raise OptionsError(f"since ({f['since']}) is after until ({f['until']})", hint="swap them, or clear one")
    if since is not None:
        where.append("started_at >= ?")
        args.append(since)
    if until is not None:
        where.append("started_at <= ?")
        args.append(until)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sql = (f"SELECT {RUN_COLUMNS}, count(*) OVER () AS total FROM runs {clause} "
           "ORDER BY runs.started_at DESC NULLS LAST, run_id DESC LIMIT ?")
    return sql, [*args, int(limit)]


def origin_condition(text: str) -> tuple[str, list[Any]]:
    """The ``origin`` filter (what started the run) as one SQL condition: ``schedule:NAME``, ``trigger:NAME``,
    ``parent:RUN_ID`` (child runs of that run or of its resume chain), or a bare name (a schedule's or a
    trigger's); ``*``/``?`` make it a pattern. OptionsError for an unknown kind."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "", text
    kind, name = kind.strip().lower(), name.strip()
    if kind and kind not in ORIGIN_KINDS or not name:
        raise OptionsError(f"bad origin filter {text!r}", hint=_ORIGIN_HINT)
    op = "GLOB" if any(ch in name for ch in "*?[") else "="
    if kind == "parent":
        return (f"(parent_run {op} ? OR json_extract_string(origin, '$.parent_root') {op} ? OR "
                "json_extract_string(origin, '$.parent_root') = (SELECT coalesce(max(root_run), ?) FROM runs p "
                "WHERE p.run_id = ?))", [name, name, name, name])
    if kind:
        return f"{ORIGIN_KINDS[kind]} {op} ?", [name]
    return f"(schedule {op} ? OR trigger {op} ?)", [name, name]


def run_row(row: dict[str, Any]) -> dict[str, Any]:
    """A runs-table row as the widget sends it (params parsed, NaN as None)."""
    out = json_row(row)
    out.pop("total", None)
    try:
        params = json.loads(out.get("params") or "{}")
    except ValueError:
        params = {}
    out["params"] = params if isinstance(params, dict) else {}
    out["notebook_label"] = notebook_label(out.get("notebook"))
    return out


def notebook_label(notebook: Any) -> str | None:
    """A notebook as the runs table shows it (the full path is its tooltip): relative to the working directory
    when it lies below it, else its file name; a name stays a name."""
    if not isinstance(notebook, str) or not notebook:
        return None
    path = PurePath(notebook)
    if not path.is_absolute():
        return notebook
    try:
        return str(path.relative_to(os.getcwd()))
    except ValueError:
        return path.name or notebook


def error_text(exc: BaseException) -> str:
    """One line (or two, with the hint) for the widget's error line."""
    if isinstance(exc, NbdurableError):
        return f"{exc.message} — {exc.hint}" if exc.hint else exc.message
    return f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------------
# The widget


class HistoryExplorer(anywidget.AnyWidget):
    """The runs of a store: filter them (notebook, status, parameters, dates), click one to see its graph,
    tick two to compare them (parameters, per-step durations and changes, variables).

    ``store``: a path or Store (default: the loaded extension's, else $NBDURABLE_STORE, else ./.nbdurable);
    ``notebook``: start filtered to that notebook."""

    _esm = static_text("graph", "history.js")
    _css = static_text("graph.css", "history.css")

    filters = traitlets.Dict().tag(sync=True)  # {"notebook", "status", "params", "since", "until", "origin"}: text
    runs: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)  # run rows, newest first, at most MAX_RUNS
    total = traitlets.Int(0).tag(sync=True)  # runs matching the filters
    limit = traitlets.Int(MAX_RUNS).tag(sync=True)
    # every notebook name in the store (filter suggestions)
    notebooks: traitlets.List[str] = traitlets.List().tag(sync=True)
    selected_run = traitlets.Unicode("", allow_none=True).tag(sync=True)  # "" (or None) = none
    selected_node = traitlets.Unicode("").tag(sync=True)  # a node id of ``graph``, "" = none
    graph = traitlets.Any(None, allow_none=True).tag(sync=True)  # GraphData of selected_run, or None
    # [run_a, run_b] to compare (the frontend keeps at most two)
    compare: traitlets.List[Any] = traitlets.List().tag(sync=True)
    comparison = traitlets.Any(None, allow_none=True).tag(sync=True)  # see compare.py, or None
    error = traitlets.Unicode("").tag(sync=True)  # what went wrong, one line per source; "" = nothing
    refreshed_at = traitlets.Float(0.0).tag(sync=True)  # unix seconds of the last ingest
    action = traitlets.Unicode("").tag(sync=True)  # the last fork/rerun started here, and how it ended

    def __init__(self, store: str | os.PathLike[str] | Store | None = None, notebook: str | None = None,
                 **kwargs: Any) -> None:
        from nbdurable.runtime.session import default_store

        if notebook is not None:
            kwargs["filters"] = {**dict(kwargs.get("filters") or {}), "notebook": notebook}
        self._ready = False
        self._errors: dict[str, str] = {}
        self._jobs: list[tuple[subprocess.Popen[bytes], str, str]] = []  # (process, log file, what it does)
        self._store = default_store(store)
        super().__init__(**kwargs)
        self.on_msg(self._on_custom)
        self._ready = True
        self.refresh()

    @property
    def store(self) -> Store:
        return self._store

    # -- actions ----------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Ingest new journal records, then reload the runs, the selected run's graph and the comparison."""
        with self.hold_sync():
            self._poll_jobs()
            self._guard("refresh", self._ingest)
            self._load_runs()
            self._guard("notebooks", self._load_notebooks)
            self._load_graph()
            self._load_comparison()

    def fork(self, run_id: str, from_cell: int) -> None:
        """Start ``nbdurable fork RUN --from-cell N`` (cells before N restored as the run recorded them)."""
        self._start(["fork", run_id, "--from-cell", str(int(from_cell))], f"fork of {run_id} from cell {from_cell}")

    def rerun(self, run_id: str) -> None:
        """Start ``nbdurable rerun RUN``: its notebook with its parameters again, from the first cell."""
        self._start(["rerun", run_id], f"rerun of {run_id}")

    def _start(self, args: list[str], what: str) -> None:
        fd, log = tempfile.mkstemp(prefix="nbdurable-history-", suffix=".log")
        with os.fdopen(fd, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "nbdurable", *args, "--no-progress"],
                env={**os.environ, "NBDURABLE_STORE": self._store.location},  # not argv: a URL may hold a password
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._jobs.append((process, log, what))
        self.action = f"{what}: started (process {process.pid}); ↻ Refresh shows the new run"

    def _poll_jobs(self) -> None:
        """Say how the processes started here ended (the CLI's last line), once."""
        for job in list(self._jobs):
            process, log, what = job
            if process.poll() is None:
                continue
            self._jobs.remove(job)
            try:
                with open(log, encoding="utf-8", errors="replace") as f:
                    lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("[")]  # (kernel log lines)
                os.unlink(log)
            except OSError:
                lines = []
            said = next((ln for ln in lines if ln.startswith(("completed:", "failed:", "crashed:", "Error:"))),
                        lines[-1] if lines else "")
            self.action = f"{what}: exit {process.returncode}: {said}"

    def _ingest(self) -> None:
        try:
            # A damaged journal raises after every other journal was ingested: the runs still load.
            self._store.catalog().ingest()
        finally:
            self.refreshed_at = time.time()

    def _load_runs(self) -> None:
        def load() -> None:
            sql, args = filters_query(self.filters, limit=max(1, min(self.limit, MAX_RUNS)))
            df = self._store.catalog().query(sql, args, ingest=False)
            rows = df.to_dict("records")
            with self.hold_sync():  # one message: the frontend never sees runs and total disagree
                self.total = int(rows[0]["total"]) if rows else 0
                self.runs = [run_row(row) for row in rows]

        self._guard("filters", load)

    def _load_notebooks(self) -> None:
        df = self._store.catalog().query("SELECT DISTINCT notebook FROM runs WHERE notebook IS NOT NULL "
                                         "ORDER BY notebook", ingest=False)
        self.notebooks = [str(n) for n in df["notebook"]]

    def _load_graph(self) -> None:
        run_id = self.selected_run or ""

        def load() -> None:
            from nbdurable.widgets.graph import build_graph

            self.graph = build_graph(self._store, run_id) if run_id else None

        if not self._guard("selected_run", load):
            self.graph = None

    def _load_comparison(self) -> None:
        picked = list(self.compare)

        def load() -> None:
            if len(picked) < 2:
                self.comparison = None
                return
            if len(picked) > 2 or not all(isinstance(r, str) and r for r in picked):
                raise OptionsError(f"compare takes two run ids, not {picked!r}", hint="tick two runs in the list")
            self.comparison = compare_runs(self._store, picked[0], picked[1])

        if not self._guard("compare", load):
            self.comparison = None

    # -- plumbing ---------------------------------------------------------------------------------

    @traitlets.observe("filters", "limit")
    def _filters_changed(self, change: dict[str, Any]) -> None:
        if self._ready:
            self._load_runs()

    @traitlets.observe("selected_run")
    def _selected_changed(self, change: dict[str, Any]) -> None:
        if self._ready:
            self.selected_node = ""
            self._load_graph()

    @traitlets.observe("compare")
    def _compare_changed(self, change: dict[str, Any]) -> None:
        if self._ready:
            self._load_comparison()

    def _on_custom(self, widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("type") == "refresh":
            self.refresh()
        elif content.get("type") in ("fork", "rerun") and self.selected_run:
            run_id, cell = self.selected_run, content.get("cell")
            if content["type"] == "rerun":
                self._guard("action", lambda: self.rerun(run_id))
            elif isinstance(cell, int) and cell >= 1:
                self._guard("action", lambda: self.fork(run_id, cell))

    def _guard(self, source: str, action: Callable[[], None]) -> bool:
        """Run ``action``; its error (if any) becomes the ``source`` line of ``error``. True if it succeeded."""
        try:
            action()
        except Exception as exc:  # shown in the widget, never as a traceback
            self._set_error(source, error_text(exc))
            return False
        self._set_error(source, None)
        return True

    def _set_error(self, source: str, message: str | None) -> None:
        if message:
            self._errors[source] = message
        else:
            self._errors.pop(source, None)
        self.error = "\n".join(self._errors.values())
