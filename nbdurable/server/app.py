"""The ASGI application of ``nbdurable serve``: routes, errors as JSON, the token, and what runs for the
server's lifetime (the engine, ``engine.py``; the stream's watcher, ``stream.py``).

``create_app(store, root, token)`` builds it; ``nbdurable serve`` runs it on uvicorn. Every route requires
the token (``auth.py``). The OpenAPI schema (``/api/openapi.json``) is generated from the endpoints'
docstrings.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from nbdurable._version import __version__
from nbdurable.errors import NbdurableError
from nbdurable.runtime import tracing
from nbdurable.server import api
from nbdurable.server.auth import TokenMiddleware
from nbdurable.server.dashboard import dashboard
from nbdurable.server.engine import ENGINE, Engine
from nbdurable.server.state import ServerState
from nbdurable.server.stream import Watcher, stream
from nbdurable.server.telemetry import RequestSpans
from nbdurable.store import Store

SCHEMAS = SchemaGenerator({
    "openapi": "3.0.3",
    "info": {"title": "nbdurable serve", "version": __version__,
             "description": "Runs, events and approvals of an nbdurable store. Every call needs the token: "
                            "`Authorization: Bearer <token>`. Errors: {error, hint, status}."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
})


async def openapi(request: Request) -> Response:
    """The OpenAPI schema of this API.
    ---
    summary: OpenAPI schema
    responses:
      200: {description: application/json}
    """
    return JSONResponse(SCHEMAS.get_schema(routes=request.app.routes))


ROUTES = [
    Route("/", dashboard, methods=["GET"]),
    Route("/api/openapi.json", openapi, methods=["GET"]),
    Route("/api/runs", api.list_runs, methods=["GET"]),
    Route("/api/runs", api.start_run, methods=["POST"]),
    Route("/api/runs/{run_id}", api.get_run, methods=["GET"]),
    Route("/api/runs/{run_id}/cancel", api.cancel_run, methods=["POST"]),
    Route("/api/runs/{run_id}/resume", api.resume_run, methods=["POST"]),
    Route("/api/runs/{run_id}/rerun", api.rerun_run, methods=["POST"]),
    Route("/api/runs/{run_id}/report", api.run_report, methods=["GET"]),
    Route("/api/events", api.list_events, methods=["GET"]),
    Route("/api/events/{name:path}", api.post_event, methods=["POST"]),
    Route("/api/approvals", api.list_approvals, methods=["GET"]),
    Route("/api/approvals/{wait:path}", api.post_approval, methods=["POST"]),
    Route("/api/schedules", api.schedules, methods=["GET"]),
    Route("/api/schedules/{name}/pause", api.pause_schedule, methods=["POST"]),
    Route("/api/schedules/{name}/resume", api.pause_schedule, methods=["POST"]),
    Route("/api/triggers", api.triggers, methods=["GET"]),
    Route("/api/stream", stream, methods=["GET"]),
]


async def _error(request: Request, exc: Exception) -> Response:
    status, body = api.error_body(exc)
    if status == 500:
        print(f"nbdurable serve: {request.method} {request.url.path} failed: {exc!r}", file=sys.stderr)
    return JSONResponse(body, status_code=status)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", "") or "")
    hint = "GET /api/openapi.json lists the endpoints" if status in (404, 405) else None
    return JSONResponse({"error": detail or "request failed", "hint": hint, "status": status}, status_code=status)


def _log(message: str) -> None:
    print(f"nbdurable serve: {message}", file=sys.stderr, flush=True)


def create_app(store: Store, root: Path, token: str, *, engine: Callable[..., Engine] | None = ENGINE,
               log: Callable[[str], None] = _log) -> Starlette:
    """The application serving ``store`` (notebooks confined to ``root``), requiring ``token``; ``engine``
    (default: ``engine.ENGINE``) runs for the server's lifetime (None: no engine)."""
    from starlette.exceptions import HTTPException

    state = ServerState.open(store, root)
    watcher = Watcher(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        running = engine(store, log=log) if engine is not None else None
        if running is not None:
            running.start()
        watcher.start()
        try:
            yield
        finally:
            await watcher.stop()
            if running is not None:
                running.stop()
            state.events.stop()
            state.launcher.stop()

    middleware = [Middleware(TokenMiddleware, token=token)]
    provider = tracing.chosen_provider()
    if provider is not None:  # OpenTelemetry asked for: a span per request, outermost
        middleware.insert(0, Middleware(RequestSpans, provider=provider))
    app = Starlette(routes=ROUTES, lifespan=lifespan, middleware=middleware,
                    exception_handlers={NbdurableError: _error, HTTPException: _http_error, Exception: _error})
    app.state.nbd = state
    app.state.watcher = watcher
    return app


def schema(app: Any) -> dict[str, Any]:
    """The OpenAPI schema of ``app`` (for the README and tests)."""
    return SCHEMAS.get_schema(routes=app.routes)
