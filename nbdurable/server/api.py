"""The JSON API: runs, events, approvals, schedules and triggers (each endpoint's docstring: its OpenAPI
entry, the YAML after ``---``).

Every blocking call (the catalog, the store, starting a process) runs on Starlette's thread pool. Errors
are ``RequestError`` (and the store's own: ``OptionsError`` 400, ``RunNotFoundError`` 404), rendered by
``app.py`` as ``{"error", "hint", "status"}``.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from nbdurable.errors import OptionsError, RequestError, RunNotFoundError
from nbdurable.server.body import read_json
from nbdurable.server.orchestration import list_schedules, list_triggers, set_paused
from nbdurable.server.state import ServerState, client_name
from nbdurable.store.journal import is_run_id

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def _state(request: Request) -> ServerState:
    return request.app.state.nbd  # type: ignore[no-any-return]


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", str(DEFAULT_LIMIT))
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_LIMIT:
        raise RequestError(f"limit must be a whole number from 0 to {MAX_LIMIT}, not {text!r}", status=400)
    return value


def _run_id(request: Request) -> str:
    run_id = str(request.path_params["run_id"])
    if not is_run_id(run_id) or not _state(request).store.journal_exists(run_id):
        if is_run_id(run_id) and _state(request).launcher.launched(run_id) is not None:
            return run_id
        raise RequestError(f"no run {run_id!r} in the store", status=404,
                           hint="GET /api/runs lists the runs (their ids look like 20240501T120000123-a1b2c3)")
    return run_id


async def list_runs(request: Request) -> Response:
    """Runs, newest first, filtered as the history explorer filters them.
    ---
    summary: List runs
    parameters:
      - {name: notebook, in: query, schema: {type: string}, description: "name or path; * and ? glob"}
      - {name: status, in: query, schema: {type: string}}
      - {name: params, in: query, schema: {type: string}, description: "e.g. lr=0.1, epochs>=3"}
      - {name: since, in: query, schema: {type: string}, description: "date, ISO time, unix seconds or 24h/7d ago"}
      - {name: until, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, default: 100, maximum: 1000}}
    responses:
      200: {description: "{runs: [run rows], total: runs matching}"}
      400: {description: a filter that does not parse}
    """
    from nbdurable.widgets.history import FILTER_KEYS, filters_query, run_row

    filters = {key: request.query_params.get(key, "") for key in FILTER_KEYS}
    limit = _limit(request)
    sql, args = filters_query(filters, limit=limit)
    store = _state(request).store
    frame = await run_in_threadpool(store.catalog().query, sql, args)
    rows = frame.to_dict("records")
    total = int(rows[0]["total"]) if rows else 0
    return JSONResponse({"runs": [run_row(r) for r in rows], "total": total})


async def get_run(request: Request) -> Response:
    """One run: its catalog row, lineage and graph (steps with their attempts, variables and errors).
    ---
    summary: Show a run
    responses:
      200: {description: "{run, lineage, graph}; a run this server started whose journal does not exist yet:
        {run: {status: starting | failed to start}}"}
      404: {description: no such run}
    """
    run_id = _run_id(request)
    state = _state(request)
    launch = state.launcher.launched(run_id)
    if not state.store.journal_exists(run_id) and launch is not None:
        return JSONResponse({"run": launch.state(), "lineage": {}, "graph": None})
    return JSONResponse(await run_in_threadpool(state.run_details, run_id))


async def start_run(request: Request) -> Response:
    """Start a headless run of a notebook under the server's root.
    ---
    summary: Start a run
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [notebook]
            properties:
              notebook: {type: string, description: path relative to --root}
              params: {type: object, description: the run's parameters}
              fresh: {type: boolean, description: "start fresh even if an unfinished run of it exists"}
    responses:
      202: {description: "{run_id, pid, status: starting}"}
      400: {description: malformed body}
      403: {description: notebook outside the root}
      404: {description: no such notebook}
    """
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object", status=400, hint='e.g. {"notebook": "a.ipynb"}')
    state = _state(request)
    notebook = state.launcher.notebook(body.get("notebook"))
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError("params must be a JSON object of parameter values", status=400,
                           hint='e.g. {"params": {"region": "eu"}}')
    launch = await run_in_threadpool(state.launcher.start_run, notebook, params, fresh=bool(body.get("fresh")))
    return JSONResponse({"run_id": launch.run_id, "pid": launch.process.pid, "status": "starting"}, status_code=202)


async def cancel_run(request: Request) -> Response:
    """Cancel a run (the newest run resuming it, if one does).
    ---
    summary: Cancel a run
    requestBody: {content: {application/json: {schema: {type: object, properties: {reason: {type: string}}}}}}
    responses:
      200: {description: "{run_id, status: cancelled | requested, message}"}
      404: {description: no such run}
      409: {description: the run already finished (completed or cancelled)}
    """
    run_id = _run_id(request)
    body = await read_json(request, required=False) or {}
    reason = body.get("reason") if isinstance(body, dict) else None
    by = client_name(request.client.host if request.client else None)
    outcome = await run_in_threadpool(_state(request).cancel, run_id, str(reason) if reason else None, by)
    return JSONResponse(outcome)


async def resume_run(request: Request) -> Response:
    """Resume a run that stopped (suspended, failed, interrupted, crashed) in a new process.
    ---
    summary: Resume a run
    requestBody: {content: {application/json: {schema: {type: object, properties: {force: {type: boolean}}}}}}
    responses:
      202: {description: "{run_id (the new run), resumes, pid, status: starting}"}
      404: {description: no such run}
      409: {description: "the run completed, is live, was resumed, or was cancelled (force: true resumes it)"}
    """
    run_id = _run_id(request)
    body = await read_json(request, required=False) or {}
    force = bool(body.get("force")) if isinstance(body, dict) else False
    state = _state(request)
    await run_in_threadpool(state.check_resumable, run_id, force)
    launch = await run_in_threadpool(state.launcher.resume, run_id, force=force)
    return JSONResponse({"run_id": launch.run_id, "resumes": run_id, "pid": launch.process.pid,
                         "status": "starting"}, status_code=202)


async def rerun_run(request: Request) -> Response:
    """Run a run's notebook again with its parameters (cells before from_cell restored as recorded).
    ---
    summary: Rerun a run
    requestBody:
      content: {application/json: {schema: {type: object, properties: {from_cell: {type: integer, minimum: 1}}}}}
    responses:
      202: {description: "{run_id (the new run), rerun_of, pid, status: starting}"}
      404: {description: no such run}
    """
    run_id = _run_id(request)
    body = await read_json(request, required=False) or {}
    from_cell = body.get("from_cell", 1) if isinstance(body, dict) else 1
    if not isinstance(from_cell, int) or isinstance(from_cell, bool) or from_cell < 1:
        raise RequestError(f"from_cell must be a cell number (1 or more), not {from_cell!r}", status=400)
    launch = await run_in_threadpool(_state(request).launcher.rerun, run_id, from_cell)
    return JSONResponse({"run_id": launch.run_id, "rerun_of": run_id, "pid": launch.process.pid,
                         "status": "starting"}, status_code=202)


async def run_report(request: Request) -> Response:
    """A run's self-contained HTML report (as `nbdurable report` writes it).
    ---
    summary: A run's HTML report
    responses:
      200: {description: text/html}
      404: {description: no such run}
    """
    from nbdurable.report import report_html
    from nbdurable.widgets.graph import build_graph

    run_id = _run_id(request)
    graph = await run_in_threadpool(build_graph, _state(request).store, run_id)
    return HTMLResponse(report_html(graph))


async def post_event(request: Request) -> Response:
    """Send the event NAME; the body is its data (any JSON; empty: null). Durable before the reply.
    ---
    summary: Send an event
    parameters:
      - {name: Idempotency-Key, in: header, schema: {type: string, maxLength: 200},
         description: "a second POST with the same key stores nothing and answers the first event's id"}
    responses:
      202: {description: "{id, name, duplicate: false}: stored (fsync'ed)"}
      200: {description: "{id, name, duplicate: true}: the key was used before; nothing stored"}
      400: {description: malformed JSON or a bad event name}
      413: {description: body over the limit (1 MiB)}
    """
    name = str(request.path_params["name"])
    data = await read_json(request, required=False)
    key = request.headers.get("idempotency-key")
    if key is None:
        event, stored = await _state(request).events.send(name, data), True
    else:
        event, stored = await run_in_threadpool(_state(request).send_event_once, name, data, key)
    return JSONResponse({"id": event["id"], "name": event["name"], "duplicate": not stored},
                        status_code=202 if stored else 200)


async def list_events(request: Request) -> Response:
    """Stored events, newest first.
    ---
    summary: List events
    parameters:
      - {name: name, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, default: 100, maximum: 1000}}
    responses:
      200: {description: "{events: [{id, name, data, sent_at, sender}]}"}
    """
    limit = _limit(request)
    name = request.query_params.get("name") or None
    events = await run_in_threadpool(_state(request).recent_events, name, limit)
    return JSONResponse({"events": events})


async def list_approvals(request: Request) -> Response:
    """The runs waiting for an event (suspended on `nbd.wait_for_event`): what Approve/Reject releases.
    ---
    summary: Pending approvals
    responses:
      200: {description: "{approvals: [{run_id, notebook, event, match, timeout_at}]}"}
    """
    return JSONResponse({"approvals": await run_in_threadpool(_state(request).pending_approvals)})


async def post_approval(request: Request) -> Response:
    """Approve or reject a wait: sends the event WAIT with {**match, **payload, approved} (as the approval widget).
    ---
    summary: Approve or reject
    parameters:
      - {name: Idempotency-Key, in: header, schema: {type: string, maxLength: 200}}
    requestBody:
      content:
        application/json:
          schema:
            type: object
            required: [approved]
            properties:
              approved: {type: boolean}
              payload: {type: object}
              run_id: {type: string, description: "the waiting run whose match to include"}
    responses:
      202: {description: "{id, event, data, waiting_runs}"}
      400: {description: malformed body}
      404: {description: run_id given but it does not wait for WAIT}
    """
    wait = str(request.path_params["wait"])
    body = await read_json(request, required=True)
    if not isinstance(body, dict) or not isinstance(body.get("approved"), bool):
        raise RequestError('the body must be a JSON object with "approved": true or false', status=400,
                           hint='e.g. {"approved": true, "payload": {"comment": "looks good"}}')
    payload = body.get("payload") or {}
    if not isinstance(payload, dict):
        raise RequestError("payload must be a JSON object", status=400, hint='e.g. {"comment": "looks good"}')
    key = request.headers.get("idempotency-key")
    answer = await run_in_threadpool(_state(request).approve, wait, body["approved"], payload, body.get("run_id"), key)
    return JSONResponse(answer, status_code=202)


async def schedules(request: Request) -> Response:
    """Schedules with their next fire times (issue 17).
    ---
    summary: List schedules
    responses:
      200: {description: "{schedules: [...]}"}
    """
    return JSONResponse({"schedules": await run_in_threadpool(list_schedules, _state(request).store)})


async def pause_schedule(request: Request) -> Response:
    """Pause or resume a schedule (the path ends with /pause or /resume).
    ---
    summary: Pause or resume a schedule
    responses:
      200: {description: "{schedule: {...}}"}
      404: {description: no such schedule}
    """
    paused = request.url.path.endswith("/pause")
    name = str(request.path_params["name"])
    return JSONResponse({"schedule": await run_in_threadpool(set_paused, _state(request).store, name, paused)})


async def triggers(request: Request) -> Response:
    """Event triggers.
    ---
    summary: List triggers
    responses:
      200: {description: "{triggers: [...]}"}
    """
    return JSONResponse({"triggers": await run_in_threadpool(list_triggers, _state(request).store)})


def error_body(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of an error raised while serving."""
    if isinstance(exc, RequestError):
        status = exc.status
    elif isinstance(exc, RunNotFoundError):
        status = 404
    elif isinstance(exc, OptionsError):
        status = 400
    else:
        status = 500
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return status, {"error": message, "hint": getattr(exc, "hint", None), "status": status}
