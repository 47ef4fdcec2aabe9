"""A hand-written GraphData (the widgets' JSON contract) that covers what the renderers must handle.

Every node status, explicit child steps (with attempts and errors), retries, a restored step, a failed
step whose traceback holds ANSI colour codes, hostile text (``</script>``, ``<``, ``&``, quotes) in
sources, labels, variable names and errors, pending cells, and edges that skip layers.

``python tests/graph_fixture.py [OUT.json]`` writes it as JSON (for node scripts and browser tests).
"""

from __future__ import annotations

import json
import sys
from typing import Any

T0 = 1_700_000_000.0
HOSTILE = "</script><script>window.__pwned = 1</script> <!-- & \"quoted\" 'single' <b>bold</b>"
STATUSES = ("pending", "running", "completed", "restored", "failed", "retrying", "sleeping", "waiting", "suspended")
ANSI_TRACEBACK = (
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
    "\x1b[0;31mValueError\x1b[0m                                Traceback (most recent call last)\n"
    "Cell \x1b[0;32mIn[4], line 2\x1b[0m\n"
    "\x1b[1;32m----> 2\x1b[0m \x1b[38;5;28;01mraise\x1b[39;00m \x1b[38;5;167;01mValueError\x1b[39;00m"
    "(\x1b[38;5;124m\"</script> & <bad>\"\x1b[39m)\n"
    "\x1b[0;31mValueError\x1b[0m: </script> & <bad>"
)


def _node(ordinal: int | None, status: str, label: str, source: str, *, start: float | None, dur: float | None,
          **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": f"s{ordinal}" if ordinal is not None else extra.pop("id"),
        "ordinal": ordinal, "label": label, "source": source, "status": status,
        "started_at": None if start is None else T0 + start,
        "ended_at": None if start is None or dur is None else T0 + start + dur,
        "duration_s": dur, "time_saved_s": None, "restored_from": None, "variables": [], "reads": [],
        "error": None, "attempts": [], "children": {"total": 0}, "child_steps": [], "waiting_for": None,
        "plan": None,
    }
    node.update(extra)
    return node


def sample_graph(*, run_status: str = "failed", live: bool = False) -> dict[str, Any]:
    """A run of 12 nodes: one per status, plus hostile text and skip edges."""
    children = [
        {"ordinal": 100 + i, "name": f"fetch({i})", "status": st, "started_at": T0 + 3 + i * 0.2,
         "ended_at": None if st in ("running", "retrying") else T0 + 3.15 + i * 0.2,
         "duration_s": None if st in ("running", "retrying") else 0.15, "attempts": 3 if st == "failed" else 1,
         "error": "TimeoutError: </script> timed out & gave up" if st == "failed" else None}
        for i, st in enumerate(["completed", "completed", "restored", "failed", "running", "retrying"])
    ]
    # fetch(1) succeeded on its third attempt: its two failures are in its attempt log
    children[1]["attempts"] = 3
    children[1]["attempt_log"] = [
        {"attempt": k, "started_at": T0 + 3.2 + k * 0.01, "ended_at": T0 + 3.205 + k * 0.01,
         "error": f"ConnectionError: reset {k} <&>" if k < 3 else None, "next_delay_s": 0.01 if k < 3 else None}
        for k in (1, 2, 3)]
    nodes = [
        _node(0, "restored", "import pandas as pd", "import pandas as pd\nimport nbdurable as nbd", start=0, dur=0.01,
              time_saved_s=12.3, restored_from={"run_id": "20240101-000000-aaaaaa", "ordinal": 0},
              variables=[{"name": "pd", "op": "set", "type": "module", "size_bytes": None, "format": None},
                         {"name": "nbd", "op": "set", "type": "module", "size_bytes": None, "format": None}]),
        _node(1, "completed", "load data", "df = pd.read_csv('x.csv')  # a < b && c > d", start=0.1, dur=1.5,
              reads=["pd"],
              variables=[{"name": "df", "op": "set", "type": "pandas.DataFrame", "size_bytes": 123_456_789,
                          "format": "parquet"}]),
        _node(2, "completed", HOSTILE[:60], f"s = {HOSTILE!r}\nprint(s)", start=1.7, dur=0.2, reads=["df"],
              variables=[{"name": "s", "op": "set", "type": "str", "size_bytes": 97, "format": "pickle"},
                         {"name": "<tmp>&\"x\"", "op": "del", "type": None, "size_bytes": None, "format": None}]),
        _node(3, "running", "fetch all", "results = nbd.map(fetch, range(6))", start=3, dur=None, reads=["df"],
              children={"total": 8, "completed": 2, "restored": 1, "failed": 1, "running": 1, "retrying": 1,
                        "pending": 2},
              child_steps=children),
        _node(4, "failed", "validate", "def check():\n    raise ValueError(\"</script> & <bad>\")\ncheck()",
              start=2.0, dur=0.4, reads=["df"],
              error={"ename": "ValueError", "evalue": "</script> & <bad>", "traceback": ANSI_TRACEBACK},
              attempts=[
                  {"attempt": 1, "started_at": T0 + 2.0, "ended_at": T0 + 2.1, "error": "ValueError: </script> & <bad>",
                   "next_delay_s": 0.05},
                  {"attempt": 2, "started_at": T0 + 2.15, "ended_at": T0 + 2.25,
                   "error": "ValueError: </script> & <bad>", "next_delay_s": 0.1},
                  {"attempt": 3, "started_at": T0 + 2.3, "ended_at": T0 + 2.4, "error": "ValueError: </script> & <bad>",
                   "next_delay_s": None},
              ]),
        _node(5, "retrying", "call api", "r = call_api()", start=2.5, dur=None, reads=[],
              attempts=[{"attempt": 1, "started_at": T0 + 2.5, "ended_at": T0 + 2.6, "error": "ConnectionError: reset",
                         "next_delay_s": 4.0}]),
        _node(6, "sleeping", "nbd.sleep('1h')", "nbd.sleep('1h')", start=2.7, dur=None, reads=["nbd"],
              waiting_for="sleeping until 2023-11-14 23:13:20"),
        _node(7, "waiting", "approval", "ok = nbd.wait_for_event('approve')", start=2.8, dur=None, reads=["nbd"],
              waiting_for="event 'approve'"),
        _node(8, "suspended", "after approval", "publish(df)", start=2.9, dur=None, reads=["df", "results"],
              waiting_for="event 'approve' (run suspended)"),
        _node(9, "completed", "x" * 200, "x = 1", start=3.0, dur=65.0),
        _node(None, "pending", "report(df)", "report(df)", start=None, dur=None, id="p0", reads=["df"],
              plan={"action": "restore", "reason": "", "from": {"run_id": "r-old", "ordinal": 9}, "saved_s": 4.0}),
        _node(None, "pending", "<pending & \"hostile\">", "print('</script>')", start=None, dur=None, id="p1",
              plan={"action": "execute", "reason": "it reads `df`, which changed", "from": None, "saved_s": None}),
    ]
    edges = [
        {"source": "s0", "target": "s1", "variables": ["pd"]},
        {"source": "s1", "target": "s2", "variables": ["df"]},
        {"source": "s1", "target": "s3", "variables": ["df"]},
        {"source": "s1", "target": "s4", "variables": ["df"]},
        {"source": "s0", "target": "s6", "variables": ["nbd"]},
        {"source": "s0", "target": "s7", "variables": ["nbd"]},
        {"source": "s1", "target": "s8", "variables": ["df"]},
        {"source": "s3", "target": "s8", "variables": ["results", "</script>&"]},
        {"source": "s1", "target": "p0", "variables": ["df"]},
    ]
    return {
        "version": 1,
        "run": {"run_id": "20240102-030405-abc123", "notebook": "pipelines/<etl> & \"co\".ipynb", "kind": "headless",
                "status": run_status, "params": {"n": 6, "who": "</script>"}, "started_at": T0,
                "ended_at": None if live else T0 + 70.0, "duration_s": None if live else 70.0, "time_saved_s": 12.3,
                "resumed_from": "20240101-000000-aaaaaa", "wake_at": T0 + 3600,
                "waiting_for": {"name": "approve", "match": {"who": "alice"}, "timeout_at": T0 + 7200}, "live": live},
        "nodes": nodes,
        "edges": edges,
    }


def assert_covers_statuses(data: dict[str, Any]) -> None:
    assert {n["status"] for n in data["nodes"]} == set(STATUSES)


if __name__ == "__main__":
    text = json.dumps(sample_graph(), indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
