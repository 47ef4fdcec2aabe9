"""What the server knows and does, apart from HTTP: its store, root and launcher, and the blocking operations
the API calls on the thread pool (a run's details, cancel, resume checks, events, approvals)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbdurable.errors import OptionsError, RequestError
from nbdurable.runtime.control import cancel_run, chain_head
from nbdurable.runtime.replay import journal_status
from nbdurable.server.batch import EventBatcher
from nbdurable.server.launch import Launcher
from nbdurable.store import Store

_APPROVALS_SQL = (
    "SELECT run_id, notebook, epoch(started_at) AS started_at, waiting_for FROM runs r "
    "WHERE status = 'suspended' AND waiting_for IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM runs s WHERE s.resumed_from = r.run_id) ORDER BY run_id DESC LIMIT 200"
)
_LINEAGE_SQL = "SELECT run_id, resumed_from, forked_from FROM runs WHERE resumed_from = ? OR forked_from = ?"


@dataclass
class ServerState:
    """The server's store, the root its notebooks must lie under, and the runs it started."""

    store: Store
    root: Path
    launcher: Launcher
    events: EventBatcher

    @classmethod
    def open(cls, store: Store, root: Path) -> ServerState:
        """The state of a server on ``store`` confined to ``root``."""
        return cls(store, root.resolve(), Launcher(store, root), EventBatcher(store))

    def run_details(self, run_id: str) -> dict[str, Any]:
        """``GET /api/runs/{id}``: the run (as its graph's header), its lineage and its graph."""
        from nbdurable.widgets.graph import build_graph

        graph = build_graph(self.store, run_id)
        later = self.store.catalog().query(_LINEAGE_SQL, [run_id, run_id], ingest=False).to_dict("records")
        head = self.store.journal_head(run_id) or {}
        run = graph["run"]
        lineage = {
            "resumed_from": run.get("resumed_from"), "forked_from": run.get("forked_from"),
            "forked_at_cell": run.get("forked_at_cell"), "root_run": head.get("root_run"),
            "origin": head.get("origin"),
            "resumed_by": sorted(r["run_id"] for r in later if r["resumed_from"] == run_id),
            "forked_into": sorted(r["run_id"] for r in later if r["forked_from"] == run_id),
        }
        return {"run": {**run, "notebook_path": head.get("notebook_path")}, "lineage": lineage, "graph": graph}

    def cancel(self, run_id: str, reason: str | None, by: str) -> dict[str, Any]:
        """``POST /api/runs/{id}/cancel``: 409 for a run that completed or was cancelled already."""
        try:
            outcome = cancel_run(self.store, run_id, reason=reason, by=by)
        except OptionsError as exc:
            raise RequestError(exc.message, status=409, hint=exc.hint) from None
        if outcome.already:
            raise RequestError(outcome.describe(), status=409, hint="a cancelled run stays cancelled")
        return {"run_id": outcome.run_id, "named": outcome.named, "status": outcome.status,
                "message": outcome.describe()}

    def check_resumable(self, run_id: str, force: bool) -> None:
        """RequestError 409 unless ``run_id`` can be resumed now."""
        newest = chain_head(self.store, run_id)
        if newest != run_id:
            raise RequestError(f"run {run_id} was resumed by run {newest}", status=409,
                               hint=f"resume run {newest} instead, if it stopped")
        status, _ = journal_status(self.store, run_id)
        if status == "completed":
            raise RequestError(f"run {run_id} completed: there is nothing to resume", status=409,
                               hint="rerun it (POST /api/runs/{id}/rerun) to run it again")
        if status == "running":
            raise RequestError(f"run {run_id} is running", status=409, hint="wait for it to stop, or cancel it")
        if status == "cancelled" and not force:
            raise RequestError(f"run {run_id} was cancelled", status=409,
                               hint='send {"force": true} to resume it anyway')

    def send_event_once(self, name: str, data: Any, key: str) -> tuple[dict[str, Any], bool]:
        """Store an event at most once per idempotency key; (the event, stored now). Events without a key go
        through ``events`` (the group commit)."""
        return self.store.send_event_once(name, data, key)

    def recent_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events (called ``name``), newest first; damaged files left out."""
        found: list[dict[str, Any]] = []
        for event_id in reversed(self.store.event_ids()):
            if len(found) >= limit:
                break
            event = self.store.read_event(event_id)
            if event is not None and (name is None or event.get("name") == name):
                found.append(event)
        return found

    def pending_approvals(self) -> list[dict[str, Any]]:
        """Suspended runs waiting for an event that no later run resumed (newest first)."""
        import json

        rows = self.store.catalog().query(_APPROVALS_SQL).to_dict("records")
        out = []
        for row in rows:
            waiting = json.loads(row["waiting_for"]) if isinstance(row["waiting_for"], str) else {}
            out.append({"run_id": row["run_id"], "notebook": row["notebook"], "started_at": row["started_at"],
                        "event": waiting.get("name"), "match": waiting.get("match"),
                        "timeout_at": waiting.get("timeout_at")})
        return out

    def approve(self, wait: str, approved: bool, payload: dict[str, Any], run_id: Any,
                key: str | None) -> dict[str, Any]:
        """Send the approval event ``wait`` as the approval widget does: ``{**match, **payload, approved}``,
        ``match`` being the waiting run's (``run_id``, else the one pending run waiting for ``wait``)."""
        waiting = [a for a in self.pending_approvals() if a["event"] == wait]
        if run_id is not None:
            waiting = [a for a in waiting if a["run_id"] == run_id]
            if not waiting:
                raise RequestError(f"run {run_id!r} does not wait for the event {wait!r}", status=404,
                                   hint="GET /api/approvals lists the runs waiting for an event")
        match = waiting[0]["match"] if len(waiting) == 1 and isinstance(waiting[0]["match"], dict) else {}
        data = {**match, **payload, "approved": approved}
        event = self.store.send_event(wait, data) if key is None else self.send_event_once(wait, data, key)[0]
        return {"id": event["id"], "event": wait, "data": event["data"],
                "waiting_runs": [a["run_id"] for a in waiting]}


def client_name(host: str | None) -> str:
    """Who a request came from, for a cancel record."""
    return f"nbdurable serve on {socket.gethostname()} (client {host or 'unknown'})"
