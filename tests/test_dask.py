"""``nbd.map(fn, items, executor=...)`` on a real Dask ``LocalCluster`` (worker processes) and on a process
pool, driven from real kernels: notebook-defined functions and classes ship by value, every call is a step
journaled by the kernel, fn's exceptions follow the step's RetryPolicy, a Dask worker SIGKILLed mid-map is
retried by Dask, a kernel SIGKILLed mid-map resumes by submitting only the missing items.
The sweeps (``nbdurable sweep``) are in test_sweep.py."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import journal_paths, journal_records
from kernels import Kernel

distributed = pytest.importorskip("distributed", reason="pip install 'nbdurable[dask]'")

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.xdist_group("dask")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    """Two worker processes (two threads each); their environment (PYTHONPATH) is this process's."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def kernel(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kernel, Path, Path]]:
    """One recording kernel for this module (a store, a client of the cluster), and a directory for side effects."""
    root = tmp_path_factory.mktemp("dask-map")
    store, effects = root / "store", root / "effects"
    effects.mkdir()
    k = Kernel({"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": str(root / "map.ipynb")}, root)
    run(k, "%load_ext nbdurable")
    run(k, f"import os, pathlib, time, uuid\nimport nbdurable as nbd\nfrom dask.distributed import Client\n"
        f"EFFECTS = pathlib.Path({str(effects)!r})\nclient = Client({cluster.scheduler_address!r})")
    run(k, "class Point:\n    def __init__(self, x, pid):\n        self.x, self.pid = x, pid\n"
        "def scale(i):\n    (EFFECTS / f'scale-{i}-{uuid.uuid4().hex}').touch()\n    return Point(i * 2, os.getpid())")
    yield k, store, effects
    k.close()


def run(k: Kernel, code: str, timeout: float = 120) -> str:
    """Execute ``code``; its printed text (the cell must succeed)."""
    reply, outputs = k.execute(code, timeout=timeout)
    assert reply["status"] == "ok", (code, reply.get("ename"), reply.get("evalue"), outputs)
    return "".join(o.get("text", "") for o in outputs)


def value(k: Kernel, expression: str) -> object:
    return json.loads(run(k, f"import json as _json\nprint(_json.dumps({expression}))"))


def children(store: Path, name: str) -> tuple[list[dict], list[dict], list[dict]]:
    """The step_start, step_end and attempt records of explicit steps named ``name``, over the store's runs."""
    starts, ends, attempts = [], [], []
    for path in journal_paths(store):
        records = journal_records(path)
        mine = [r for r in records if r["t"] == "step_start" and r.get("parent") is not None and r.get("name") == name]
        ordinals = {r["ordinal"] for r in mine}
        starts += mine
        ends += [r for r in records if r["t"] == "step_end" and r["ordinal"] in ordinals]
        attempts += [r for r in records if r["t"] == "attempt" and r["ordinal"] in ordinals]
    return starts, ends, attempts


def worker_pids(cluster) -> set[int]:
    with distributed.Client(cluster.scheduler_address) as client:
        return set(client.run(os.getpid).values())


def test_map_on_dask_ships_notebook_functions_and_journals_each_item_in_the_kernel(kernel, cluster) -> None:
    k, store, effects = kernel
    run(k, "points = nbd.map(scale, range(8), executor=client)")
    assert value(k, "[p.x for p in points]") == [0, 2, 4, 6, 8, 10, 12, 14]
    pids = set(value(k, "[p.pid for p in points]"))  # type: ignore[arg-type]
    assert pids <= worker_pids(cluster) and value(k, "os.getpid()") not in pids
    assert len(list(effects.glob("scale-*"))) == 8
    starts, ends, attempts = children(store, "scale")
    assert [r["options"]["seq"] for r in starts] == list(range(1, 9)), "begun in item order, by the kernel"
    assert [r["status"] for r in ends] == ["completed"] * 8 and len(attempts) == 8


def test_map_on_a_process_pool_ships_with_cloudpickle(kernel) -> None:
    k, store, effects = kernel
    run(k, "from concurrent.futures import ProcessPoolExecutor\nwith ProcessPoolExecutor(2) as pool:\n"
        "    pooled = nbd.map(scale, [10, 11, 12], executor=pool, name='pooled')")
    assert value(k, "[p.x for p in pooled]") == [20, 22, 24]
    assert value(k, "os.getpid()") not in value(k, "[p.pid for p in pooled]")  # type: ignore[operator]
    _, ends, _ = children(store, "pooled")
    assert [r["status"] for r in ends] == ["completed"] * 3


def test_exceptions_in_fn_follow_the_steps_retry_policy_not_dasks_retries(kernel) -> None:
    k, store, effects = kernel
    run(k, "def flaky(i):\n    mark = EFFECTS / f'flaky-{i}'\n    if not mark.exists():\n        mark.touch()\n"
        "        raise ConnectionError(f'item {i} failed once')\n    return i\n"
        "retried = nbd.map(flaky, range(4), executor=client,\n"
        "                  retry=nbd.RetryPolicy(max_attempts=3, initial_interval='50ms'))")
    assert value(k, "retried") == [0, 1, 2, 3]
    _, ends, attempts = children(store, "flaky")
    assert [r["status"] for r in ends] == ["completed"] * 4
    assert sorted((a["attempt"], (a["error"] or {}).get("ename")) for a in attempts) == sorted(
        [(1, "ConnectionError"), (2, None)] * 4)
    reply, _ = k.execute("def broken(i):\n    raise KeyError(f'no item {i}')\n"
                         "nbd.map(broken, range(2), executor=client, retry=nbd.RetryPolicy(max_attempts=2, "
                         "initial_interval=0))")
    assert reply["status"] == "error" and reply["ename"] == "KeyError" and "no item 0" in reply["evalue"]
    _, ends, attempts = children(store, "broken")
    assert [r["status"] for r in ends] == ["failed", "failed"] and len(attempts) == 4, "2 attempts each, no more"


def test_an_executor_of_the_wrong_type_is_a_clear_error_and_journals_nothing(kernel) -> None:
    k, store, _ = kernel
    reply, _ = k.execute("nbd.map(scale, range(3), executor=42, name='wrong')")
    assert reply["status"] == "error" and reply["ename"] == "OptionsError"
    assert "dask.distributed.Client or a concurrent.futures.Executor, not builtins.int" in reply["evalue"]
    reply, _ = k.execute("closed = Client(client.scheduler.address)\nclosed.close()\n"
                         "nbd.map(scale, range(3), executor=closed, name='wrong')")
    assert reply["status"] == "error" and reply["ename"] == "OptionsError" and "closed" in reply["evalue"]
    assert children(store, "wrong") == ([], [], [])


def test_timeouts_apply_where_items_run_and_a_broken_pool_is_an_executor_error(kernel) -> None:
    k, store, _ = kernel
    reply, _ = k.execute("def spins(i):\n    while True:\n        i += 1\n"
                         "nbd.map(spins, [1], executor=client, timeout=0.3)", timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "StepTimeoutError", reply
    reply, _ = k.execute("from concurrent.futures import ProcessPoolExecutor\n"
                         "def dies(i):\n    os._exit(3)\nwith ProcessPoolExecutor(1) as dying:\n"
                         "    nbd.map(dies, [1, 2], executor=dying)", timeout=60)
    assert reply["status"] == "error" and reply["ename"] == "ExecutorError", reply
    assert "create a new one and run the cell again" in reply["evalue"]
    _, ends, _ = children(store, "dies")
    assert [r["status"] for r in ends] == ["failed", "failed"]


def test_an_interrupted_map_cancels_the_items_not_started(kernel) -> None:
    k, _, effects = kernel
    run(k, "def sleepy(i):\n    (EFFECTS / f'sleepy-{i}').touch()\n    time.sleep(1)\n    return i")
    k.start("nbd.map(sleepy, range(40), executor=client)")
    deadline = time.monotonic() + 60
    while len(list(effects.glob("sleepy-*"))) < 4:  # the cluster's 4 threads are busy
        assert time.monotonic() < deadline, "the items never started"
        time.sleep(0.05)
    k.interrupt_later(0).join()
    reply = k.kc.get_shell_msg(timeout=60)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    time.sleep(2.5)  # what was running ends; nothing else may start
    assert len(list(effects.glob("sleepy-*"))) <= 12, "the items not started were cancelled"


def test_a_dask_worker_killed_mid_map_is_retried_by_dask(kernel, cluster) -> None:
    k, store, effects = kernel
    run(k, "def slow(i):\n    (EFFECTS / f'slow-{i}-{os.getpid()}').touch()\n    time.sleep(1.5)\n    return i * 3")
    k.start("tripled = nbd.map(slow, range(8), executor=client)")
    deadline = time.monotonic() + 60
    while len(started := list(effects.glob("slow-*"))) < 2:
        assert time.monotonic() < deadline, "no item started"
        time.sleep(0.05)
    victim = int(started[0].name.split("-")[2])
    os.kill(victim, signal.SIGKILL)  # the worker process (its nanny starts a new one)
    reply = k.kc.get_shell_msg(timeout=120)["content"]
    assert reply["status"] == "ok", reply
    assert value(k, "tripled") == [i * 3 for i in range(8)]
    runs = [p.name.split("-") for p in effects.glob("slow-*")]
    lost = {int(i) for _, i, pid in runs if int(pid) == victim}
    assert lost and all(sum(1 for _, j, _ in runs if int(j) == i) == 2 for i in lost), "lost items ran again"
    _, ends, attempts = children(store, "slow")
    assert [r["status"] for r in ends] == ["completed"] * 8
    assert len(attempts) == 8, "Dask retried the lost items itself: one attempt each for the step"


def test_kernel_killed_mid_map_resumes_submitting_only_the_missing_items(cluster, tmp_path: Path) -> None:
    store, effects = tmp_path / "store", tmp_path / "effects"
    effects.mkdir()
    env = {"NBDURABLE_STORE": str(store), "NBDURABLE_NOTEBOOK": str(tmp_path / "killed.ipynb")}
    cells = [
        "%load_ext nbdurable",
        f"import os, pathlib, time\nimport nbdurable as nbd\nfrom dask.distributed import Client\n"
        f"EFFECTS = pathlib.Path({str(effects)!r})\nclient = Client({cluster.scheduler_address!r})",
        "(EFFECTS / 'kernel.pid').write_text(str(os.getpid()))",
        "def work(i):\n    (EFFECTS / f'run-{i}-{time.time_ns()}').touch()\n    time.sleep(0.3)\n"
        "    if i == 9 and not (EFFECTS / 'killed').exists():\n        (EFFECTS / 'killed').touch()\n"
        "        os.kill(int((EFFECTS / 'kernel.pid').read_text()), 9)\n    return i * i",
        "squares = nbd.map(work, range(16), executor=client)",
    ]
    first = Kernel(env, tmp_path)
    for cell in cells[:-1]:
        run(first, cell)
    first.start(cells[-1])
    first.km.provisioner.process.wait(timeout=120)  # type: ignore[union-attr]
    first.close()
    time.sleep(1.0)  # the scheduler forgets the dead client's tasks; what still starts, starts before `restart`
    starts, ends, _ = children(store, "work")
    item = {r["ordinal"]: r["options"]["seq"] - 1 for r in starts}
    completed = {item[r["ordinal"]] for r in ends if r["status"] == "completed"}
    assert completed and 9 not in completed, completed
    restart = time.time_ns()
    second = Kernel(env, tmp_path)
    try:
        for cell in cells:
            run(second, cell)
        assert value(second, "squares") == [i * i for i in range(16)]
    finally:
        second.close()
    again = [int(p.name.split("-")[1]) for p in effects.glob("run-*") if int(p.name.split("-")[2]) > restart]
    assert sorted(again) == sorted(set(range(16)) - completed), "only the missing items were submitted, once each"
