"""Durable child runs (issue 17, items 4 and 6): ``nbd.run_notebook`` / ``nbd.result`` with real kernels, real
headless runs started by the launcher, the engine's dispatcher and worker, real ``kill -9``; the cancel cascade;
the history filters and the graph's child-run nodes.

Each child run counts its executions in a side-effect file (``count-<n>.txt``: one line per execution), so
"exactly once" is read from what really ran. ``test_parent_killed_at_random_points_starts_one_child`` runs
``NBDURABLE_SOAK_CHILD`` trials (default 2 in CI; e.g. ``NBDURABLE_SOAK_CHILD=20`` as a soak).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import nbdurable as nbd
from nbdurable.errors import OptionsError
from nbdurable.headless.dispatch import launch_spec
from nbdurable.headless.launch import Launcher, LaunchSpec
from nbdurable.headless.worker import Worker, next_deadline, why_due
from nbdurable.runtime.children import child_state
from nbdurable.runtime.control import cancel_run, chain_head, child_runs
from nbdurable.runtime.replay import journal_status
from nbdurable.runtime.run import new_run_id
from nbdurable.store import Store
from nbdurable.widgets.graph import build_graph

from helpers import run_cli, write_notebook
from kernels import Kernel

JS = Path(__file__).parent / "js"
NODE = shutil.which("node")
CHILD = ["# parameters\nn = 1",
         "import nbdurable as nbd\nwith open(f'count-{n}.txt', 'a') as f:\n    f.write('ran\\n')\n"
         "nbd.result({'sq': n * n})"]
FLAKY = ["import nbdurable as nbd, pathlib\np = pathlib.Path('flaky-count.txt')\n"
         "p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
         "if len(p.read_text()) < 3:\n    raise RuntimeError(f'flaky attempt {len(p.read_text())}')\nnbd.result('ok')"]
BAD = ["raise ValueError('bad child')"]
SLOW = ["# parameters\ntag = 0", "import pathlib, time\npathlib.Path(f'slow-started-{tag}').touch()\n"
        "while not pathlib.Path('go').exists():\n    time.sleep(0.05)"]


def notebooks(where: Path) -> Path:
    """The child notebooks in ``where`` (a cell starting ``# parameters`` is tagged ``parameters``)."""
    import nbformat

    where.mkdir(parents=True, exist_ok=True)
    for name, cells in (("child", CHILD), ("flaky", FLAKY), ("bad", BAD), ("slow", SLOW)):
        path = write_notebook(where / f"{name}.ipynb", cells)
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.source.startswith("# parameters"):
                cell.metadata["tags"] = ["parameters"]
        nbformat.write(nb, path)
    return where


def runs(path: Path, n: int) -> int:
    """How many times the child with parameter ``n`` executed its counting cell."""
    file = path / f"count-{n}.txt"
    return len(file.read_text().splitlines()) if file.exists() else 0


class Engine:
    """The worker's passes as ``nbdurable worker`` runs them (fire schedules, decide events, resume due
    suspended runs, start open claims); and, for a parent killed by the test, ``nbdurable resume`` of its run
    (the launcher, resume_run)."""

    def __init__(self, store: Store, tmp: Path) -> None:
        self.store, self.tmp = store, tmp
        self.log: list[tuple[str, dict]] = []
        self.worker = Worker(store, log=lambda e, **f: self.log.append((e, f)), max_concurrent=4,
                             run_logs=str(tmp))

    def run_until(self, done: Callable[[], bool], timeout: float = 240, resume: str | None = None,
                  drain: bool = True) -> None:
        launcher = Launcher()
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, self.log[-20:]
            self.worker.tick(skip=False)
            if resume is not None and self.store.journal_exists(resume):  # a killed parent: `nbdurable resume`
                head = chain_head(self.store, resume)
                if journal_status(self.store, head)[0] in ("crashed", "interrupted", "failed"):
                    launcher.start(LaunchSpec(str(self.store.path), self.notebook(head), resume_run=head)).wait(180)
            time.sleep(0.1)
        while drain and self.worker.running:  # wait for the processes it started to end
            assert time.monotonic() < deadline + 120, self.log[-20:]
            self.worker.tick(skip=False)
            time.sleep(0.1)

    def notebook(self, run_id: str) -> str:
        return str((self.store.journal_head(run_id) or {})["notebook_path"])


def completed(store: Store, run_id: str) -> bool:
    """True once the newest run of ``run_id``'s resume chain completed."""
    return store.journal_exists(run_id) and journal_status(store, chain_head(store, run_id))[0] == "completed"


def kill_tree(pid: int, kernel_pid_file: Path) -> None:
    """kill -9 the parent's runner process and its kernel (whose pid its first cell wrote)."""
    for victim in (pid, int(kernel_pid_file.read_text()) if kernel_pid_file.exists() else None):
        if victim:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ----- headless -------------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.slow
def test_parent_killed_at_random_points_starts_one_child(tmp_path: Path) -> None:
    trials = int(os.environ.get("NBDURABLE_SOAK_CHILD", "2"))
    rng = random.Random(int(os.environ.get("NBDURABLE_SEED", str(time.time_ns()))))
    for trial in range(trials):
        where = notebooks(tmp_path / f"t{trial}")
        parent = write_notebook(where / "parent.ipynb", [
            "import os, pathlib\npathlib.Path('kernel.pid').write_text(str(os.getpid()))",
            "import nbdurable as nbd\nr = nbd.run_notebook('child.ipynb', {'n': 7})",
            "import json, pathlib\npathlib.Path('got.json').write_text(json.dumps(r))",
        ])
        store = Store.open(where / "store")
        run_id = new_run_id()
        # the parent is itself a claimed run (as a trigger's would be): killed before its journal exists, the
        # engine starts it again under the same id
        _, claim = store.claim("event", f"parent-{trial}", {"run_id": run_id, "notebook": str(parent), "params": {},
                                                            "origin": {"trigger": "test"}})
        launched = Launcher().start(launch_spec(store, claim))
        point = rng.choice(["claim", "delay"])
        if point == "claim":  # right after the child's claim is on disk (before the parent suspends, mostly)
            deadline = time.monotonic() + 120
            while not store.claims("child") and launched.alive and time.monotonic() < deadline:
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.2, 4.0))
        kill_tree(launched.process.pid, where / "kernel.pid")
        launched.wait(30)
        # where the kill landed: before the claim, after it (parent not yet suspended), or after the suspension
        suspended = store.journal_exists(run_id) and journal_status(store, run_id)[0] == "suspended"
        landed = ("after suspending" if suspended else
                  "after the claim" if store.claims("child") else "before the claim")
        print(f"trial {trial}: kill at {point}: landed {landed}")
        engine = Engine(store, where)
        engine.run_until(functools.partial(completed, store, run_id), resume=run_id)
        assert json.loads((where / "got.json").read_text()) == {"sq": 49}, (point, engine.log)
        assert runs(where, 7) == 1, (point, engine.log)  # the child executed exactly once
        assert len(store.claims("child")) == 1
        child = store.claims("child")[0]["run_id"]
        assert child_state(store, child).status == "completed"
        assert child_runs(store, run_id) == [child]
        by_trigger = set(nbd.history(store=store, trigger="test", limit=None).run_id)
        assert run_id in by_trigger and child not in by_trigger  # (its resumes inherit the origin)


@pytest.mark.kernel
@pytest.mark.slow
def test_headless_fan_out_claims_every_child_before_suspending(tmp_path: Path) -> None:
    where = notebooks(tmp_path)
    parent = write_notebook(where / "parent.ipynb", [
        "import functools, json, pathlib, nbdurable as nbd\n"
        "rs = nbd.map(functools.partial(nbd.run_notebook, 'child.ipynb'), [{'n': 1}, {'n': 2}, {'n': 3}])\n"
        "pathlib.Path('got.json').write_text(json.dumps(rs))",
    ])
    store = Store.open(where / "store")
    run_id = new_run_id()
    assert Launcher().start(LaunchSpec(str(store.path), str(parent), run_id=run_id)).wait(180) == 3  # suspended
    end = store.read_journal(run_id)[-1]
    claimed = [c["run_id"] for c in store.claims("child")]
    assert len(claimed) == 3 and sorted(end["waiting_for"]["children"]) == sorted(claimed)
    assert why_due(store, run_id, time.time()) is None and next_deadline(store, run_id) is None
    engine = Engine(store, where)
    engine.run_until(functools.partial(completed, store, run_id))
    assert json.loads((where / "got.json").read_text()) == [{"sq": 1}, {"sq": 4}, {"sq": 9}]
    assert [runs(where, n) for n in (1, 2, 3)] == [1, 1, 1]
    resumed = [fields["reason"] for event, fields in engine.log if event == "resume_started"]
    assert len(resumed) == 1 and "child runs ended" in resumed[0]  # one resume, once all three ended
    history = nbd.history(store=store, parent_run=run_id)
    assert sorted(history.run_id) == sorted(claimed)
    assert set(history.status) == {"completed"} and all(o["parent_root"] == run_id for o in history.origin)
    shown = run_cli("show", claimed[0], "--store", str(store.path), in_process=True)
    assert shown.returncode == 0 and f"child run of {run_id}" in shown.stdout, shown.output


@pytest.mark.kernel
@pytest.mark.slow
def test_headless_failing_child_is_retried_as_new_children_under_the_policy(tmp_path: Path) -> None:
    where = notebooks(tmp_path)
    parent = write_notebook(where / "parent.ipynb", [
        "import json, pathlib, nbdurable as nbd\n"
        "r = nbd.run_notebook('flaky.ipynb', retry=nbd.RetryPolicy(max_attempts=3, initial_interval=0))\n"
        "pathlib.Path('got.json').write_text(json.dumps(r))",
    ])
    store = Store.open(where / "store")
    run_id = new_run_id()
    assert Launcher().start(LaunchSpec(str(store.path), str(parent), run_id=run_id)).wait(180) == 3
    Engine(store, where).run_until(functools.partial(completed, store, run_id), timeout=400)
    assert json.loads((where / "got.json").read_text()) == "ok"
    assert (where / "flaky-count.txt").read_text() == "xxx"  # one execution per child: 2 failed, the third completed
    claims = sorted(store.claims("child"), key=lambda c: c["origin"]["attempt"])
    assert [c["key"].rsplit("#", 1)[1] for c in claims] == ["1", "2", "3"]
    assert [child_state(store, c["run_id"]).status for c in claims] == ["failed", "failed", "completed"]
    final = chain_head(store, run_id)
    attempts = [r for r in store.read_journal(final) if r.get("t") == "attempt"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3] and attempts[0]["error"]["ename"] == "ChildRunFailed"
    assert "flaky attempt 1" in attempts[0]["error"]["evalue"]


@pytest.mark.kernel
@pytest.mark.slow
def test_cancelling_a_parent_cancels_its_children_started_or_not(tmp_path: Path) -> None:
    where = notebooks(tmp_path)
    parent = write_notebook(where / "parent.ipynb", [
        "import nbdurable as nbd\nh1 = nbd.run_notebook('slow.ipynb', {'tag': 1}, wait=False)\n"
        "h2 = nbd.run_notebook('slow.ipynb', {'tag': 2}, wait=False)\nh1.result()",
    ])
    store = Store.open(where / "store")
    run_id = new_run_id()
    assert Launcher().start(LaunchSpec(str(store.path), str(parent), run_id=run_id)).wait(180) == 3
    first, second = (c["run_id"] for c in store.claims("child"))
    engine = Engine(store, where)
    engine.worker.max_concurrent = 1  # the first child runs, the second stays claimed
    engine.run_until(lambda: (where / "slow-started-1").exists() or (where / "slow-started-2").exists(), drain=False)
    started = first if (where / "slow-started-1").exists() else second
    waiting = second if started == first else first
    os.environ["NBDURABLE_CANCEL_GRACE"] = "2"
    try:
        outcome = cancel_run(store, run_id, reason="test", wait=0)
    finally:
        del os.environ["NBDURABLE_CANCEL_GRACE"]
    assert outcome.status == "cancelled"
    assert store.cancel_requested(waiting) and not store.journal_exists(waiting)
    engine.worker.max_concurrent = 4
    engine.run_until(lambda: child_state(store, started).ended and child_state(store, waiting).ended, timeout=120)
    assert child_state(store, started).status == "cancelled"
    assert child_state(store, waiting).status == "cancelled"  # started afterwards: ended at once, no kernel
    assert not (where / "slow-started-2" if waiting == second else where / "slow-started-1").exists()
    assert sorted(child_runs(store, run_id)) == sorted([first, second])
    by_status = nbd.history(store=store, status="cancelled")
    assert set(by_status.run_id) == {run_id, first, second}


# ----- interactive, in a real kernel ----------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.slow
def test_interactive_child_runs_wait_handles_retries_fan_out_and_the_graph(tmp_path: Path) -> None:
    where = notebooks(tmp_path)
    store_dir = where / "store"
    kernel = Kernel({"NBDURABLE_STORE": str(store_dir), "NBDURABLE_NOTEBOOK": str(where / "parent.ipynb")}, where)
    try:
        def run(code: str, timeout: float = 180) -> tuple[dict, list[dict], str]:
            reply, outputs = kernel.execute(code, timeout=timeout)
            text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in outputs)
            return reply, outputs, text

        assert run("%load_ext nbdurable")[0]["status"] == "ok"
        reply, outputs, text = run("import nbdurable as nbd\nr = nbd.run_notebook('child.ipynb', {'n': 4})\nprint(r)")
        assert reply["status"] == "ok", text
        assert "{'sq': 16}" in text and "child run" in text  # the live line, then the result
        assert any(o.get("metadata", {}).get("nbdurable", {}).get("notice") == "waiting" for o in outputs)

        reply, _, text = run("h = nbd.run_notebook('child.ipynb', {'n': 5}, wait=False)\n"
                             "print(h.status() in ('pending', 'running', 'completed'), h.result(timeout=120))")
        assert reply["status"] == "ok" and "True {'sq': 25}" in text, text

        reply, _, text = run("s = nbd.run_notebook('slow.ipynb', wait=False)\ntry:\n    s.result(timeout=0.5)\n"
                             "except nbd.ChildRunTimeoutError as e:\n"
                             "    print('timed out', type(e).__mro__[1].__name__)\n"
                             "import pathlib; pathlib.Path('go').touch()\nprint(s.result(timeout=120))")
        assert reply["status"] == "ok" and "timed out" in text and "None" in text, text

        reply, _, text = run("import functools\nprint(nbd.map(functools.partial(nbd.run_notebook, 'child.ipynb'), "
                             "[{'n': 1}, {'n': 2}, {'n': 3}]))")
        assert reply["status"] == "ok" and "[{'sq': 1}, {'sq': 4}, {'sq': 9}]" in text, text

        reply, _, text = run("print(nbd.run_notebook('flaky.ipynb', retry=nbd.RetryPolicy(max_attempts=3, "
                             "initial_interval=0)))")
        assert reply["status"] == "ok" and "ok" in text, text
        assert (where / "flaky-count.txt").read_text() == "xxx"  # three children: two failed, one completed

        reply, _, text = run("try:\n    nbd.run_notebook('bad.ipynb', retry=nbd.RetryPolicy(max_attempts=2, "
                             "initial_interval=0))\nexcept nbd.ChildRunFailed as e:\n"
                             "    print('failed:', e.status, e.message)")
        assert reply["status"] == "ok" and "failed: failed" in text and "ValueError: bad child" in text, text
        (where / "broken.ipynb").write_text("{ not a notebook")
        reply, _, text = run("try:\n    nbd.run_notebook('broken.ipynb')\nexcept nbd.ChildRunFailed as e:\n"
                             "    print('never started:', e.message)")
        assert reply["status"] == "ok" and "never started: child run" in text and "could not start" in text, text
        reply, _, text = run("print(nbd.current_run_id())")
        parent_run = text.strip()
    finally:
        kernel.close()
    assert [runs(where, n) for n in (1, 2, 3, 4, 5)] == [1, 1, 1, 1, 1]
    store = Store.open(store_dir)
    history = nbd.history(store=store, parent_run=parent_run, limit=None)
    assert len(history) == 1 + 1 + 1 + 3 + 3 + 2  # child 4, child 5, slow, fan-out, flaky x3, bad x2 (broken: no run)
    flaky = history[history.notebook.str.endswith("flaky.ipynb")].sort_values("run_id")
    assert list(flaky.status) == ["failed", "failed", "completed"]
    assert [o["attempt"] for o in flaky.origin] == [1, 2, 3]
    assert set(history.parent_run) == {parent_run}

    graph = build_graph(store, parent_run)
    child_nodes = [n for n in graph["nodes"] if n.get("kind") == "child_run"]
    assert len(child_nodes) == len(history)
    assert {n["child_run"]["run_id"] for n in child_nodes} == set(history.run_id)
    edges = {(e["source"], e["target"]) for e in graph["edges"] if e.get("kind") == "child"}
    assert len(edges) == len(child_nodes)
    second_cell = next(n for n in graph["nodes"] if n.get("kind") != "child_run" and n["ordinal"] and
                       "child.ipynb', {'n': 4}" in n["source"])
    assert second_cell["child_runs"] == [n["child_run"]["run_id"] for n in child_nodes
                                         if (second_cell["id"], n["id"]) in edges]
    assert len(second_cell["child_runs"]) == 1
    child_graph = build_graph(store, second_cell["child_runs"][0])  # the link's target: the child's own graph
    assert child_graph["run"]["status"] == "completed"
    if NODE is not None:  # the report draws them: dashed child-run boxes, cells numbered without them, a link
        from nbdurable.report import write_report

        write_report(store, parent_run, where / "parent.html")
        child_id = second_cell["child_runs"][0]
        check = subprocess.run([NODE, str(JS / "render_check.js"), "report", str(where / "parent.html"),
                                f"#r{child_id}"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        drawn = json.loads(check.stdout)["initial"]
        boxes = [n for n in drawn["nodes"] if "nbd-node-child-run" in n["cls"]]
        assert len(boxes) == len(child_nodes) and all(n["text"].startswith("child run: ") for n in boxes)
        assert f"\u2197 run {child_id}" in next(n["text"] for n in boxes if n["id"] == f"r{child_id}")
        cells = [n["text"].split(" | ")[0] for n in drawn["nodes"] if "nbd-node-child-run" not in n["cls"]]
        assert cells == [f"#{k}" for k in range(1, len(cells) + 1)]
        assert drawn["details"]["nodeId"] == f"r{child_id}"
        assert drawn["runLinks"] == [[child_id, f"{child_id}.html"]]


# ----- no kernel ------------------------------------------------------------------------------------


def test_run_notebook_and_result_reject_bad_input_clearly(tmp_path: Path) -> None:
    from nbdurable.headless.children import run_notebook

    notebooks(tmp_path)
    with pytest.raises(OptionsError, match="no notebook .*missing.ipynb"):
        run_notebook(tmp_path / "missing.ipynb")
    with pytest.raises(OptionsError, match="must be JSON values"):
        run_notebook(tmp_path / "child.ipynb", params={"when": object()})
    with pytest.raises(OptionsError, match="params must be a dict"):
        run_notebook(tmp_path / "child.ipynb", params=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(OptionsError, match="not in a durable cell"):
        nbd.result(1)
    with pytest.raises(OptionsError, match="parent_run must be a name"):
        nbd.history(store=tmp_path / "store", parent_run="")
    assert nbd.history(store=tmp_path / "store", schedule="nightly", trigger="t").empty


def test_a_child_claim_is_one_run_and_cancel_requests_reach_unstarted_children(tmp_path: Path) -> None:
    from nbdurable.headless.children import claim_child

    store = Store.open(tmp_path / "store")
    origin = {"parent_run": "20260101T000000000-aaaaaa", "parent_root": "20260101T000000000-aaaaaa",
              "parent_step": 2}
    first = claim_child(store, "r/x:1:1#1", str(tmp_path / "c.ipynb"), {}, origin)
    assert claim_child(store, "r/x:1:1#1", str(tmp_path / "c.ipynb"), {}, origin) == first  # the claim stands
    assert child_state(store, first).status == "pending" and not child_state(store, first).ended
    assert child_runs(store, "20260101T000000000-aaaaaa") == []  # the parent has no journal: no chain


def test_a_run_graph_opens_a_child_runs_own_graph_when_its_link_is_clicked(tmp_path: Path) -> None:
    import anywidget  # noqa: F401  (imported before recording comms: importing it resets the comm factory)
    import ipywidgets  # noqa: F401

    from nbdurable.runtime.run import DurableRun
    from nbdurable.widgets.run_graph import RunGraph

    from widget_comm import recording_comms

    store = Store.open(tmp_path / "store")
    parent = DurableRun(store, notebook="parent.ipynb", kind="headless")
    cell = parent.begin_step(source="r = nbd.run_notebook('child.ipynb')", source_hash="h1")
    call = parent.begin_step(source="", source_hash="a", name="nbd.run_notebook", parent=cell.ordinal)
    origin = {"parent_run": parent.run_id, "parent_root": parent.run_id, "parent_step": call.ordinal, "attempt": 1}
    child = DurableRun(store, notebook="child.ipynb", kind="headless", origin=origin)
    child.finish("suspended", wake_at=time.time())
    resumed = DurableRun(store, notebook="child.ipynb", kind="headless", origin=origin, resumed_from=child.run_id,
                         root_run=child.run_id)  # the worker resumed the child: still one child run, completed
    resumed.finish("completed")
    parent.end_child(call, "completed", changes=[])
    parent.end_step(cell, status="completed")
    parent.finish("completed")
    with recording_comms():
        widget = RunGraph(parent.run_id, store=store)
    [node] = [n for n in widget.graph["nodes"] if n.get("kind") == "child_run"]
    assert node["child_run"]["run_id"] == child.run_id and node["id"] == f"r{child.run_id}"
    assert node["status"] == "completed"
    assert node["child_run"]["current"] == resumed.run_id
    widget.comm.click({"type": "open_run", "run_id": resumed.run_id})  # the details' "Open run" link
    assert widget.graph["run"]["run_id"] == resumed.run_id and widget.graph["run"]["status"] == "completed"
    widget.comm.click({"type": "open_run", "run_id": "20990101T000000000-ffffff"})  # unknown: the view stays
    assert widget.graph["run"]["run_id"] == resumed.run_id
