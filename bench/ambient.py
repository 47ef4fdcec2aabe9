"""Cost of watching ambient state (``nbdurable.capture.ambient``): ``snapshot()`` + ``changes()`` per cell
when nothing changed, against an empty Python function call measured in the same run.

Two figures, in one process and in this order: with no third-party library imported (the standard
library's providers only: sys.path, cwd, os.environ, recursion limit, warnings, and logging/random when
something imported them), then with numpy (numpy.random), pandas, matplotlib (pyplot) and logging
imported, 200 loggers created (a kernel has tens to hundreds: the logging provider's cost must not grow
with them). Each figure is the median over repeats of the mean over a block of calls.

``--per-provider`` prints instead a table of each provider's ``fingerprint()`` cost (medians), the numbers
written in the module docstring of ``nbdurable.capture.ambient``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit

from bench.common import Figure, emit

TARGET_US = 80.0  # the extension's budget for ambient state per cell (its total: 300 µs per trivial cell)


def per_call_us(fn, number: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of one call to ``fn`` in a block of ``number``, in µs."""
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def empty() -> None:
    pass


def import_libraries() -> None:
    import logging

    import matplotlib
    import numpy.random  # noqa: F401
    import pandas  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot

    for i in range(200):
        logging.getLogger(f"bench.ambient.logger{i}")


def cell_cost(number: int, repeats: int) -> tuple[float, list[str]]:
    from nbdurable.capture.ambient import Ambient

    ambient = Ambient()

    def cell() -> None:
        ambient.changes(ambient.snapshot())

    before = ambient.snapshot()
    assert ambient.changes(before) == [], ambient.changes(before)
    active = [p.name for p in ambient.providers if p.module is None or p.module in sys.modules]
    return per_call_us(cell, number, repeats), active


def per_provider(repeats: int) -> None:
    import_libraries()
    from nbdurable.capture.ambient import Ambient

    ambient = Ambient()
    rows = []
    for provider in ambient.providers:
        if provider.module is not None and provider.module not in sys.modules:
            rows.append((provider.name, "not imported"))
            continue
        a, b = provider.fingerprint(), provider.fingerprint()
        assert a is b or a == b, provider.name
        rows.append((provider.name, f"{per_call_us(provider.fingerprint, 2000, repeats):.2f} µs"))
    snapshot = ambient.snapshot()
    rows.append(("snapshot()", f"{per_call_us(ambient.snapshot, 2000, repeats):.2f} µs"))
    changes = per_call_us(lambda: ambient.changes(snapshot), 2000, repeats)
    rows.append(("changes(), nothing changed", f"{changes:.2f} µs"))
    rows.append(("empty function call", f"{per_call_us(empty, 200000, repeats):.3f} µs"))
    width = max(len(name) for name, _ in rows)
    for name, cost in rows:
        print(f"{name:<{width}}  {cost}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--per-provider", action="store_true", help="print each provider's fingerprint cost")
    args = parser.parse_args()
    if args.per_provider:
        per_provider(args.repeats)
        return
    figures = []
    for label, prepare in (("stdlib only", None), ("numpy+pandas+matplotlib+logging", import_libraries)):
        if prepare is not None:
            prepare()
        base = per_call_us(empty, 200000, args.repeats)
        value, active = cell_cost(2000, args.repeats)
        figures.append(Figure(
            name=f"ambient snapshot+changes per cell, {label}", value=value, baseline_name="empty call",
            baseline=base, unit="µs", target=f"≤ {TARGET_US:.0f} µs", ok=value <= TARGET_US,
            note=f"{len(active)} providers active: {', '.join(active)}",
        ))
    emit(figures)


if __name__ == "__main__":
    main()
