"""Many writers on one store: 8 headless runs and 2 interactive shells at once, with a process querying
the history in a loop. Nothing fails, no record is lost, and readers never hold writers up (writers
never open the catalog: they append to their own journals)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest

from nbdurable.store import Store

from conftest import run_session
from helpers import clean_env, start_cli

pytestmark = [pytest.mark.kernel, pytest.mark.slow]  # 8 headless runs and 2 shells at once

CELLS = [
    "import nbdurable as nbd\nimport numpy as np\nidx = 0",
    "data = np.arange(100_000) * (idx + 1)",
    "@nbd.step\ndef square(i):\n    return i * i\n\nsquares = [square(i) for i in range(25)]",
    *[f"x{i} = int(data[{i}]) + sum(squares)" for i in range(12)],
    "total = sum(globals()[f'x{i}'] for i in range(12))\nprint(total)",
]
READER = r"""
import json, sys, time
from nbdurable.store import Store
store, stop, out = Store.open(sys.argv[1]), sys.argv[2], sys.argv[3]
import os
times, errors = [], []
while not os.path.exists(stop):
    started = time.perf_counter()
    try:
        store.catalog().query("SELECT r.run_id, count(s.ordinal) FROM runs r LEFT JOIN steps s USING (run_id) "
                              "GROUP BY 1")
        store.catalog().runs(limit=20)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    times.append(time.perf_counter() - started)
json.dump({"times": times, "errors": errors}, open(out, "w"))
"""


def test_eight_headless_runs_and_two_shells_write_one_store_while_a_reader_queries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, tmp_path / "writer.ipynb")
    stop, report = tmp_path / "stop", tmp_path / "reader.json"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(store), str(stop), str(report)], env=clean_env())
    headless = [
        start_cli("run", "writer.ipynb", f"out{i}.ipynb", "-p", "idx", str(i), "--store", str(store), "--no-progress",
                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    shells: list = [None, None]

    def shell(n: int) -> None:
        shells[n] = run_session(store, [c.replace("idx = 0", f"idx = {10 + n}") for c in CELLS], notebook=f"shell{n}",
                                probes={"total": "total"}, workdir=tmp_path, timeout=600)

    threads = [threading.Thread(target=shell, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    finished = [p.communicate(timeout=600) for p in headless]
    for t in threads:
        t.join(timeout=600)
    stop.touch()
    reader.wait(timeout=120)

    assert [p.returncode for p in headless] == [0] * 8, [err[-2000:] for _, err in finished]
    assert all(s is not None and all(c["success"] for c in s.cells) for s in shells), shells
    read = json.loads(report.read_text())
    assert read["errors"] == [] and len(read["times"]) > 0

    opened = Store.open(store)
    runs = opened.run_ids()
    assert len(runs) == 10
    cells = {"headless": len(CELLS) + 1, "interactive": len(CELLS)}  # papermill injects a parameters cell
    for run_id in runs:  # no record lost: every run's journal is whole and ends completed
        records = opened.read_journal(run_id)
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        assert sum(r["t"] == "step_end" for r in records) == cells[records[0]["kind"]] + 25  # cells and step calls
        assert records[-1]["t"] == "run_end" and records[-1]["status"] == "completed"
    table = opened.catalog().query("SELECT status, count(*) AS runs, sum(steps_total) AS cells FROM runs "
                                   "GROUP BY status")
    assert table.values.tolist() == [["completed", 10, 8 * cells["headless"] + 2 * cells["interactive"]]]
    times = sorted(read["times"])
    print(f"reader: {len(times)} queries, median {statistics.median(times) * 1000:.1f} ms, "
          f"max {times[-1] * 1000:.1f} ms; writers wait on readers: never (they do not open the catalog)")
