"""Explicit durable steps: retry policies with every attempt recorded, replay after a crash, and
nondeterminism detected. Crash tests run real IPython shells in fresh processes, killed with SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest

import nbdurable as nbd
from nbdurable.errors import NondeterminismError, NonRetryableError, OptionsError, RetryAfter
from nbdurable.runtime.checkpoint import ObjectLoader
from nbdurable.runtime.policy import parse_duration
from nbdurable.runtime.run import DurableRun
from nbdurable.runtime.session import enter_cell
from nbdurable.runtime.steps import StepContext
from nbdurable.store import Store

from conftest import run_session
from helpers import KILL, executions, journal_records


@pytest.fixture
def cell(tmp_path: Path):
    """A real run with one cell step in progress, as the kernel extension sets it up."""
    store = Store.open(tmp_path / "store")
    run = DurableRun(store, notebook="steps")
    step = run.begin_step(source="cell", source_hash="c" * 32)
    enter_cell(StepContext(run, step, [], ObjectLoader(store, {})))
    yield store, run
    enter_cell(None)
    run.finish("completed")


def attempts(store: Store, run: DurableRun) -> list[dict]:
    run.wait_durable()
    return [r for r in store.read_journal(run.run_id) if r["t"] == "attempt"]


def test_flaky_step_succeeds_on_attempt_3_with_backoff_recorded(cell) -> None:
    store, run = cell
    calls = []

    @nbd.step(retry=nbd.RetryPolicy(max_attempts=5, initial_interval="10ms", backoff=2.0, max_interval="1m"))
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError("service unavailable")
        return x * 2

    assert flaky(21) == 42
    recorded = attempts(store, run)
    assert [a["attempt"] for a in recorded] == [1, 2, 3]
    assert [a["next_delay"] for a in recorded] == [0.01, 0.02, None]
    assert [a["error"]["ename"] if a["error"] else None for a in recorded] == [
        "ConnectionError", "ConnectionError", None]
    end = [r for r in store.read_journal(run.run_id) if r["t"] == "step_end" and r["variables"]][-1]
    assert end["status"] == "completed" and end["variables"][0]["name"] == "result"


def test_non_retryable_errors_stop_at_once(cell) -> None:
    store, run = cell

    @nbd.step(retry=nbd.RetryPolicy(max_attempts=5, initial_interval=0, non_retryable=(KeyError,)))
    def fails(kind: str) -> None:
        raise NonRetryableError("bad input") if kind == "nr" else KeyError(kind)

    with pytest.raises(NonRetryableError):
        fails("nr")
    with pytest.raises(KeyError):
        fails("key")
    assert [a["attempt"] for a in attempts(store, run)] == [1, 1]


def test_retry_after_sets_the_next_delay(cell) -> None:
    store, run = cell
    tries = []

    def rate_limited() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise RetryAfter(0.05)
        return "ok"

    assert nbd.run_step("rate-limited", rate_limited, retry=nbd.RetryPolicy(max_attempts=2)) == "ok"
    assert [a["next_delay"] for a in attempts(store, run)] == [0.05, None]


def test_policy_and_duration_validation() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25 and parse_duration(3) == 3.0
    for bad in ("soon", "-5s", -1, ""):
        with pytest.raises(OptionsError):
            parse_duration(bad)
    with pytest.raises(OptionsError):
        nbd.RetryPolicy(max_attempts=0)
    assert nbd.RetryPolicy(initial_interval="1s", backoff=3, max_interval="5s").delay(3) == 5.0


def test_steps_outside_a_durable_cell_just_run_with_retries() -> None:
    enter_cell(None)
    tries = []

    def once_flaky() -> int:
        tries.append(1)
        if len(tries) == 1:
            raise TimeoutError()
        return 7

    assert nbd.run_step("plain", once_flaky, retry=nbd.RetryPolicy(max_attempts=2, initial_interval=0)) == 7


LOOP_CELLS = [
    "import os, pathlib\nimport nbdurable as nbd\n",
    "@nbd.step\ndef work(i):\n"
    "    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n"
    "    if i == 30 and not pathlib.Path(MARKER).exists():\n"
    "        pathlib.Path(MARKER).touch()\n        os.kill(os.getpid(), 9)\n"
    "    return i * i",
    "results = [work(i) for i in range(50)]",
    "total = sum(results)",
]


def test_loop_of_50_steps_killed_at_30_resumes_executing_exactly_20(store_dir: Path, tmp_path: Path) -> None:
    counter, marker = tmp_path / "count.txt", tmp_path / "killed"
    cells = [f"COUNTER = {str(counter)!r}\nMARKER = {str(marker)!r}", *LOOP_CELLS]
    first = run_session(store_dir, cells)
    assert first.killed
    assert executions(counter) == [str(i) for i in range(31)]
    second = run_session(store_dir, cells, probes={"total": "total", "n": "len(results)"})
    assert second.probes == {"total": str(sum(i * i for i in range(50))), "n": "50"}
    executed_again = executions(counter)[31:]
    assert executed_again == [str(i) for i in range(30, 50)], "calls 0..29 replayed, 30..49 executed: exactly 20"


def test_a_resume_killed_again_does_not_rerun_the_calls_it_replayed(store_dir: Path, tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    cells = [
        "import os, pathlib\nimport nbdurable as nbd\n"
        f"COUNTER, MARKS = {str(counter)!r}, {str(tmp_path)!r}",
        "@nbd.step\ndef work(i):\n"
        "    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n"
        "    mark = pathlib.Path(MARKS, f'killed-at-{i}')\n"
        "    if i in (3, 7) and not mark.exists():\n        mark.touch()\n        os.kill(os.getpid(), 9)\n"
        "    return i",
        "results = [work(i) for i in range(10)]",
    ]
    assert run_session(store_dir, cells).killed  # at 3
    assert run_session(store_dir, cells).killed  # at 7: calls 0..2 were replayed, 3..7 executed
    third = run_session(store_dir, cells, probes={"results": "results"})
    assert third.probes["results"] == repr(list(range(10)))
    # 0..3 by the first session, 3..7 by the second (3 died mid-call), 7..9 by the third: nothing else twice.
    assert executions(counter) == [str(i) for i in [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9]]


def test_a_resume_killed_before_the_cut_short_cell_keeps_its_completed_calls(store_dir: Path, tmp_path: Path) -> None:
    """Found by the crash harness: run 1 dies inside the loop cell after 5 calls; run 2 (a resume) dies in an
    earlier cell, before it reaches the loop; run 3 must still replay the 5 calls run 1 completed."""
    counter = tmp_path / "count.txt"
    setup = ("import os, pathlib\nimport nbdurable as nbd\n"
             f"COUNTER, MARKS = {str(counter)!r}, {str(tmp_path)!r}")
    work = ("@nbd.step\ndef work(i):\n"
            "    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n"
            "    mark = pathlib.Path(MARKS, 'killed-in-loop')\n"
            "    if i == 5 and not mark.exists():\n        mark.touch()\n        os.kill(os.getpid(), 9)\n"
            "    return i")
    loop = "results = [work(i) for i in range(8)]"
    assert run_session(store_dir, [setup, work, loop]).killed  # calls 0..4 completed, 5 died mid-call
    assert run_session(store_dir, [setup, KILL]).killed  # a resume that never reached the loop cell
    third = run_session(store_dir, [setup, work, loop], probes={"results": "results"})
    assert third.probes["results"] == repr(list(range(8)))
    assert executions(counter) == [str(i) for i in [0, 1, 2, 3, 4, 5, 5, 6, 7]]


def test_replay_with_other_arguments_is_a_nondeterminism_error(store_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    cells = [
        f"import os, pathlib, random\nimport nbdurable as nbd\nMARKER = {str(marker)!r}",
        "@nbd.step\ndef fetch(x):\n    return x",
        "values = [fetch(random.random()) for _ in range(3)]\n"
        "if not pathlib.Path(MARKER).exists():\n    pathlib.Path(MARKER).touch()\n    os.kill(os.getpid(), 9)",
    ]
    assert run_session(store_dir, cells).killed
    second = run_session(store_dir, cells)
    error = second.cells[-1]["error"] or ""
    assert "NondeterminismError" in error and "`fetch` (call 1)" in error and "%durable new" in error
    assert NondeterminismError.__name__ in error


def test_a_call_that_failed_the_cell_executes_again_on_resume(store_dir: Path, tmp_path: Path) -> None:
    counter, flag = tmp_path / "count.txt", tmp_path / "api-is-up"
    cells = [
        f"import pathlib\nimport nbdurable as nbd\nCOUNTER, FLAG = {str(counter)!r}, {str(flag)!r}",
        "@nbd.step\ndef call_api(i):\n    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n"
        "    if i == 3 and not pathlib.Path(FLAG).exists():\n        raise ConnectionError('API down')\n    return i",
        "answers = [call_api(i) for i in range(5)]",
    ]
    first = run_session(store_dir, cells)
    assert "ConnectionError" in (first.cells[-1]["error"] or "")
    flag.touch()
    second = run_session(store_dir, cells, probes={"answers": "answers"})
    assert second.probes == {"answers": "[0, 1, 2, 3, 4]"}
    assert executions(counter) == ["0", "1", "2", "3", "3", "4"], "0-2 replayed; the failed call 3 runs again"


def test_async_steps_under_gather_resume(store_dir: Path, tmp_path: Path) -> None:
    counter, marker = tmp_path / "count.txt", tmp_path / "killed"
    cells = [
        f"import asyncio, os, pathlib\nimport nbdurable as nbd\nCOUNTER, MARKER = {str(counter)!r}, {str(marker)!r}",
        "@nbd.step\nasync def fetch(i):\n    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n"
        "    if i == 3 and not pathlib.Path(MARKER).exists():\n        pathlib.Path(MARKER).touch()\n"
        "        os.kill(os.getpid(), 9)\n"
        "    return i * 2",
        "out = await asyncio.gather(*(fetch(i) for i in range(6)))",
    ]
    assert run_session(store_dir, cells).killed
    second = run_session(store_dir, cells, probes={"out": "out"})
    assert second.probes == {"out": "[0, 2, 4, 6, 8, 10]"}
    assert executions(counter) == ["0", "1", "2", "3", "3", "4", "5"]


def test_map_resumes_only_the_missing_items(store_dir: Path, tmp_path: Path) -> None:
    counter, marker = tmp_path / "count.txt", tmp_path / "killed"
    cells = [
        f"import os, pathlib, time\nimport nbdurable as nbd\nCOUNTER, MARKER = {str(counter)!r}, {str(marker)!r}",
        "def work(i):\n    with open(COUNTER, 'a') as f:\n        f.write(f'{i}\\n')\n    time.sleep(0.02)\n"
        "    if i == 7 and not pathlib.Path(MARKER).exists():\n        pathlib.Path(MARKER).touch()\n"
        "        os.kill(os.getpid(), 9)\n"
        "    return i + 1",
        "res = nbd.map(work, range(12), concurrency=3)",
    ]
    assert run_session(store_dir, cells).killed
    started = set(map(int, executions(counter)))
    records = journal_records(store_dir)
    children = {r["ordinal"]: r["options"]["seq"] - 1 for r in records if r["t"] == "step_start" and r.get("parent")}
    completed = {children[r["ordinal"]] for r in records
                 if r["t"] == "step_end" and r["ordinal"] in children and r["status"] == "completed"}
    assert completed and 7 not in completed
    second = run_session(store_dir, cells, probes={"res": "res"})
    assert second.probes == {"res": str(list(range(1, 13)))}
    runs = list(map(int, executions(counter)))
    for i in range(12):
        expected = 1 if i in completed or i not in started else 2
        assert runs.count(i) == expected, (i, runs, completed)


def test_timeouts_interrupt_attempts_in_the_main_thread_workers_and_async(cell) -> None:
    import asyncio
    import time as _time

    from nbdurable.errors import StepTimeoutError

    store, run = cell

    @nbd.step(retry=nbd.RetryPolicy(max_attempts=2, initial_interval=0), timeout="200ms")
    def hangs() -> None:
        _time.sleep(30)  # a blocking wait in the main thread: the alarm interrupts it

    started = _time.perf_counter()
    with pytest.raises(StepTimeoutError):
        hangs()
    assert _time.perf_counter() - started < 5
    assert [a["error"]["ename"] for a in attempts(store, run)] == ["StepTimeoutError", "StepTimeoutError"]

    def spins(i: int) -> int:
        while True:  # Python code in a worker thread: interrupted at its next bytecode
            i += 1

    started = _time.perf_counter()
    with pytest.raises(StepTimeoutError):
        nbd.map(spins, [1, 2], concurrency=2, timeout=0.2)
    assert _time.perf_counter() - started < 5

    @nbd.step(timeout=0.1)
    async def waits() -> None:
        await asyncio.sleep(30)

    with pytest.raises(StepTimeoutError):
        asyncio.run(waits())

    @nbd.step(timeout="1s")
    def quick() -> str:
        return "done"

    assert quick() == "done"
    _time.sleep(1.2)  # the cancelled alarm must never fire afterwards


def test_map_on_an_executor_outside_a_durable_cell_runs_with_retries_and_checks_the_executor() -> None:
    from concurrent.futures import ThreadPoolExecutor

    failed: set[int] = set()

    def once_flaky(i: int) -> int:
        if i not in failed:
            failed.add(i)
            raise ConnectionError("once")
        return -i

    with ThreadPoolExecutor(2) as pool:
        assert nbd.map(once_flaky, range(5), executor=pool,
                       retry=nbd.RetryPolicy(max_attempts=2, initial_interval=0)) == [0, -1, -2, -3, -4]
        with pytest.raises(ConnectionError):
            nbd.map(once_flaky, [7], executor=pool)
    with pytest.raises(OptionsError, match="not builtins.str"):
        nbd.map(once_flaky, [1], executor="tcp://127.0.0.1:8786")


def test_map_on_a_thread_pool_executor_journals_each_item(cell) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store, run = cell
    with ThreadPoolExecutor(2) as pool:
        assert nbd.map(lambda i: i * 10, range(4), executor=pool, name="tens") == [0, 10, 20, 30]
    run.wait_durable()
    records = store.read_journal(run.run_id)
    starts = [r for r in records if r["t"] == "step_start" and r.get("name") == "tens"]
    assert [r["options"]["seq"] for r in starts] == [1, 2, 3, 4]
    ordinals = {r["ordinal"] for r in starts}
    assert sum(r["t"] == "step_end" and r["ordinal"] in ordinals and r["status"] == "completed" for r in records) == 4
    assert len(attempts(store, run)) == 4


def test_map_on_an_executor_skips_retry_delays_on_a_time_skipping_clock() -> None:
    import time as _time
    from concurrent.futures import ThreadPoolExecutor

    failed: set[int] = set()

    def once_flaky(i: int) -> int:
        if i not in failed:
            failed.add(i)
            raise ConnectionError("once")
        return i

    started = _time.perf_counter()
    with nbd.testing.time_skipping() as virtual, ThreadPoolExecutor(2) as pool:
        before = virtual.now()
        assert nbd.map(once_flaky, range(3), executor=pool,
                       retry=nbd.RetryPolicy(max_attempts=2, initial_interval="1h", max_interval="1h")) == [0, 1, 2]
        assert virtual.now() - before >= 3600
    assert _time.perf_counter() - started < 5
