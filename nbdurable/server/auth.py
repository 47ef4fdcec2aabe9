"""The server's token: where it comes from, and the ASGI middleware that requires it on every request.

- The token is ``$NBDURABLE_TOKEN`` when set; else the one kept in ``<config>/nbdurable/server-token``
  (``$XDG_CONFIG_HOME`` or ``~/.config``), generated at the first start (mode 0600 in a 0700 directory) and
  read back at the next ones.
- A request carries it as ``Authorization: Bearer <token>`` or as the ``nbdurable_token`` cookie. Opening a
  page with ``?token=<token>`` (the URL ``nbdurable serve`` prints) sets the cookie (HttpOnly,
  SameSite=Strict) and redirects to the same page without it, as Jupyter does.
- Comparisons are constant-time (``hmac.compare_digest``). A request without the right token gets 401 before
  its body is read: nothing is stored, nothing started.
- Binding to an address other than loopback requires an explicit token (``$NBDURABLE_TOKEN``): a generated
  one lives in a file only this user reads, which a remote client cannot be expected to know the rules of.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from nbdurable.errors import OptionsError

ENV_TOKEN = "NBDURABLE_TOKEN"
COOKIE = "nbdurable_token"
MIN_TOKEN = 16  # characters of an explicit token
_Scope = dict[str, Any]
_TOKEN_HINT = f"export {ENV_TOKEN}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"


def token_path() -> Path:
    """Where a generated token is kept: ``$XDG_CONFIG_HOME/nbdurable/server-token`` (default ``~/.config``)."""
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "nbdurable" / "server-token"


def resolve_token(host: str) -> tuple[str, str]:
    """(the token, where it comes from) for a server bound to ``host``; OptionsError for a non-loopback
    bind without ``$NBDURABLE_TOKEN``, or a token too short to be one."""
    explicit = os.environ.get(ENV_TOKEN, "")
    if explicit:
        if len(explicit) < MIN_TOKEN:
            raise OptionsError(f"${ENV_TOKEN} is {len(explicit)} characters long: a token needs at least "
                               f"{MIN_TOKEN}", hint=_TOKEN_HINT)
        return explicit, f"${ENV_TOKEN}"
    if not is_loopback(host):
        raise OptionsError(f"binding to {host} (not loopback) needs an explicit token",
                           hint=f"set {ENV_TOKEN} to a long random secret and give it to the clients, or bind "
                                "--host 127.0.0.1")
    return _load_or_create(token_path()), str(token_path())


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load_or_create(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = ""
    if len(text) >= MIN_TOKEN:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # a token file others can read is no secret: take it back
        return text
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a presented token with the server's."""
    return given is not None and hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def _presented(scope: _Scope) -> tuple[str | None, str | None]:
    """(the bearer token, the cookie token) a request carries."""
    bearer = cookie = None
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, rest = value.decode("latin-1").partition(" ")
            if scheme.lower() in ("bearer", "token"):
                bearer = rest.strip()
        elif key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, _, val = part.strip().partition("=")
                if name == COOKIE:
                    cookie = val
    return bearer, cookie


class TokenMiddleware:
    """Requires the token on every HTTP request (pages, API, stream); ``?token=`` on a GET sets the cookie."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == "token"), None)
        if from_query is not None and scope["method"] == "GET" and token_matches(self.token, from_query):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            await _redirect_setting_cookie(send, scope.get("path", "/") + (f"?{rest}" if rest else ""), self.token)
            return
        bearer, cookie = _presented(scope)
        if token_matches(self.token, bearer) or token_matches(self.token, cookie):
            await self.app(scope, receive, send)
            return
        await _unauthorized(scope, send, presented=bearer is not None or cookie is not None or from_query is not None)


async def _redirect_setting_cookie(send: Any, location: str, token: str) -> None:
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
                            (b"content-length", b"0"), (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b""})


async def _unauthorized(scope: _Scope, send: Any, *, presented: bool) -> None:
    message = "wrong token" if presented else "this server requires a token"
    hint = ("send `Authorization: Bearer <token>` (the token `nbdurable serve` printed, or $NBDURABLE_TOKEN), "
            "or open the dashboard URL it printed (/?token=...)")
    if scope.get("path", "").startswith("/api/"):
        body = json.dumps({"error": message, "hint": hint, "status": 401}).encode()
        kind = b"application/json"
    else:
        body = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>nbdurable: 401</title></head><body>"
                f"<h1>401: {message}</h1><p>Open the URL <code>nbdurable serve</code> printed "
                "(it ends with <code>/?token=…</code>).</p></body></html>").encode()
        kind = b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="nbdurable"')]})
    await send({"type": "http.response.body", "body": body})
