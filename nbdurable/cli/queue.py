"""``nbdurable submit`` (a run into a queue, started by a worker) and ``nbdurable queue set|list`` (a queue's
concurrency across every worker of the store).

A submitted run is a claim (``store/claims.py``, kind ``submit``, keyed by the run id chosen here): durable
when ``submit`` returns, started exactly once by whichever ``nbdurable worker`` takes it first (on a shared
store any number of workers on any machines, each taking with ``SELECT ... FOR UPDATE SKIP LOCKED``), and
resumed from its last committed cell by another worker if the one running it dies.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from nbdurable.cli.base import AtLeast, main, open_store, store_option
from nbdurable.errors import OptionsError

SUBMIT_KIND = "submit"


@main.command("submit")
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-p", "--parameter", "parameters", nargs=2, multiple=True, metavar="NAME VALUE",
              help="A parameter (typed like papermill: True/False/None/int/float, else str). Repeatable.")
@click.option("-f", "--parameters-file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of parameters. Repeatable; -p wins.")
@click.option("--queue", "queue", default="default", metavar="NAME",
              help="The queue to put the run in (default: default). `nbdurable worker --queue NAME` serves only "
                   "some queues; `nbdurable queue set NAME --concurrency N` bounds one.")
@click.option("--priority", type=int, default=0, metavar="P",
              help="Runs with a higher priority start first (default 0); equal ones in the order submitted.")
@click.option("--output", default=None, type=click.Path(dir_okay=False), metavar="OUTPUT",
              help="Write the run's output notebook to OUTPUT (an .ipynb), as `nbdurable run` does.")
@click.option("--cwd", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Working directory of the run's kernel (default: the notebook's directory).")
@click.option("--store", "store", metavar="URL|DIR", default=None,
              help="The store: a postgresql:// URL (a shared store) or a directory. Default: $NBDURABLE_STORE, "
                   "else .nbdurable beside NOTEBOOK.")
def submit(notebook: Path, parameters: tuple[tuple[str, str], ...], files: tuple[str, ...], queue: str,
           priority: int, output: str | None, cwd: str | None, store: str | None) -> None:
    """Queue a run of NOTEBOOK; print its run id. A `nbdurable worker` of the store starts it.

    The run is durable once this returns: it starts exactly once, in priority order, within its queue's
    concurrency (`nbdurable queue set`) and the worker's --max-concurrent; a worker that dies while running it
    leaves it to another worker, which resumes it from its last committed cell. `nbdurable show RUN_ID` and
    `nbdurable runs` follow it."""
    from nbdurable.headless.params import load_notebook, load_parameters
    from nbdurable.runtime.run import new_run_id
    from nbdurable.runtime.session import resolve_store_path
    from nbdurable.store import Store
    from nbdurable.store.queues import check_queue_name

    check_queue_name(queue)
    params = load_parameters(parameters, files)
    path = notebook.resolve()
    load_notebook(path, params, None)  # a file that is no notebook, refused now rather than by the worker
    opened = Store.open(resolve_store_path(store, notebook=str(path)), create=True)
    run_id = new_run_id()
    record = {"run_id": run_id, "notebook": str(path), "params": params, "queue": queue, "priority": priority,
              "origin": {"submitted": True, "queue": queue},
              "cwd": str(Path(cwd).resolve()) if cwd else str(path.parent),
              "output_path": str(Path(output).resolve()) if output else None}
    opened.claim(SUBMIT_KIND, run_id, record)
    click.echo(run_id)


@main.group("queue")
def queue_group() -> None:
    """The queues of `nbdurable submit`: `queue set NAME --concurrency N`, `queue list`."""


@queue_group.command("set")
@click.argument("name")
@click.option("--concurrency", type=AtLeast(1, integer=True), default=None, metavar="N",
              help="At most N runs of the queue execute at once, across every worker of the store (at least 1).")
@click.option("--unbounded", is_flag=True, help="Remove the queue's concurrency limit.")
@store_option
def set_queue(name: str, concurrency: int | None, unbounded: bool, store: str | None) -> None:
    """Set the queue NAME's concurrency: at most N of its runs execute at once, across every worker.

    A run holds one of the queue's N slots from before its kernel starts until its process ends (a
    suspended run holds none); a worker takes no run of a queue whose slots are all busy. Takes effect at
    the workers' next pass."""
    if (concurrency is None) == (not unbounded):
        raise OptionsError("give --concurrency N or --unbounded", hint=f"nbdurable queue set {name} --concurrency 2")
    setting = open_store(store, create=True).set_queue(name, None if unbounded else int(concurrency or 1))
    limit = setting["concurrency"]
    click.echo(f"queue {name}: " + (f"at most {limit} run(s) at once" if limit else "no concurrency limit"))


@queue_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queue instead of the table.")
@store_option
def list_queues(as_json: bool, store: str | None) -> None:
    """List the queues: their concurrency, and how many runs wait in each."""
    from nbdurable.store.claims import queue_of

    opened = open_store(store)
    limits = {str(s["name"]): s.get("concurrency") for s in opened.queues()}
    waiting: dict[str, int] = {}
    for claim in opened.open_claims():
        waiting[queue_of(claim)] = waiting.get(queue_of(claim), 0) + 1
    rows = [{"queue": name, "concurrency": limits.get(name), "waiting": waiting.get(name, 0)}
            for name in sorted(set(limits) | set(waiting))]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        click.echo("no run waits in any queue and no queue has a limit (`nbdurable submit NOTEBOOK --queue NAME` "
                   "queues a run; `nbdurable queue set NAME --concurrency N` bounds a queue)")
        return
    width = max(len(str(r["queue"])) for r in rows)
    click.echo(f"{'queue':<{width}}  concurrency  waiting")
    for row in rows:
        limit = str(row["concurrency"]) if row["concurrency"] else "no limit"
        click.echo(f"{row['queue']:<{width}}  {limit:<11}  {row['waiting']}")


__all__ = ["SUBMIT_KIND"]
