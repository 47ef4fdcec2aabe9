"""Journal records -> catalog rows: ``Batch`` merges the new records of several journals in Python
(one ``on_<record type>`` handler each; the variables, outputs and objects of a ``step_end`` become rows
of their own tables), ready for ``bulk.apply_batch`` to apply in one transaction.

Rows are dicts keyed by column name (``schema.COLUMNS``); timestamps are integer microseconds, naive UTC.
"""

from __future__ import annotations

import json
from typing import Any

from ..records import error_with_traceback, run_end_status
from .schema import STEP_END_COLUMNS

CANCEL_COLUMNS = ("cancelled_by", "cancel_reason", "cancel_requested_at")  # of a run's last run_end


def unix_us(ts: Any) -> int | None:
    """Unix seconds -> integer microseconds (Arrow timestamp[us], naive UTC)."""
    return int(ts * 1_000_000) if isinstance(ts, (int, float)) else None


def _text(value: Any) -> str | None:
    """nbformat multiline strings may be lists of lines."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return str(value)


class Batch:
    """Rows from the new records of several journals, merged in Python, applied in one transaction."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}  # runs whose `run` record is in this batch: full rows
        self.run_updates: dict[str, dict[str, Any]] = {}  # other runs touched by this batch
        self.steps: dict[tuple[str, int], dict[str, Any]] = {}
        self.variables: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self.outputs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.attempts: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.consumed: dict[tuple[str, int, str], dict[str, Any]] = {}
        # run -> (byte_offset, last_seq, final_offset, reopened)
        self.state: dict[str, tuple[int, int, int | None, bool]] = {}
        self.count = 0

    def add_journal(self, run_id: str, records: list[dict[str, Any]], end_offset: int, last_seq: int,
                    final_offset: int | None = None, reopened: bool = False) -> int:
        """Merge a journal's new records (those with seq > last_seq); returns how many were new.

        The journal is finished (``final_offset`` set) once its ``run_end`` is ingested, unless reopened."""
        new = 0
        ended = final_offset is not None
        for record in records:
            seq = record.get("seq")
            if isinstance(seq, int) and seq <= last_seq:
                continue  # already ingested: idempotence is keyed by (run, seq)
            new += 1
            if isinstance(seq, int):
                last_seq = seq
            kind = record.get("t")
            ended = ended or kind == "run_end"
            handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
            if handler is not None:  # unknown record types (from newer writers) are skipped, not fatal
                handler(self, run_id, record)
        if new and run_id not in self.runs:
            self._run_update(run_id)  # so that a run marked crashed and still writing goes back to running
        self.state[run_id] = (end_offset, last_seq, end_offset if ended and not reopened else None, reopened)
        self.count += new
        return new

    def _run_update(self, run_id: str) -> dict[str, Any]:
        if run_id in self.runs:
            return self.runs[run_id]
        return self.run_updates.setdefault(
            run_id, {"run_id": run_id, "status": None, "ended_at": None, "superseded_by": None, "wake_at": None,
                     "waiting_for": None, **dict.fromkeys(CANCEL_COLUMNS), "time_skipped": None}
        )

    def on_run(self, run_id: str, r: dict[str, Any]) -> None:
        env = r.get("environment") or {}
        pid = env.get("pid")
        self.run_updates.pop(run_id, None)
        self.runs[run_id] = {
            "run_id": run_id, "notebook": r.get("notebook"), "notebook_path": r.get("notebook_path"),
            "kind": r.get("kind"), "params": json.dumps(r.get("params") or {}, sort_keys=True), "status": "running",
            "started_at": unix_us(r.get("ts")), "ended_at": None, "pid": pid if isinstance(pid, int) else None,
            "host": env.get("host"), "resumed_from": r.get("resumed_from"), "root_run": r.get("root_run") or run_id,
            "superseded_by": None, "steps_total": 0, "steps_executed": 0, "steps_restored": 0, "steps_failed": 0,
            "time_saved_s": 0.0, "duration_s": None, "wake_at": None, "waiting_for": None,
            **dict.fromkeys(CANCEL_COLUMNS),
            "time_skipped": bool(r.get("time_skipped")),
            "forked_from": r.get("forked_from"),
            "forked_at_cell": r["forked_at_cell"] if isinstance(r.get("forked_at_cell"), int) else None,
            **_origin_columns(r.get("origin")),
        }

    def on_run_end(self, run_id: str, r: dict[str, Any]) -> None:
        row = self._run_update(run_id)
        row["status"], row["ended_at"] = run_end_status(r), unix_us(r.get("ts"))
        cancel: dict[str, Any] = r["cancel"] if isinstance(r.get("cancel"), dict) else {}
        row["cancelled_by"], row["cancel_reason"] = cancel.get("by"), cancel.get("reason")
        row["cancel_requested_at"] = unix_us(cancel.get("requested_at"))
        waiting = r.get("waiting_for")
        row["wake_at"], row["waiting_for"] = (unix_us(r.get("wake_at")),
                                              json.dumps(waiting, sort_keys=True) if waiting else None)

    def on_attempt(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int) or not isinstance(r.get("attempt"), int):
            return
        error = r.get("error") or {}
        self.attempts[(run_id, r["ordinal"], r["attempt"])] = {
            "run_id": run_id, "ordinal": r["ordinal"], "attempt": r["attempt"],
            "started_at": unix_us(r.get("started_at")), "ended_at": unix_us(r.get("ended_at")),
            "error_ename": error.get("ename"), "error_evalue": _text(error.get("evalue")),
            "next_delay_s": r.get("next_delay"),
        }

    def on_consumed(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int) or not isinstance(r.get("event"), str):
            return
        self.consumed[(run_id, r["ordinal"], r["event"])] = {
            "run_id": run_id, "ordinal": r["ordinal"], "event_id": r["event"], "name": r.get("name"),
            "consumed_at": unix_us(r.get("ts")),
        }

    def on_time_skip(self, run_id: str, r: dict[str, Any]) -> None:
        self._run_update(run_id)["time_skipped"] = True

    def on_superseded(self, run_id: str, r: dict[str, Any]) -> None:
        self._run_update(run_id)["superseded_by"] = r.get("by")

    def on_step_start(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int):
            return  # malformed: nothing to key it by
        key = (run_id, r["ordinal"])
        options = r.get("options") or {}
        # A (re)started step replaces whatever an earlier attempt left: full row, no variables/outputs yet.
        self.steps[key] = {
            "run_id": run_id, "ordinal": key[1], "name": r.get("name"), "parent": r.get("parent"),
            "source": r.get("source"), "source_hash": r.get("source_hash"), "status": "running",
            "started_at": unix_us(r.get("ts")), "always": bool(options.get("always", False)),
            "no_state": bool(options.get("no_state", False)), "_full": True,
            **dict.fromkeys(STEP_END_COLUMNS[2:]),
        }
        self.variables[key] = {}
        self.outputs[key] = []

    def on_step_end(self, run_id: str, r: dict[str, Any]) -> None:
        if not isinstance(r.get("ordinal"), int):
            return
        key = (run_id, r["ordinal"])
        row = self.steps.setdefault(key, {"run_id": run_id, "ordinal": key[1], "_full": False})
        error = error_with_traceback(r.get("error"), r.get("outputs")) or {}
        origin = r.get("restored_from") or {}
        row.update(
            status=r.get("status"), started_at=unix_us(r.get("started_at")), ended_at=unix_us(r.get("ended_at")),
            duration_s=r.get("duration"), error_ename=error.get("ename"), error_evalue=_text(error.get("evalue")),
            error_traceback="\n".join(map(str, tb)) if isinstance(tb := error.get("traceback"), list) else _text(tb),
            restored_from_run=origin.get("run_id") or origin.get("run"), restored_from_ordinal=origin.get("ordinal"),
        )
        self.variables[key] = {v["name"]: self._variable(key, v) for v in r.get("variables") or []
                               if isinstance(v, dict) and v.get("name")}
        self.outputs[key] = [self._output(key, i, o) for i, o in enumerate(r.get("outputs") or [])
                             if isinstance(o, dict)]

    def _variable(self, key: tuple[str, int], v: dict[str, Any]) -> dict[str, Any]:
        if v.get("object"):
            self._object(v["object"], v.get("format"), v.get("size"), v.get("inline") is not None, key)
        return {
            "run_id": key[0], "ordinal": key[1], "name": v["name"], "op": v.get("op"), "object": v.get("object"),
            "format": v.get("format"), "type": v.get("type"), "size_bytes": v.get("size"),
            "instance": v.get("instance"), "reason": v.get("reason"),
        }

    def _output(self, key: tuple[str, int], idx: int, o: dict[str, Any]) -> dict[str, Any]:
        kind = o.get("output_type")
        data = o.get("data") if isinstance(o.get("data"), dict) else None
        name = o.get("name") if kind == "stream" else o.get("ename") if kind == "error" else None
        text = _text(o.get("text")) if kind == "stream" else _text(o.get("evalue")) if kind == "error" else None
        if data is not None:
            text = _text(data.get("text/plain"))
        if kind == "object" and o.get("object"):
            self._object(o["object"], o.get("format"), o.get("size"), False, key)
            data = {"object": o["object"]}
        return {
            "run_id": key[0], "ordinal": key[1], "idx": idx, "output_type": kind, "name": name,
            "mime_types": list(data) if data is not None and kind != "object" else None, "text": text,
            "data": json.dumps(data) if data is not None else None,
        }

    def _object(self, obj: str, fmt: Any, size: Any, inline: bool, key: tuple[str, int]) -> None:
        row = self.objects.get(obj)
        if row is None:
            self.objects[obj] = {"object": obj, "format": fmt, "size_bytes": size, "inline": inline,
                                 "first_run": key[0], "first_ordinal": key[1]}
            return
        # Order-independent merge (same rule as the SQL upsert), so incremental ingest equals a rebuild.
        row["inline"] = row["inline"] and inline
        row["format"] = row["format"] if row["format"] is not None else fmt
        row["size_bytes"] = row["size_bytes"] if row["size_bytes"] is not None else size
        if (key[0], key[1]) < (row["first_run"], row["first_ordinal"]):
            row["first_run"], row["first_ordinal"] = key


_HANDLERS = {
    "run": Batch.on_run, "run_end": Batch.on_run_end, "superseded": Batch.on_superseded,
    "step_start": Batch.on_step_start, "step_end": Batch.on_step_end, "attempt": Batch.on_attempt,
    "consumed": Batch.on_consumed, "time_skip": Batch.on_time_skip,
}


def _origin_columns(origin: Any) -> dict[str, Any]:
    """A run's ``origin`` (what started it) as the ``runs`` columns: the whole JSON and the names filtered on."""
    if not isinstance(origin, dict):
        return {"origin": None, "schedule": None, "trigger": None, "parent_run": None}
    named = {key: origin[key] if isinstance(origin.get(key), str) else None
             for key in ("schedule", "trigger", "parent_run")}
    return {"origin": json.dumps(origin, sort_keys=True, default=str), **named}

