"""The server's own spans: one ``SERVER`` span per HTTP request (method, path, status), when OpenTelemetry traces
are asked for (``runtime/tracing.py``'s provider: the OTEL_* variables, or ``use_provider``). The runs the server
starts and resumes emit their run → cell → step → attempt spans from their kernels, which inherit the variables.
"""

from __future__ import annotations

from typing import Any

_Scope = dict[str, Any]


class RequestSpans:
    """ASGI middleware: a span around each HTTP request (outermost: a 401 is traced too)."""

    def __init__(self, app: Any, provider: Any) -> None:
        self.app = app
        self.tracer = provider.get_tracer("nbdurable.server")

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        status = [0]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        attributes = {"http.request.method": scope["method"], "url.path": scope.get("path", "")}
        with self.tracer.start_as_current_span(f"HTTP {scope['method']}", kind=SpanKind.SERVER,
                                               attributes=attributes) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500 or status[0] == 0:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status[0] or 'no response'}"))
