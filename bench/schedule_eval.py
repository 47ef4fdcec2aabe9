"""Schedule evaluation: slots checked per second over 1,000 schedules, against croniter's own iteration.

1,000 cron schedules (expressions of several shapes in several zones; ``--every`` intervals are plain
arithmetic and left out, they would only raise the figure) are each
evaluated over one day from a random cursor, as the worker's schedule pass does after a day without a
worker (``runtime.schedules.slots`` and the catch-up split, ``catch_up``): the figure is the slots so
listed per second. The baseline, timed in the same rounds, is bare croniter: ``croniter(expr,
start).get_next(float)`` until the window ends, for the same schedules and windows: the iteration a
straightforward engine would run. Medians over rounds.

A second line times the whole pass the worker runs each tick (``fire_schedules``) over the same 1,000
schedules stored in a real store, with nothing due: reading every definition and cursor and deciding (an
idle pass writes nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from croniter import croniter

from bench.common import Figure, emit

CRONS = ["*/15 * * * *", "0 * * * *", "0 6 * * 1-5", "*/5 9-17 * * *", "30 2 * * *", "0 0 1,15 * *", "*/10 * * * 1-5"]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"]


def schedules(n: int, rng: random.Random) -> list[dict]:
    """``n`` cron schedules (shape, zone): the costly kind (an ``--every`` interval is arithmetic)."""
    return [{"cron": rng.choice(CRONS), "tz": rng.choice(ZONES), "every": None} for _ in range(n)]


def evaluate(timings: list, cursors: list[float], window: float) -> int:
    from nbdurable.runtime.schedules import catch_up, slots

    checked = 0
    for timing, cursor in zip(timings, cursors, strict=True):
        due = slots(timing, cursor, cursor + window)
        catch_up("all", due, cursor + window, 60.0)
        checked += len(due)
    return checked


def baseline(defs: list[dict], cursors: list[float], window: float) -> int:
    checked = 0
    for d, cursor in zip(defs, cursors, strict=True):
        it = croniter(d["cron"], dt.datetime.fromtimestamp(cursor, ZoneInfo(d["tz"])))
        while it.get_next(float) <= cursor + window:
            checked += 1
    return checked


def pass_seconds(defs: list[dict], rounds: int) -> float:
    """Median seconds of ``fire_schedules`` over ``defs`` stored in a fresh store, nothing due."""
    from nbdurable.headless.scheduler import fire_schedules, make_schedule
    from nbdurable.store import Store

    root = Path(tempfile.mkdtemp(prefix="nbd-bench-sched-"))
    nb = root / "nb.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    store = Store.open(root / "store")
    now = time.time()
    for i, d in enumerate(defs):
        store.add_schedule(make_schedule(f"s{i:04d}", nb, cron=d["cron"], tz=d["tz"], every=d["every"],
                                         created_at=now))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fire_schedules(store, log=lambda *a, **f: None, grace=60.0)
        times.append(time.perf_counter() - start)
    claims = store.claims("slot")
    if len(claims) > len(defs) * 2:  # a pass with nothing due claims nothing (a slot may fall due meanwhile)
        raise SystemExit(f"the pass claimed {len(claims)} slots")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from nbdurable.runtime.schedules import Timing

    rng = random.Random(17)
    defs = schedules(args.schedules, rng)
    timings = [Timing(d["cron"], d["tz"] or "UTC", d["every"]) for d in defs]
    window = 86400.0
    ours: list[float] = []
    base: list[float] = []
    counted: set[int] = set()
    for _ in range(args.rounds):
        cursors = [rng.uniform(1.77e9, 1.80e9) for _ in defs]
        start = time.perf_counter()
        checked = evaluate(timings, cursors, window)
        ours.append(checked / (time.perf_counter() - start))
        start = time.perf_counter()
        bare = baseline(defs, cursors, window)
        base.append(bare / (time.perf_counter() - start))
        counted.add(checked)
    rate, bare_rate = statistics.median(ours), statistics.median(base)
    seconds = pass_seconds(defs, max(3, args.rounds))
    emit([
        Figure(f"schedule evaluation ({args.schedules} schedules, one day each)", rate, "croniter get_next",
               bare_rate, "slots/s", ">= 10,000 slots/s", rate >= 10_000,
               f"{min(counted)}-{max(counted)} slots per round; {args.rounds} rounds"),
        Figure(f"schedule pass, nothing due ({args.schedules} stored schedules)", seconds * 1e3,
               "evaluation alone (same schedules)", args.schedules / rate * 1e3 if rate else 0.0, "ms",
               "informational", True, "definitions and cursors read and authenticated, nothing written"),
    ])


if __name__ == "__main__":
    main()
