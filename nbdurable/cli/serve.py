"""``nbdurable serve``: the HTTP API, the dashboard and the engine (``nbdurable/server/``) on uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nbdurable.cli.base import main
from nbdurable.errors import OptionsError


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs $NBDURABLE_TOKEN.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to bind.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=".",
              help="The directory whose notebooks the API may run (paths outside it are refused). Default: the "
              "working directory.")
@click.option("--store", "store", metavar="DIR", default=None,
              help="The store directory. Default: $NBDURABLE_STORE if set, else ROOT/.nbdurable (created).")
@click.option("--no-engine", is_flag=True, help="Serve only: do not resume suspended runs in this process.")
def serve(host: str, port: int, root: Path, store: str | None, no_engine: bool) -> None:
    """Serve the HTTP API and the live dashboard of a store, and resume its suspended runs when due.

    Every request needs the token: $NBDURABLE_TOKEN, else one generated at the first start and kept (0600) in
    ~/.config/nbdurable/server-token. The dashboard URL printed at start carries it (/?token=..., which
    sets a cookie). Ctrl-C stops the server; runs it started go on."""
    try:
        import uvicorn

        from nbdurable.server.app import create_app
        from nbdurable.server.auth import resolve_token
        from nbdurable.server.engine import ENGINE
    except ImportError as exc:
        raise OptionsError(f"nbdurable serve needs the [serve] extra ({exc.name} is missing)",
                           hint="pip install 'nbdurable[serve]'") from None
    from nbdurable.runtime.session import ENV_STORE
    from nbdurable.store import Store

    token, source = resolve_token(host)
    root = root.resolve()
    path = Path(store or os.environ.get(ENV_STORE) or root / ".nbdurable").expanduser()
    opened = Store.open(path, create=True)
    app = create_app(opened, root, token, engine=None if no_engine else ENGINE)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"nbdurable serve: store {opened.path}, root {root}", err=True)
    click.echo(f"nbdurable serve: token from {source}", err=True)
    click.echo(f"nbdurable serve: dashboard http://{shown}:{port}/?token={token}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5)

