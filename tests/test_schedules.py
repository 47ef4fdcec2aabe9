"""Schedules without kernels: slot arithmetic (cron in zones across daylight-saving changes, epoch-aligned
intervals, catch-up policies), definitions stored durably, the worker's schedule pass claiming slots (exactly
one claim per slot, also with several passes racing), and the `nbdurable schedule` commands with their errors.
The runs themselves (real kernels, killed workers) are in tests/test_engine.py."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from nbdurable.errors import OptionsError
from nbdurable.headless.scheduler import SLOT_KIND, fire_schedules, make_schedule
from nbdurable.runtime.schedules import (
    Timing,
    catch_up,
    check_timing,
    next_slot,
    parse_time,
    slot_iso,
    slot_key,
    slots,
)
from nbdurable.store import Store

from helpers import run_cli, write_notebook

PARIS = ZoneInfo("Europe/Paris")


def paris(*args: int, fold: int = 0) -> float:
    return dt.datetime(*args, tzinfo=PARIS, fold=fold).timestamp()


def test_intervals_are_aligned_on_the_epoch_and_bounds_are_half_open() -> None:
    hourly = Timing(every=3600)
    start = dt.datetime(2026, 12, 6, 10, 20, tzinfo=dt.timezone.utc).timestamp()
    found = slots(hourly, start, start + 3 * 3600)
    assert [slot_key(s) for s in found] == ["2026-12-06T11:00:00Z", "2026-12-06T12:00:00Z", "2026-12-06T13:00:00Z"]
    assert slots(hourly, found[0], found[1]) == [found[1]]  # (after, until]
    assert next_slot(hourly, found[0]) == found[1]
    assert slot_iso(hourly, found[0]) == "2026-12-06T11:00:00+00:00"


def test_a_daily_cron_keeps_its_wall_time_across_daylight_saving_changes() -> None:
    daily = Timing(cron="0 6 * * *", tz="Europe/Paris")
    found = slots(daily, paris(2026, 3, 27), paris(2026, 3, 31))
    assert [slot_iso(daily, s) for s in found] == ["2026-03-27T06:00:00+01:00", "2026-03-28T06:00:00+01:00",
                                                   "2026-03-29T06:00:00+02:00", "2026-03-30T06:00:00+02:00"]
    assert found[2] - found[1] == 23 * 3600  # the short day


def test_a_wall_time_that_does_not_exist_fires_once_after_it_and_a_repeated_one_fires_once() -> None:
    spring = Timing(cron="30 2 * * *", tz="Europe/Paris")  # 02:30 does not exist on 29 March 2026
    found = slots(spring, paris(2026, 3, 28, 12), paris(2026, 3, 30, 12))
    assert [slot_iso(spring, s) for s in found] == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    autumn = Timing(cron="30 2 * * *", tz="Europe/Paris")  # 02:30 happens twice on 25 October 2026
    found = slots(autumn, paris(2026, 10, 24, 12), paris(2026, 10, 26, 12))
    assert [slot_iso(autumn, s) for s in found] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    half_hourly = Timing(cron="*/30 * * * *", tz="Europe/Paris")  # an interval keeps counting real time
    found = slots(half_hourly, paris(2026, 10, 25, 1, 45), paris(2026, 10, 25, 2, 45, fold=1))
    assert [slot_iso(half_hourly, s) for s in found] == ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
                                                         "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00"]
    assert all(b - a == 1800 for a, b in zip(found, found[1:], strict=False))


def test_catch_up_policies_split_missed_and_recent_slots() -> None:
    now = 100_000.0
    due = [now - 5 * 3600, now - 3600, now - 10]
    assert catch_up("all", due, now, 60) == (due, [])
    assert catch_up("latest", due, now, 60) == ([now - 10], due[:2])
    assert catch_up("none", due, now, 60) == ([now - 10], due[:2])
    assert catch_up("latest", due[:2], now, 60) == ([now - 3600], due[:1])  # none recent: the newest missed
    assert catch_up("none", due[:2], now, 60) == ([], due[:2])
    with pytest.raises(OptionsError, match="catch-up policy"):
        catch_up("some", due, now, 60)


@pytest.mark.parametrize(("cron", "tz", "every", "message"), [
    (None, None, None, "give --cron EXPR or --every DURATION"),
    ("* * * * *", None, 60, "give --cron EXPR or --every DURATION"),
    ("61 * * * *", None, None, "not a cron expression"),
    ("* * *", None, None, "not a cron expression"),
    ("0 6 * * *", "Mars/Olympus", None, "unknown time zone 'Mars/Olympus'"),
    (None, None, 0, "--every must be at least 1 second"),
    (None, "UTC", 60, "--tz applies to --cron only"),
])
def test_bad_timings_are_refused_with_what_to_do(cron: str | None, tz: str | None, every: float | None,
                                                 message: str) -> None:
    with pytest.raises(OptionsError, match=message) as info:
        check_timing(cron, tz, every)
    assert info.value.hint


def test_times_parse_in_the_schedules_zone_unless_they_carry_an_offset() -> None:
    assert parse_time("2026-12-01", "Europe/Paris") == paris(2026, 12, 1)
    assert parse_time("2026-12-01T06:00Z", "Europe/Paris") == dt.datetime(2026, 12, 1, 6,
                                                                          tzinfo=dt.timezone.utc).timestamp()
    with pytest.raises(OptionsError, match="not a date or time"):
        parse_time("yesterday")


def _schedule(tmp_path: Path, name: str = "tick", **options) -> dict:
    nb = tmp_path / "nb.ipynb"
    if not nb.exists():
        write_notebook(nb, ["# parameters\nscheduled_at = None", "print(scheduled_at)"])
    return make_schedule(name, nb, **options)


def test_definitions_are_stored_authenticated_replaced_atomically_and_names_are_unique(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    definition = _schedule(tmp_path, every=900, params={"region": "eu"})
    store.add_schedule(definition)
    with pytest.raises(OptionsError, match="already exists"):
        store.add_schedule({**definition, "every": 60})
    assert store.read_schedule("tick")["every"] == 900  # the refused one changed nothing
    store.update_schedule({**definition, "paused": True})
    assert store.read_schedule("tick")["paused"] is True
    assert [p.name for p in (tmp_path / "store" / "schedules").iterdir()] == ["tick.json"]  # no temporary left
    store.advance_schedule_cursor("tick", 1000.0)
    store.advance_schedule_cursor("tick", 500.0)  # never back
    assert store.schedule_cursor("tick") == 1000.0
    path = tmp_path / "store" / "schedules" / "tick.json"
    path.write_bytes(path.read_bytes().replace(b"900", b"901"))  # tampered: never used
    with pytest.raises(OptionsError, match="no schedule named 'tick'"):
        store.read_schedule("tick")
    with pytest.raises(OptionsError, match="not a valid schedule name"):
        _schedule(tmp_path, "../x", every=60)
    with pytest.raises(OptionsError, match="no notebook at"):
        make_schedule("x", tmp_path / "missing.ipynb", every=60)
    with pytest.raises(OptionsError, match="never fires"):
        _schedule(tmp_path, "feb31", cron="0 0 31 2 *")


def _claimed(store: Store) -> dict[str, dict]:
    return {c["origin"]["slot"]: c for c in store.claims(SLOT_KIND)}


@pytest.mark.parametrize(("policy", "expected"), [("all", 6), ("latest", 1), ("none", 0)])
def test_after_six_hours_down_the_catch_up_policy_decides_which_slots_are_claimed(
        tmp_path: Path, policy: str, expected: int) -> None:
    store = Store.open(tmp_path / "store")
    if time.time() % 3600 < 3:  # a slot due this very second would be recent, not missed
        time.sleep(3)
    now = time.time()
    definition = _schedule(tmp_path, every=3600, catchup=policy, created_at=now - 6 * 3600)  # no worker since
    store.add_schedule(definition)
    logged: list[tuple[str, dict]] = []
    wakeups = fire_schedules(store, log=lambda event, **f: logged.append((event, f)), grace=2)
    claimed = _claimed(store)
    boundary = now // 3600 * 3600
    hours = [boundary - h * 3600 for h in range(5, -1, -1)]
    wanted = {"all": hours, "latest": hours[-1:], "none": []}[policy]
    assert sorted(claimed) == [slot_iso(Timing(every=3600), s) for s in wanted] and len(claimed) == expected
    assert all(c["params"]["scheduled_at"] == slot for slot, c in claimed.items())
    assert all(c["origin"] == {"schedule": "tick", "slot": slot} for slot, c in claimed.items())
    skipped = [f for e, f in logged if e == "slots_skipped"]
    assert sum(f["count"] for f in skipped) == 6 - expected
    assert wakeups == [boundary + 3600]  # the next slot is a wake-up
    fire_schedules(store, log=lambda *a, **f: None, grace=2)
    assert len(_claimed(store)) == expected  # a second pass adds nothing


def test_racing_passes_claim_each_slot_once_and_pause_resume_delete(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    store.add_schedule(_schedule(tmp_path, every=60, created_at=now - 40 * 60 - 30, concurrency=2, priority=3))
    won: list[str] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        fire_schedules(Store.open(tmp_path / "store"), grace=60,
                       log=lambda event, **f: won.append(f["slot"]) if event == "slot_claimed" else None)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = _claimed(store)
    assert len(won) == len(set(won)) == len(claimed) in (40, 41)  # each slot claimed by exactly one pass
    some = next(iter(claimed.values()))
    assert some["flow_key"] == "schedule:tick" and some["flow_limit"] == 2 and some["priority"] == 3
    assert len({c["run_id"] for c in claimed.values()}) == len(claimed)

    store.update_schedule({**store.read_schedule("tick"), "paused": True})
    assert fire_schedules(store, log=lambda *a, **f: None, grace=60) == []  # paused: no wake-up, no claim


def test_schedule_commands_add_list_pause_resume_backfill_delete(tmp_path: Path) -> None:
    write_notebook(tmp_path / "nb.ipynb", ["# parameters\nscheduled_at = None", "print(scheduled_at)"])
    store = ["--store", str(tmp_path / "store")]

    def cli(*args: str):
        return run_cli("schedule", *args, *store, cwd=tmp_path, in_process=True)

    added = cli("add", "daily", "nb.ipynb", "--cron", "0 6 * * *", "--tz", "Europe/Paris", "-p", "region", "eu",
                "--concurrency", "1", "--catchup", "latest")
    assert added.returncode == 0 and "cron '0 6 * * *' (Europe/Paris)" in added.stdout, added.output
    for args, message in [
        (("add", "daily", "nb.ipynb", "--every", "1h"), "a schedule named 'daily' already exists"),
        (("add", "x", "nb.ipynb", "--cron", "0 6 * *"), "not a cron expression"),
        (("add", "x", "nb.ipynb", "--cron", "0 6 * * *", "--tz", "Nowhere/Land"), "unknown time zone"),
        (("add", "x", "nb.ipynb", "--every", "0"), "--every must be at least 1 second"),
        (("add", "x", "missing.ipynb", "--every", "1h"), "no notebook at"),
        (("add", "x", "nb.ipynb", "--every", "1h", "-p", "scheduled_at", "1"), "set by the schedule"),
        (("backfill", "daily", "--from", "2026-12-02", "--to", "2026-12-01"), "is after --to"),
        (("pause", "nightly"), "no schedule named 'nightly'"),
    ]:
        refused = cli(*args)
        assert refused.returncode == 2 and message in refused.stderr and "What to do" in refused.stderr, (args,
                                                                                                           refused.output)
    opened = Store.open(tmp_path / "store")
    assert [d["name"] for d in opened.schedules()] == ["daily"]  # nothing else stored
    listed = cli("list")
    assert "daily" in listed.stdout and "active" in listed.stdout and "latest" in listed.stdout
    assert "paused" in cli("pause", "daily").stdout and "paused" in cli("list").stdout
    assert "active" in cli("resume", "daily").stdout
    first = cli("backfill", "daily", "--from", "2026-11-01", "--to", "2026-11-03T23:00")
    assert "3 slot(s)" in first.stdout and "3 claimed, 0 already had a run" in first.stdout, first.output
    again = cli("backfill", "daily", "--from", "2026-11-02", "--to", "2026-11-04T05:00")
    assert "2 slot(s)" in again.stdout and "0 claimed, 2 already had a run" in again.stdout, again.output
    claims = sorted(c["params"]["scheduled_at"] for c in opened.claims(SLOT_KIND))
    assert claims == ["2026-11-01T06:00:00+01:00", "2026-11-02T06:00:00+01:00", "2026-11-03T06:00:00+01:00"]
    assert all(c["origin"].get("backfill") and c["params"]["region"] == "eu" for c in opened.claims(SLOT_KIND))
    assert "deleted" in cli("delete", "daily").stdout and opened.schedules() == []
    assert "no schedules" in cli("list").stdout


def test_the_day_by_day_evaluation_gives_the_slots_croniters_own_walk_gives() -> None:
    """Expressions croniter expands to plain fields are evaluated day by day (fast); the result must be what
    croniter's iteration gives, across zones and daylight-saving changes (random windows, fixed seed)."""
    from nbdurable.runtime.schedules import _compiled, _croniter_slots, _fast_slots, zone

    exprs = ["*/15 * * * *", "0 6 * * 1-5", "*/5 9-17 * * *", "0 0 1,15 * 5", "30 2 * * *", "0 2 * * *",
             "*/30 * * * *", "15 1-3 * * 0", "0 0 29 2 *", "0 0 31 * *", "45 23 * 1,3,10 *", "* 2 * * *"]
    rng = random.Random(17)
    compared = 0
    for expr in exprs:
        for tz in ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]:
            for _ in range(4):
                after = rng.uniform(1.77e9, 1.80e9)
                until = after + rng.uniform(3600, 6 * 86400)
                fast = _fast_slots(_compiled(expr), zone(tz), after, until, 100_000)
                assert fast == _croniter_slots(Timing(cron=expr, tz=tz), after, until, 100_000), (expr, tz, after)
                compared += len(fast)
    assert compared > 1_500
    assert _compiled("0 0 L * *") is None and _compiled("0 0 * * 5#2") is None  # left to croniter's walk
    last_days = slots(Timing(cron="0 0 L * *"), paris(2026, 1, 15), paris(2026, 4, 15))
    assert [slot_key(s)[:10] for s in last_days] == ["2026-01-31", "2026-02-28", "2026-03-31"]


def test_history_filters_by_schedule_and_refuses_a_non_name(tmp_path: Path) -> None:
    from nbdurable.run_history import history

    store = Store.open(tmp_path / "store")
    assert history(schedule="nightly", store=store).empty
    with pytest.raises(OptionsError, match="schedule must be a name"):
        history(schedule=3, store=store)  # type: ignore[arg-type]


def test_each_decision_is_one_line_of_json_or_one_sentence() -> None:
    import json

    from nbdurable.headless.worker_log import format_line

    fields = {"schedule": "nightly", "slot": "2026-12-06T06:00:00+01:00", "run_id": "r1", "backfill": False}
    line = format_line("slot_claimed", fields, json_format=True, now=0.0)
    assert "\n" not in line and json.loads(line) == {"ts": "1970-01-01T00:00:00.000+00:00", "event": "slot_claimed",
                                                     **fields}
    text = format_line("slot_claimed", fields, json_format=False)
    assert text.endswith("schedule nightly: slot 2026-12-06T06:00:00+01:00 claimed as run r1")
    assert format_line("something_new", {"a": 1}, json_format=False).endswith("something_new a=1")
    assert format_line("run_resumed", {"run_id": "r1"}, json_format=False).endswith("run_resumed run_id=r1")
