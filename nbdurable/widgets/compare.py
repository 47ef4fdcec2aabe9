"""Two runs side by side: parameters, steps (cells) and final variables; what the history explorer shows.

``compare(a, b)`` is pure (plain dicts in, a JSON-ready dict out); ``load_runs(store, run_ids)`` reads what it
needs from the catalog (three queries, the first one ingesting), and ``compare_runs(store, a, b)`` does both.

Steps are the top-level steps (cells) of each run, in ordinal order. They are matched in three passes:

1. by ``source_hash``, as an order-preserving alignment (``difflib.SequenceMatcher``), so identical cells pair
   up even when cells were inserted or removed around them;
2. in each stretch the alignment left unmatched, by equal step name (``%%durable --name``);
3. then by position within that stretch (the i-th leftover of ``a`` with the i-th leftover of ``b``): an edited
   cell. Whatever is still unmatched exists only in one run.

A matched pair differs when its source changed or its status differs; ``restored`` counts as ``completed``
(a restored step is the same work as the completed step it came from). A step in one run only differs.

A run's variables are its final state: for each name, the last ``set``/``del`` of the run's cells in ordinal
order (a ``del`` removes the name). Two variables differ when their object key, size or type differs (an
object key is a content hash, so equal values in two runs have equal keys), or when only one run has it.

The comparison dict (version 1; times in unix seconds, durations in seconds, missing values ``None``)::

    {
      "version": 1,
      "a": RunSummary, "b": RunSummary,
      "params": [{"name": str, "a": value|None, "b": value|None, "in_a": bool, "in_b": bool, "differs": bool}],
      "steps": [StepDiff],            # in notebook order: aligned pairs, then each stretch's leftovers
      "variables": [VarDiff],         # every name of either final state, sorted by name
      "summary": {
        "params_changed": [name],     # names of the differing parameters
        "steps_differ": int,          # StepDiff rows with differs=True
        "steps_source_changed": int, "steps_status_changed": int, "steps_only_in_a": int, "steps_only_in_b": int,
        "variables_changed": [name],  # names of the VarDiff rows with differs=True
        "duration_delta_s": float|None,   # b's run duration minus a's
      },
    }
    RunSummary = {"run_id", "notebook", "kind", "status", "params": {...}, "started_at", "ended_at", "duration_s",
                  "time_saved_s", "steps_total", "steps_executed", "steps_restored", "steps_failed", "resumed_from"}
    StepDiff = {
      "label": str,                   # b's label if the step is in b, else a's
      "a": StepSide|None, "b": StepSide|None,
      "match": "source"|"name"|"position"|None,   # how the pair was matched; None: only in one run
      "change": "same"|"source_changed"|"status_changed"|"only_in_a"|"only_in_b",
                                      # source_changed wins when status differs too (see "reasons")
      "differs": bool,
      "reasons": [str],               # human text: "source changed", "status completed → failed", "only in a"
      "duration_delta_s": float|None, # b's duration minus a's
      "source_diff": str|None,        # unified diff of the sources when the source changed
    }
    StepSide = {"ordinal": int, "name": str|None, "label": str, "status": str, "source_hash": str|None,
                "source": str, "started_at", "ended_at",
                "duration_s": float|None,     # the time the step took in this run (a restored step: its restore)
                "time_saved_s": float|None,   # restored steps: the recorded duration minus the restore time
                "error": str|None}            # "Ename: evalue" of a failed step
    VarDiff = {"name": str, "a": VarSide|None, "b": VarSide|None,
               "change": "same"|"changed"|"only_in_a"|"only_in_b", "differs": bool,
               "fields": [str]}               # which of "object", "size_bytes", "type" differ (changed only)
    VarSide = {"ordinal": int, "object": str|None, "type": str|None, "size_bytes": int|None, "format": str|None}
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nbdurable.errors import RunNotFoundError
from nbdurable.widgets.graph import label

if TYPE_CHECKING:
    from nbdurable.store import Store

VERSION = 1
RunData = dict[str, Any]  # {"run": row, "steps": [row], "variables": [row]} (see load_runs)
Comparison = dict[str, Any]

_SAME_STATUS = {"restored": "completed"}  # statuses that mean the same outcome
_VAR_FIELDS = ("object", "size_bytes", "type")
_MAX_DIFF_CHARS = 20_000

_RUN_COLUMNS = (
    "run_id, notebook, kind, status, params, epoch(started_at) AS started_at, epoch(ended_at) AS ended_at, duration_s, "
    "time_saved_s, steps_total, steps_executed, steps_restored, steps_failed, resumed_from"
)
_STEP_COLUMNS = (
    "run_id, ordinal, name, source, source_hash, status, epoch(started_at) AS started_at, epoch(ended_at) AS ended_at, "
    "duration_s, error_ename, error_evalue"
)


# ----------------------------------------------------------------------------------------------------
# Loading


def load_runs(store: Store, run_ids: Sequence[str]) -> list[RunData]:
    """The catalog's rows for each run (ingesting new journal records first), in the order asked:
    ``{"run": {...}, "steps": [top-level steps by ordinal], "variables": [their variables]}``.
    RunNotFoundError names the first run the catalog does not know."""
    ids = list(dict.fromkeys(run_ids))
    catalog = store.catalog()  # public queries only: the first one ingests, the others read the same catalog
    runs = catalog.query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE list_contains(?::VARCHAR[], run_id)", [ids])
    steps = catalog.query(
        f"SELECT {_STEP_COLUMNS} FROM steps WHERE list_contains(?::VARCHAR[], run_id) AND parent IS NULL "
        "ORDER BY run_id, ordinal", [ids], ingest=False)
    variables = catalog.query(
        "SELECT v.run_id, v.ordinal, v.name, v.op, v.object, v.type, v.size_bytes, v.format FROM variables v "
        "JOIN steps s ON s.run_id = v.run_id AND s.ordinal = v.ordinal "
        "WHERE list_contains(?::VARCHAR[], v.run_id) AND s.parent IS NULL ORDER BY v.run_id, v.ordinal, v.name",
        [ids], ingest=False)
    by_id: dict[str, RunData] = {row["run_id"]: {"run": json_row(row), "steps": [], "variables": []}
                                 for row in runs.to_dict("records")}
    for run_id in run_ids:
        if run_id not in by_id:
            raise RunNotFoundError(f"no run {run_id!r} in the store {store.display}",
                                   hint="it may have been deleted (nbdurable gc --prune-runs): refresh the list")
    for row in steps.to_dict("records"):
        by_id[row["run_id"]]["steps"].append(json_row(row))
    for row in variables.to_dict("records"):
        by_id[row["run_id"]]["variables"].append(json_row(row))
    return [by_id[run_id] for run_id in run_ids]


def compare_runs(store: Store, a: str, b: str) -> Comparison:
    """The comparison of runs ``a`` and ``b`` (see the module docstring)."""
    run_a, run_b = load_runs(store, [a, b])
    return compare(run_a, run_b)


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """A pandas record as plain JSON values: NaN/NaT/NA to None, numpy scalars to Python ones."""
    return {str(k): _value(v) for k, v in row.items()}


def _value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item") and not hasattr(value, "__len__"):  # numpy scalar
        return _value(value.item())
    try:
        import pandas

        if pandas.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


# ----------------------------------------------------------------------------------------------------
# Comparing


def compare(a: RunData, b: RunData) -> Comparison:
    """Compare two runs given as ``load_runs`` returns them (pure: no I/O)."""
    params = compare_params(_params(a["run"]), _params(b["run"]))
    steps = compare_steps(a["steps"], b["steps"])
    variables = compare_variables(final_variables(a["variables"]), final_variables(b["variables"]))
    changes = [row["change"] for row in steps]
    summary = {
        "params_changed": [p["name"] for p in params if p["differs"]],
        "steps_differ": sum(1 for row in steps if row["differs"]),
        "steps_source_changed": changes.count("source_changed"),
        "steps_status_changed": changes.count("status_changed"),
        "steps_only_in_a": changes.count("only_in_a"),
        "steps_only_in_b": changes.count("only_in_b"),
        "variables_changed": [v["name"] for v in variables if v["differs"]],
        "duration_delta_s": _delta(a["run"].get("duration_s"), b["run"].get("duration_s")),
    }
    return {"version": VERSION, "a": run_summary(a["run"]), "b": run_summary(b["run"]), "params": params,
            "steps": steps, "variables": variables, "summary": summary}


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The RunSummary of a run row."""
    keys = ("run_id", "notebook", "kind", "status", "started_at", "ended_at", "duration_s", "time_saved_s",
            "steps_total", "steps_executed", "steps_restored", "steps_failed", "resumed_from")
    return {**{k: run.get(k) for k in keys}, "params": _params(run)}


def _params(run: dict[str, Any]) -> dict[str, Any]:
    params = run.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params) if params else {}
        except ValueError:
            params = {}
    return params if isinstance(params, dict) else {}


def compare_params(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Every parameter of either run, sorted by name; values compared as JSON values."""
    rows = []
    for name in sorted({*a, *b}):
        in_a, in_b = name in a, name in b
        differs = in_a != in_b or _canonical(a.get(name)) != _canonical(b.get(name))
        rows.append({"name": name, "a": a.get(name), "b": b.get(name), "in_a": in_a, "in_b": in_b, "differs": differs})
    return rows


def _canonical(value: Any) -> str:
    # 3 and 3.0 are the same parameter value; True and 1 are not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=str)


def _delta(a: Any, b: Any) -> float | None:
    return float(b) - float(a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


# -- steps -------------------------------------------------------------------------------------------


def step_side(row: dict[str, Any]) -> dict[str, Any]:
    """A StepSide from a step row (``duration_s``: what the step took in this run)."""
    status = row.get("status") or "running"
    started, ended, recorded = row.get("started_at"), row.get("ended_at"), row.get("duration_s")
    elapsed = ended - started if isinstance(started, (int, float)) and isinstance(ended, (int, float)) else None
    duration, saved = recorded if recorded is not None else elapsed, None
    if status == "restored" and elapsed is not None:
        duration = elapsed
        saved = max(0.0, float(recorded) - elapsed) if recorded is not None else None
    error = None
    if row.get("error_ename") or row.get("error_evalue"):
        error = f"{row.get('error_ename') or 'Error'}: {row.get('error_evalue') or ''}".strip()
    return {
        "ordinal": row.get("ordinal"), "name": row.get("name"), "label": label(row.get("name"), row.get("source")),
        "status": status, "source_hash": row.get("source_hash"), "source": row.get("source") or "",
        "started_at": started, "ended_at": ended, "duration_s": duration, "time_saved_s": saved, "error": error,
    }


def match_steps(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[int | None, int | None, str | None]]:
    """Pairs of indexes into ``a`` and ``b`` (None: only in the other run), with how they were matched."""
    # A missing hash never matches anything (not even another missing hash).
    keys_a = [row.get("source_hash") or f"\0a{i}" for i, row in enumerate(a)]
    keys_b = [row.get("source_hash") or f"\0b{j}" for j, row in enumerate(b)]
    out: list[tuple[int | None, int | None, str | None]] = []
    matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            out.extend((i, j, "source") for i, j in zip(range(i1, i2), range(j1, j2), strict=True))
            continue
        left, right = list(range(i1, i2)), list(range(j1, j2))
        pairs: list[tuple[int, int, str]] = []
        for i in list(left):
            name = a[i].get("name")
            j = next((j for j in right if name and b[j].get("name") == name), None)
            if j is not None:
                pairs.append((i, j, "name"))
                left.remove(i)
                right.remove(j)
        pairs.extend((i, j, "position") for i, j in zip(left, right, strict=False))
        pairs.sort()
        out.extend(pairs)
        out.extend((i, None, None) for i in left[len(right):])
        out.extend((None, j, None) for j in right[len(left):])
    return out


def compare_steps(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """StepDiff rows (see the module docstring) for two runs' top-level step rows, by ordinal."""
    rows = []
    for i, j, how in match_steps(a, b):
        side_a = step_side(a[i]) if i is not None else None
        side_b = step_side(b[j]) if j is not None else None
        reasons: list[str] = []
        change, source_diff = "same", None
        if side_a is None:
            change, reasons = "only_in_b", ["only in b (new step)"]
        elif side_b is None:
            change, reasons = "only_in_a", ["only in a (removed step)"]
        else:
            if side_a["source_hash"] != side_b["source_hash"]:
                change = "source_changed"
                reasons.append("source changed")
                source_diff = _source_diff(side_a, side_b)
            status_a, status_b = side_a["status"], side_b["status"]
            if _SAME_STATUS.get(status_a, status_a) != _SAME_STATUS.get(status_b, status_b):
                change = "status_changed" if change == "same" else change
                reasons.append(f"status {status_a} → {status_b}")
        shown = side_b if side_b is not None else side_a
        assert shown is not None
        rows.append({
            "label": shown["label"], "a": side_a, "b": side_b, "match": how, "change": change,
            "differs": change != "same", "reasons": reasons, "source_diff": source_diff,
            "duration_delta_s": _delta(side_a and side_a["duration_s"], side_b and side_b["duration_s"]),
        })
    return rows


def _source_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    lines = difflib.unified_diff(a["source"].splitlines(), b["source"].splitlines(),
                                 f"a: step {a['ordinal']}", f"b: step {b['ordinal']}", lineterm="")
    text = "\n".join(lines)
    return text if len(text) <= _MAX_DIFF_CHARS else text[:_MAX_DIFF_CHARS] + "\n…"


# -- variables ---------------------------------------------------------------------------------------


def final_variables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A run's final variables (VarSide by name) from its variable rows (top-level steps only)."""
    state: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r.get("ordinal") or 0)):
        name = row.get("name")
        if not name:
            continue
        if row.get("op") == "del":
            state.pop(name, None)
            continue
        state[name] = {"ordinal": row.get("ordinal"), "object": row.get("object"), "type": row.get("type"),
                       "size_bytes": row.get("size_bytes"), "format": row.get("format")}
    return state


def compare_variables(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """VarDiff rows for two final states, sorted by name."""
    rows = []
    for name in sorted({*a, *b}):
        va, vb = a.get(name), b.get(name)
        fields: list[str] = []
        if va is None:
            change = "only_in_b"
        elif vb is None:
            change = "only_in_a"
        else:
            fields = [f for f in _VAR_FIELDS if va.get(f) != vb.get(f)]
            change = "changed" if fields else "same"
        rows.append({"name": name, "a": va, "b": vb, "change": change, "differs": change != "same", "fields": fields})
    return rows
