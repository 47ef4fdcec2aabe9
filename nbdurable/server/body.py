"""Request bodies: at most ``MAX_BODY`` bytes (413 beyond, whether announced by Content-Length or streamed),
read as UTF-8 JSON (400 with the parser's message when it is not)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from nbdurable.errors import RequestError

MAX_BODY = 1024 * 1024  # bytes: an event's data, a run's parameters (documented in the README)
_TOO_LARGE_HINT = f"send at most {MAX_BODY} bytes (1 MiB): keep big data in files and send their paths"


async def read_body(request: Request) -> bytes:
    """The body, or RequestError 413 once it passes MAX_BODY (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise RequestError(f"the body is {int(declared)} bytes: the limit is {MAX_BODY}", status=413,
                           hint=_TOO_LARGE_HINT)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(f"the body is over the limit of {MAX_BODY} bytes", status=413, hint=_TOO_LARGE_HINT)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, *, required: bool) -> Any:
    """The body as JSON; an empty body is None (RequestError 400 when ``required``)."""
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise RequestError("the request needs a JSON body", status=400, hint="send Content-Type: application/json")
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})", status=400,
                           hint="send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"the body is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", status=400,
                           hint='send JSON, e.g. {"week": 47}') from None
    except RecursionError:
        raise RequestError("the body is nested too deeply to be read as JSON", status=400,
                           hint="send flatter data") from None
