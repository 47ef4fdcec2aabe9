"""OpenTelemetry spans of runs (``runtime/tracing.py``) with the real SDK: the in-memory exporter behind a real
IPython shell with the extension (run → cell → step → attempt, attributes, errors), a child run under its
parent's step span across processes' recorded ids, the console exporter configured by OTEL_* variables, and
nothing subscribed when traces are not asked for."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from nbdurable.runtime import tracing
from nbdurable.runtime.events import EventBus, RuntimeEvent
from nbdurable.store import Store, records

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra: pip install 'nbdurable[otel]'")

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conftest import run_session
from helpers import clean_env

SETUP = """
from nbdurable.runtime import tracing
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
EXPORTER = InMemorySpanExporter()
tracing.use_provider(tracing.tracer_provider(SimpleSpanProcessor(EXPORTER)))
"""

SPANS = """(get_ipython()._nbdurable_extension[0].close(), __import__('json').dumps([
    {"name": s.name, "id": s.context.span_id, "trace": s.context.trace_id,
     "parent": s.parent.span_id if s.parent else None, "attrs": dict(s.attributes),
     "status": s.status.status_code.name, "events": [e.name for e in s.events],
     "start": s.start_time, "end": s.end_time}
    for s in EXPORTER.get_finished_spans()], default=list))[1]"""


def test_spans_of_a_session_run_cell_step_attempt(store_dir: Path) -> None:
    session = run_session(store_dir, [
        "# load\nx = 1",
        "import nbdurable as nbd\ntries = []\n"
        "@nbd.step(retry=nbd.RetryPolicy(max_attempts=3, initial_interval=0))\n"
        "def fetch():\n    tries.append(1)\n    if len(tries) < 2:\n        raise ValueError('flaky')\n    return 7\n"
        "y = fetch()",
        "raise KeyError('boom')",
    ], env={"NBDURABLE_PARAMS": json.dumps({"region": "eu", "week": 3})}, setup=SETUP, probes={"spans": SPANS})
    spans = json.loads(eval(session.probes["spans"]))  # repr of the JSON text
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (run,) = by_name["run"]
    cells = sorted(by_name["cell"], key=lambda s: s["attrs"]["nbdurable.step.ordinal"])
    (step,) = by_name["step"]
    attempts = by_name["attempt"]
    assert run["parent"] is None and run["attrs"]["nbdurable.notebook"] == "nb"
    assert run["attrs"]["nbdurable.params"] == ["region", "week"]  # names, never values
    assert run["attrs"]["nbdurable.status"] in ("failed", "interrupted", "completed")
    assert {s["trace"] for s in spans} == {run["trace"]}
    assert [c["parent"] for c in cells] == [run["id"]] * len(cells) and len(cells) == 3
    assert step["parent"] == cells[1]["id"] and step["attrs"]["nbdurable.status"] == "completed"
    assert [a["parent"] for a in attempts] == [step["id"]] * 2
    assert [a["status"] for a in sorted(attempts, key=lambda a: a["attrs"]["nbdurable.attempt"])] == ["ERROR", "UNSET"]
    failed = cells[2]
    assert failed["status"] == "ERROR" and "exception" in failed["events"]
    assert "KeyError" in failed["attrs"]["nbdurable.error"] and failed["attrs"]["nbdurable.restored"] is False
    assert all(s["start"] <= s["end"] for s in spans)
    assert run["start"] <= min(c["start"] for c in cells) and run["end"] >= max(c["end"] for c in cells)


def test_restored_cells_are_marked_restored(store_dir: Path) -> None:
    cells = ["a = 1", "b = a + 1"]
    run_session(store_dir, cells)
    session = run_session(store_dir, cells, setup=SETUP, probes={"spans": SPANS})
    spans = json.loads(eval(session.probes["spans"]))
    cell_spans = [s for s in spans if s["name"] == "cell"]
    assert cell_spans and all(s["attrs"]["nbdurable.restored"] is True for s in cell_spans)
    assert all(s["attrs"]["nbdurable.restored_from"] for s in cell_spans)


def _journal(store: Store, run_id: str, **extra: Any) -> None:
    with store.new_journal(run_id) as w:
        w.append({**records.run_record(run_id, notebook="nb", notebook_path=None, kind="headless", params={}), **extra})


def test_a_child_run_is_a_child_of_its_parents_step(tmp_path: Path) -> None:
    """The child's run span has the parent's step span as its parent: same trace, the recorded ids, no
    message between the two (each run here on a bus of its own, as in two processes)."""
    store = Store.open(tmp_path / "s")
    parent, child = "20240101T000000000-aaaaaa", "20240101T000001000-bbbbbb"
    _journal(store, parent)
    _journal(store, child, origin={"parent_run": parent, "parent_step": 2})
    exporter = InMemorySpanExporter()
    for run_id, steps in ((parent, [1, 2]), (child, [1])):
        bus = EventBus()
        tracing.install(bus, store, provider=tracing.tracer_provider(SimpleSpanProcessor(exporter)))
        bus.emit(RuntimeEvent("run_started", run_id, {"notebook": "nb"}))
        for ordinal in steps:
            bus.emit(RuntimeEvent("step_started", run_id, {"ordinal": ordinal, "parent": None}))
            bus.emit(RuntimeEvent("step_finished", run_id, {"ordinal": ordinal, "status": "completed"}))
        bus.emit(RuntimeEvent("run_finished", run_id, {"status": "completed"}))
    spans = exporter.get_finished_spans()
    step2 = next(s for s in spans if s.attributes["nbdurable.run_id"] == parent and s.name == "cell"
                 and s.attributes["nbdurable.step.ordinal"] == 2)
    child_run = next(s for s in spans if s.attributes["nbdurable.run_id"] == child and s.name == "run")
    assert child_run.parent is not None and child_run.parent.span_id == step2.context.span_id
    assert child_run.context.trace_id == step2.context.trace_id
    assert child_run.attributes["nbdurable.parent_run"] == parent


def test_console_exporter_from_the_environment(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from nbdurable.runtime import tracing
        from nbdurable.runtime.events import EventBus
        from nbdurable.runtime.run import DurableRun
        from nbdurable.store import Store
        store = Store.open({str(tmp_path / "s")!r})
        bus = EventBus()
        assert tracing.install(bus, store) is not None
        run = DurableRun(store, notebook="console-nb", events=bus)
        step = run.begin_step(source="x = 1", source_hash="00")
        run.end_step(step, status="completed")
        run.finish("completed")
    """)
    env = clean_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "nbd-test"})
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    decoder, text, spans = json.JSONDecoder(), out.stdout, []
    index = text.find("{")
    while index != -1:
        span, end = decoder.raw_decode(text, index)
        spans.append(span)
        index = text.find("{", end)
    names = sorted(s["name"] for s in spans)
    assert names == ["cell", "run"]
    run = next(s for s in spans if s["name"] == "run")
    cell = next(s for s in spans if s["name"] == "cell")
    assert cell["parent_id"] == run["context"]["span_id"]
    assert run["attributes"]["nbdurable.notebook"] == "console-nb"
    assert run["resource"]["attributes"]["service.name"] == "nbd-test"


def test_nothing_subscribes_without_otel_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    tracing.configured_provider.cache_clear()
    bus = EventBus()
    assert tracing.install(bus, Store.open(tmp_path / "s")) is None and not bus.active
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    tracing.configured_provider.cache_clear()
    assert tracing.install(bus, Store.open(tmp_path / "s")) is None
    tracing.configured_provider.cache_clear()
    probe = subprocess.run([sys.executable, "-c", "import sys, nbdurable.kernel_ext, nbdurable.runtime.tracing; "
                            "print('opentelemetry' in sys.modules)"], env=clean_env(), capture_output=True, text=True)
    assert probe.stdout.strip() == "False"  # not even imported


def test_the_server_traces_its_requests(tmp_path: Path) -> None:
    from serve_helpers import served

    exporter = InMemorySpanExporter()
    tracing.use_provider(tracing.tracer_provider(SimpleSpanProcessor(exporter)))
    try:
        with served(Store.open(tmp_path / "s"), tmp_path) as server:
            with server.client() as c:
                assert c.post("/api/events/traced", json={}).status_code == 202
            with server.client(token="wrong-token-of-some-length") as c:
                assert c.get("/api/runs").status_code == 401
    finally:
        tracing.use_provider(None)
    spans = [(s.name, s.attributes["url.path"], s.attributes["http.response.status_code"])
             for s in exporter.get_finished_spans()]
    assert ("HTTP POST", "/api/events/traced", 202) in spans and ("HTTP GET", "/api/runs", 401) in spans
