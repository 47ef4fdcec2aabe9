"""``python -m bench [--quick] [--only NAME…]``: run the benchmark suite and print one table.

Each benchmark runs in a fresh process (so a 1 GiB object of one does not disturb the next) and reports
its figure with the baseline it measured in the same run. Results are also written as JSON to
``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bench.common import ROOT, Figure, print_table, run_child

SUITE = {
    "ambient": [("ambient", [])],
    "catalog": [("catalog", [])],
    "cells": [("cell_overhead", []), ("cell_overhead", ["--big"])],
    "checkpoint": [("checkpoint", ["ndarray"]), ("checkpoint", ["frame"])],
    "control": [("control_cancel", []), ("control_checkout", [])],
    "dask": [("dask_map", [])],
    "dataflow": [("dataflow", ["inputs"]), ("dataflow", ["plan"]), ("dataflow", ["edit"])],
    "deltas": [("deltas", ["objects"]), ("deltas", ["workloads"])],
    "headless": [("headless", ["trivial"]), ("headless", ["resume"])],
    "serve": [("serve", [])],
    "orchestration": [("orchestration", ["trigger"]), ("orchestration", ["overhead"]), ("schedule_eval", [])],
    "scale": [("scale", []), ("read_model", []), ("queue", ["claim"]), ("queue", ["throughput"])],
    "steps": [("steps", [])],
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=sorted(SUITE), help="run only these groups")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for reporting)")
    args = parser.parse_args()
    figures: list[Figure] = []
    for group in args.only or list(SUITE):
        for module, extra in SUITE[group]:
            quick = {"ambient": ["--repeats", "3"], "cell_overhead": ["--rounds", "2", "--cells", "100"],
                     "checkpoint": ["--repeats", "1"], "deltas": ["--repeats", "1"],
                     "control_cancel": ["--repeats", "2"], "control_checkout": ["--repeats", "1"],
                     "dataflow": ["--repeats", "1", "--work", "0.2"],
                     "headless": ["--repeats", "1"], "steps": ["--rounds", "2"], "dask_map": ["--rounds", "2"],
                     "scale": ["--rounds", "2"], "queue": ["--claims", "200", "--runs", "40"],
                     "read_model": ["--runs", "100", "--repeats", "5"],
                     "catalog": ["--repeats", "5", "--ingest-repeats", "1"],
                     "serve": ["--seconds", "2", "--repeats", "5", "--render-repeats", "2"]}
            print(f"running {module} {' '.join(extra)} …", file=sys.stderr, flush=True)
            rows = run_child(module, *extra, *(quick.get(module, []) if args.quick else []))
            figures += [Figure(**row) for row in rows]
    print_table(figures)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps([asdict(f) for f in figures], indent=1))
    if not all(f.ok for f in figures):
        sys.exit(1)


if __name__ == "__main__":
    main()
