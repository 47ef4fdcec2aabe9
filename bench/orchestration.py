"""Orchestration: runs the engine starts by itself (issue 17).

``trigger``: an event is sent (``Store.send_event``, as ``nbdurable send`` does) and a trigger starts a run of
a two-cell notebook; the clock runs from the event's ``sent_at`` to the ``step_start`` of the run's first cell
(both wall time). The engine is what the worker runs each poll: the trigger pass, then the dispatcher
(``headless/triggers.py``, ``headless/dispatch.py``), ticking every ``--poll`` seconds. The baseline, measured
in the same run, is a kernel's start-up: ``jupyter_client`` starting the same kernel until it answers
(``KernelManager.start_kernel`` + ``wait_for_ready``). The note gives the same notebook started directly by the
launcher (no event, no trigger, no poll): what a trigger adds to a run that starts anyway.

``overhead``: the engine's own time per started run, the kernel excluded: ``--runs`` times, one event is
sent and the engine ticks until its run was started, ended and reaped and its claim closed; only the ticks
are timed (trigger pass + dispatcher: reading the event, claiming, ordering the queue, forking the run from
the warm forkserver, reaping, marking the claim started), never the wait for the run. The run's kernel
starts in its own process while the tick that forked it finishes (on a busy machine it slows that tick: an
upper bound). The baseline is the launcher's bare start of a run (the fork from the forkserver), the least
any engine pays per run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from bench.common import Figure, emit

META = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def _notebook(path: Path) -> Path:
    nb = new_notebook(cells=[new_code_cell("event = {}", metadata={"tags": ["parameters"]}), new_code_cell("x = 1")],
                      metadata=META)
    nbformat.write(nb, path)
    return path


def _first_cell_started(store: Any, run_id: str) -> float | None:
    if not store.journal_exists(run_id):
        return None
    starts = [r["ts"] for r in store.read_journal(run_id) if r.get("t") == "step_start"]
    return float(starts[0]) if starts else None


def _kernel_start() -> float:
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3", transport="ipc")
    start = time.perf_counter()
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    took = time.perf_counter() - start
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    return took


def _engine(store: Any, launcher: Any) -> tuple[Any, Any]:
    from nbdurable.headless.dispatch import Dispatcher
    from nbdurable.headless.triggers import TriggerPass

    quiet: Callable[..., None] = lambda *a, **k: None  # noqa: E731
    return TriggerPass(store, quiet), Dispatcher(store, log=quiet, max_concurrent=8, launcher=launcher)


def trigger_latency(work: Path, repeats: int, poll: float) -> tuple[list[float], list[float], list[float]]:
    from nbdurable.headless.launch import Launcher, LaunchSpec
    from nbdurable.headless.triggers import define_trigger
    from nbdurable.runtime.run import new_run_id
    from nbdurable.store import Store

    store = Store.open(work / "store")
    nb = _notebook(work / "nb.ipynb")
    store.add_trigger(define_trigger("go", nb, on="go"))
    launcher = Launcher()
    launcher.warm()
    passer, dispatcher = _engine(store, launcher)
    triggered: list[float] = []
    direct: list[float] = []
    kernel: list[float] = []
    for n in range(-1, repeats):  # n = -1: a warm-up (the forkserver's imports), not counted
        if n >= 0:
            kernel.append(_kernel_start())
        run_id = new_run_id()
        started = time.time()
        launched = launcher.start(LaunchSpec(str(store.path), str(nb), params={"event": {"n": n}}, run_id=run_id))
        launched.wait(120)
        first = _first_cell_started(store, run_id)
        assert first is not None, "the direct run did not start its first cell"
        if n < 0:
            continue
        direct.append(first - started)
        event = store.send_event("go", {"n": n})
        while True:
            passer.tick()
            dispatcher.tick()
            claim = store.read_claim("event", f"go:{event['id']}")
            first = _first_cell_started(store, claim["run_id"]) if claim else None
            if first is not None:
                break
            time.sleep(poll)
        triggered.append(first - event["sent_at"])
        dispatcher.drain(120)
    return triggered, direct, kernel


def engine_overhead(work: Path, runs: int) -> tuple[list[float], list[float], float]:
    """Per started run: the engine's wall and CPU time (its ticks only), and the bare fork's wall time."""
    from nbdurable.headless.launch import Launcher, LaunchSpec
    from nbdurable.headless.triggers import define_trigger
    from nbdurable.store import Store

    store = Store.open(work / "store-overhead")
    nb = _notebook(work / "nb2.ipynb")
    store.add_trigger(define_trigger("many", nb, on="many"))
    launcher = Launcher()
    launcher.warm()
    passer, dispatcher = _engine(store, launcher)
    wall: list[float] = []
    cpu: list[float] = []
    for n in range(-1, runs):  # n = -1: a warm-up (the forkserver's imports), not counted
        store.send_event("many", {"n": n})
        spent = spent_cpu = 0.0
        started = dispatcher.started
        while dispatcher.started == started or dispatcher.running or store.open_claims():
            if dispatcher.started > started and dispatcher.running:
                dispatcher.drain(120)  # waiting for the run is not the engine's time; reaping it is (next tick)
            begin, begin_cpu = time.perf_counter(), time.process_time()
            passer.tick()
            dispatcher.tick()
            spent += time.perf_counter() - begin
            spent_cpu += time.process_time() - begin_cpu
            time.sleep(0.01)
        if n >= 0:
            wall.append(spent)
            cpu.append(spent_cpu)
    bare = []  # the bare fork of a run: processes that exit at once (their claim's run exists)
    for claim in store.claims("event")[:10]:
        spec = LaunchSpec(str(store.path), str(nb), run_id=claim["run_id"], claim=("event", claim["key"]))
        begin = time.perf_counter()
        launched = launcher.start(spec)
        bare.append(time.perf_counter() - begin)
        launched.wait(60)
    return wall, cpu, statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["trigger", "overhead"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbd-bench-orch-") as tmp:
        work = Path(tmp)
        if args.what == "trigger":
            triggered, direct, kernel = trigger_latency(work, args.repeats, args.poll)
            t, d, k = statistics.median(triggered), statistics.median(direct), statistics.median(kernel)
            added = statistics.median(a - b for a, b in zip(triggered, direct, strict=True))
            emit([Figure("trigger: event sent → run's first cell starts, p50", t, "kernel start-up", k, "s",
                         "<= kernel + 0.3 s", t <= k + 0.3,
                         note=f"{args.repeats} events, engine polling every {args.poll:g} s; "
                         f"max {max(triggered):.2f} s"),
                  Figure("trigger: added to a directly launched run's first cell, p50", added,
                         "direct launch → first cell", d, "s", "<= 0.3 s", added <= 0.3,
                         note="event → claim → dispatch, against the same notebook started by the launcher")])
        else:
            wall, cpu, bare = engine_overhead(work, args.runs)
            w, c = statistics.median(wall) * 1000, statistics.median(cpu) * 1000
            emit([Figure("engine overhead per started run (kernel excluded), p50", w, "bare fork of a run",
                         bare * 1000, "ms", "<= 20 ms", w <= 20,
                         note=f"{args.runs} runs, one event each: the trigger pass + dispatcher ticks from the event "
                         f"to the run started, reaped and its claim closed; engine CPU {c:.1f} ms per run")])
    # Helper sched's schedule-evaluation figure (>= 10,000 slots checked per second over 1,000 schedules)
    # is a module of its own, registered beside this one in bench/__main__.py's "orchestration" group.


if __name__ == "__main__":
    sys.exit(main())
