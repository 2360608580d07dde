"""Schedules and triggers without Ray: cron expressions (ranges, steps, names, daylight saving),
the pure core under an injected clock (times, catch-up, debounce, model aliases, concurrency),
the store and the ticker on a real SQLite file with fake ports (a restarted ticker never fires
twice), and ``raypipe schedule ...`` on the command line, owners and admins included."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from raypipe.config.cron import CronExpr, describe
from raypipe.config.triggers import TriggersConfig, parse_duration
from raypipe.schedules.core import Observed, State, decide, initial_state
from raypipe.schedules.files import changed, snapshot
from raypipe.schedules.ticker import Ports, Ticker, run_document
from raypipe.store.metadata import MetadataStore
from raypipe.store.schedules import ScheduleStore
from tests.unit.test_platform_cli import ALICE, BOB, _home, cli, platform_yaml  # noqa: F401 - _home: a fixture

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def local(ts: list[float], tz: str = "Europe/Berlin") -> list[str]:
    return [describe(t, tz) for t in ts]


# ---------------------------------------------------------------------------------- cron
def test_cron_fields_ranges_steps_lists_and_names() -> None:
    e = CronExpr.parse("*/15 9-17/4 * jan,jul mon-fri")
    assert sorted(e.minutes) == [0, 15, 30, 45] and sorted(e.hours) == [9, 13, 17]
    assert sorted(e.months) == [1, 7] and sorted(e.weekdays) == [1, 2, 3, 4, 5]
    assert sorted(CronExpr.parse("0 0 * * 7,sun").weekdays) == [0]
    assert CronExpr.parse("@daily") == CronExpr.parse("0 0 * * *").__class__.parse("@daily")
    # Friday 2026-12-04 17:45 -> Monday 09:00 (the weekend is skipped).
    nxt = e.next_after(at(2026, 7, 3, 17, 45), "Europe/Berlin")
    assert nxt is not None and local([nxt]) == ["2026-07-06T09:00+02:00"]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("61 3 * * *", "minute: 61 is out of range 0-59"),
        ("0 3 * foo *", "month: 'foo' is not a number from 1 to 12 or a name"),
        ("0 5-3 * * *", "hour: range '5-3' runs backwards"),
        ("*/0 * * * *", "minute: step '0' must be a positive number"),
    ],
)
def test_cron_errors_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CronExpr.parse(expr)


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    e = CronExpr.parse("0 0 13 * fri")  # the 13th, and every Friday
    days = [
        dt.datetime.fromtimestamp(t, dt.timezone.utc).day
        for t in e.between(at(2026, 2, 1, tz=ZoneInfo("UTC")), at(2026, 2, 28, tz=ZoneInfo("UTC")), "UTC")
    ]
    assert days == [6, 13, 20, 27]


def test_cron_daylight_saving_skips_the_missing_hour_and_fires_the_repeated_one_once() -> None:
    e = CronExpr.parse("30 2 * * *")
    spring = e.between(at(2026, 3, 28), at(2026, 3, 31), "Europe/Berlin")
    assert local(spring) == ["2026-03-28T02:30+01:00", "2026-03-30T02:30+02:00"]  # 29 March 02:30 never happens
    autumn = e.between(at(2026, 10, 24), at(2026, 10, 27), "Europe/Berlin")
    assert local(autumn) == ["2026-10-24T02:30+02:00", "2026-10-25T02:30+02:00", "2026-10-26T02:30+01:00"]
    hourly = CronExpr.parse("0 * * * *").between(at(2026, 10, 25, 1, 30), at(2026, 10, 25, 4, 30), "Europe/Berlin")
    # 02:00 happens twice that night (CEST, then CET): it fires once; the UTC hours in between are 4.
    assert local(hourly) == ["2026-10-25T02:00+02:00", "2026-10-25T03:00+01:00", "2026-10-25T04:00+01:00"]


def test_trigger_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="either cron"):
        TriggersConfig.model_validate({"schedule": {"cron": "0 3 * * *", "every": "6h"}})
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        TriggersConfig.model_validate({"schedule": {"cron": "0 3 * * *", "timezone": "Mars/Olympus"}})
    with pytest.raises(ValidationError, match="hour: 25 is out of range"):
        TriggersConfig.model_validate({"schedule": {"cron": "0 25 * * *"}})
    with pytest.raises(ValidationError, match="at least one of schedule, on_data, on_model"):
        TriggersConfig.model_validate({"concurrency": "queue"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TriggersConfig.model_validate({"on_data": {"path": "x", "debounce": 3}})
    assert parse_duration("6h") == 21600 and parse_duration("90s") == 90 and parse_duration(30) == 30
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("6 hours")


# ---------------------------------------------------------------------------------- core
def triggers(**doc: Any) -> TriggersConfig:
    return TriggersConfig.model_validate(doc)


def test_a_cron_schedule_fires_at_its_times_and_only_then() -> None:
    t = triggers(schedule={"cron": "0 3 * * *", "timezone": "Europe/Berlin"})
    state = initial_state(t, at(2026, 12, 6, 12), Observed())
    fired = []
    for hour in range(13, 24 + 28, 1):  # every hour from 6 Dec 13:00 to 8 Dec 04:00
        now = at(2026, 12, 6, 12) + (hour - 12) * 3600 + 5
        d = decide(t, state, Observed(), now)
        state = d.state
        fired += [(f.reason, f.status) for f in d.fires]
    assert fired == [
        ("cron 0 3 * * * at 2026-12-07T03:00+01:00", "start"),
        ("cron 0 3 * * * at 2026-12-08T03:00+01:00", "start"),
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", [("missed", "06:00")]),
        ("latest", [("missed", "05:00"), ("start", "06:00")]),
        ("all", [("missed", "03:00"), ("start", "04:00"), ("start", "05:00"), ("start", "06:00")]),
    ],
)
def test_catch_up_policies_after_a_gap(policy: str, expected: list[tuple[str, str]]) -> None:
    t = triggers(schedule={"cron": "0 * * * *", "timezone": "UTC", "catch_up": policy, "max": 3}, concurrency="queue")
    utc = ZoneInfo("UTC")
    state = initial_state(t, at(2026, 12, 7, 1, 30, tz=utc), Observed())
    # Nobody looked from 01:30 to 06:30: 02:00 ... 06:00 were missed (06:00 by more than grace_s).
    d = decide(t, state, Observed(), at(2026, 12, 7, 6, 30, tz=utc))
    got = [(f.status if f.status == "missed" else "start", describe(f.due)[11:16]) for f in d.fires]
    assert got == expected
    if policy == "all":  # concurrency: queue: one starts, the others wait their turn
        assert [f.status for f in d.fires[1:]] == ["start", "queued", "queued"]
    assert decide(t, d.state, Observed(), at(2026, 12, 7, 6, 40, tz=utc)).fires == []  # nothing fires twice


def test_every_counts_from_the_apply_time() -> None:
    t = triggers(schedule={"every": "6h"})
    state = initial_state(t, 1000.0, Observed())
    d = decide(t, state, Observed(), 1000.0 + 6 * 3600 + 1)
    assert [f.due for f in d.fires] == [1000.0 + 6 * 3600] and d.fires[0].reason.startswith("every 6h at ")


def test_debounce_one_run_per_window_with_every_change_made_in_it() -> None:
    t = triggers(on_data={"path": "/in", "debounce_s": 60})
    state = initial_state(t, 0.0, Observed(files={"/in/old.csv": {"size": 1, "mtime": 1, "sha256": "o"}}))
    files = {"/in/old.csv": {"size": 1, "mtime": 1, "sha256": "o"}}
    seen = []
    for now, new in [(10, "a.csv"), (30, "b.csv"), (50, None), (75, None), (80, None), (200, "c.csv"), (265, None)]:
        if new:
            files = {**files, f"/in/{new}": {"size": 2, "mtime": now, "sha256": new}}
        d = decide(t, state, Observed(files=dict(files)), float(now))
        state = d.state
        seen += [(now, f.reason, sorted(f.files or {})) for f in d.fires]
    assert seen == [
        (75, "files changed: a.csv, b.csv", ["/in/a.csv", "/in/b.csv", "/in/old.csv"]),
        (265, "files changed: c.csv", ["/in/a.csv", "/in/b.csv", "/in/c.csv", "/in/old.csv"]),
    ]
    # A touched file (same content) is no change; `read: changed` passes only the changed files.
    t2 = triggers(on_data={"path": "/in", "debounce_s": 0, "read": "changed"})
    touched = {**files, "/in/a.csv": {**files["/in/a.csv"], "mtime": 999}}
    assert decide(t2, state, Observed(files=touched), 300.0).fires == []
    more = {**files, "/in/d.csv": {"size": 3, "mtime": 1, "sha256": "d"}}
    assert sorted(decide(t2, state, Observed(files=more), 300.0).fires[0].files or {}) == ["/in/d.csv"]


def test_an_alias_move_fires_once_and_a_removed_alias_does_not() -> None:
    t = triggers(on_model={"model": "digits", "alias": "production"})
    state = initial_state(t, 0.0, Observed(model_version=3))
    assert decide(t, state, Observed(model_version=3), 1.0).fires == []
    d = decide(t, state, Observed(model_version=4), 2.0)
    assert [f.reason for f in d.fires] == ["alias production -> v4 (was v3)"]
    assert decide(t, d.state, Observed(model_version=4), 3.0).fires == []
    assert decide(t, d.state, Observed(model_version=None), 3.0).fires == []
    t2 = triggers(on_model={"model": "digits"})
    assert [f.reason for f in decide(t2, State(0, 0, model=2), Observed(model_version=3), 1.0).fires] == [
        "new version digits:3"
    ]


@pytest.mark.parametrize(
    ("mode", "running", "queued", "status", "stop", "start_queued"),
    [
        ("skip", ["r1"], [], "skipped", [], None),
        ("skip", [], [], "start", [], None),
        ("queue", ["r1"], [], "queued", [], None),
        ("queue", [], [7], "queued", [], None),
        ("replace", ["r1"], [], "start", ["r1"], None),
    ],
)
def test_concurrency_modes(
    mode: str, running: list[str], queued: list[int], status: str, stop: list[str], start_queued: int | None
) -> None:
    t = triggers(schedule={"every": 60}, concurrency=mode)
    d = decide(t, State(cursor=0, anchor=0), Observed(running=running, queued=queued), 61.0)
    assert [f.status for f in d.fires] == [status] and d.stop == stop and d.start_queued == start_queued


def test_a_queued_fire_starts_when_the_previous_run_ended() -> None:
    t = triggers(schedule={"every": 60}, concurrency="queue")
    d = decide(t, State(cursor=61, anchor=0), Observed(running=[], queued=[7, 9]), 62.0)
    assert d.fires == [] and d.start_queued == 7
    assert decide(t, State(cursor=61, anchor=0), Observed(running=["r"], queued=[7]), 62.0).start_queued is None


def test_snapshot_of_a_folder_and_a_glob(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("x\n2\n")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "c.csv.part").write_text("")
    snap = snapshot(str(tmp_path))
    assert sorted(Path(p).name for p in snap) == ["a.csv", "b.csv"]
    assert [Path(p).name for p in snapshot(str(tmp_path / "*.csv"))] == ["a.csv"]
    (tmp_path / "a.csv").write_text("x\n3\n")
    assert [Path(p).name for p in changed(snap, snapshot(str(tmp_path), snap))] == ["a.csv"]


# ---------------------------------------------------------------------------------- store + ticker
PIPELINE = """\
name: scored
stages:
  - name: read
    kind: data.read
    params: {path: /nowhere/*.csv}
triggers:
  name: nightly
  schedule: {cron: "0 3 * * *", timezone: Europe/Berlin, catch_up: latest}
  on_data: {path: INBOX, debounce_s: 0}
  concurrency: queue
"""


class FakePorts:
    def __init__(self) -> None:
        self.launched: list[tuple[str, str, str | None]] = []
        self.alive: dict[str, bool] = {}
        self.stopped: list[str] = []
        self.version: int | None = None

    def ports(self) -> Ports:
        return Ports(
            launch=lambda run_id, path, owner, workdir, log: (
                (
                    self.launched.append((run_id, path, owner)),
                    self.alive.__setitem__(run_id, True),
                )
                and None
            ),
            stop=self.stopped.append,
            driver_alive=self.alive.get,
            model_version=lambda model, alias: self.version,
        )


def stored(tmp_path: Path) -> tuple[ScheduleStore, Path]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    meta = MetadataStore(str(tmp_path / "m.db"))
    store = ScheduleStore(meta)
    text = PIPELINE.replace("INBOX", str(inbox))
    t = triggers(**__import__("yaml").safe_load(text)["triggers"])
    store.apply(
        "nightly",
        pipeline="scored",
        owner="alice",
        pipeline_yaml=text,
        pipeline_path=None,
        workdir=str(tmp_path),
        triggers=t.model_dump(mode="json"),
        state=initial_state(t, at(2026, 12, 6, 12), Observed(files={})).to_json(),
    )
    return store, inbox


def test_a_restarted_ticker_never_fires_the_same_time_twice(tmp_path: Path) -> None:
    store, _ = stored(tmp_path)
    fake = FakePorts()
    fired = Ticker(store, fake.ports()).tick(at(2026, 12, 7, 3, 0, 10))
    assert [(f.reason, f.status) for f in fired] == [("cron 0 3 * * * at 2026-12-07T03:00+01:00", "starting")]
    assert len(fake.launched) == 1 and fake.launched[0][2] == "alice"
    # A new ticker (the actor restarted) over the same store, at the same instant and later: nothing again.
    again = FakePorts()
    assert Ticker(store, again.ports()).tick(at(2026, 12, 7, 3, 0, 10)) == []
    assert Ticker(store, again.ports()).tick(at(2026, 12, 7, 3, 5)) == [] and again.launched == []
    assert [f.status for f in store.fires("nightly")] == ["started"]
    # Replaying the old state (a tick that read it before) is refused as a whole.
    sched = store.get("nightly")
    assert store.record_tick("nightly", sched.tick - 1, sched.state, [], at=0.0) is None


def test_a_fire_recorded_but_not_started_is_started_once_after_a_restart(tmp_path: Path) -> None:
    store, _ = stored(tmp_path)

    def crash(*_: Any) -> None:
        raise KeyboardInterrupt  # the actor died between the record and the launch

    fake = FakePorts()
    ports = fake.ports()
    dying = Ports(launch=crash, stop=ports.stop, driver_alive=ports.driver_alive, model_version=ports.model_version)
    with pytest.raises(KeyboardInterrupt):
        Ticker(store, dying).tick(at(2026, 12, 7, 3, 0, 10))
    assert [f.status for f in store.fires("nightly")] == ["starting"]
    Ticker(store, ports).tick(at(2026, 12, 7, 3, 0, 20))
    Ticker(store, ports).tick(at(2026, 12, 7, 3, 0, 30))
    assert len(fake.launched) == 1 and [f.status for f in store.fires("nightly")] == ["started"]


def test_a_data_fire_runs_exactly_its_snapshot_and_records_it(tmp_path: Path) -> None:
    store, inbox = stored(tmp_path)
    fake = FakePorts()
    ticker = Ticker(store, fake.ports())
    (inbox / "a.csv").write_text("x\n1\n")
    (inbox / "b.csv").write_text("x\n2\n")
    fired = ticker.tick(at(2026, 12, 6, 13))
    assert [f.reason for f in fired] == ["files changed: a.csv, b.csv"]
    fire = fired[0]
    assert fire.files is not None and sorted(Path(p).name for p in fire.files) == ["a.csv", "b.csv"]
    run_file = Path(fake.launched[0][1])
    doc = __import__("yaml").safe_load(run_file.read_text())
    assert doc["stages"][0]["params"]["path"] == sorted(fire.files) and "triggers" not in doc
    # The first run is still going: a new file queues (concurrency: queue), then starts after it.
    (inbox / "c.csv").write_text("x\n3\n")
    assert [f.status for f in ticker.tick(at(2026, 12, 6, 13, 1))] == ["queued"]
    fake.alive[fire.run_id or ""] = False
    ticker.tick(at(2026, 12, 6, 13, 2))
    assert [f.status for f in store.fires("nightly")] == ["started", "started"] and len(fake.launched) == 2
    data = run_document(store.get("nightly"), store.fires("nightly")[1], triggers(on_data={"path": str(inbox)}))
    assert len(data["stages"][0]["params"]["path"]) == 3


# ---------------------------------------------------------------------------------- CLI
def test_schedule_commands_on_a_real_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.replace("INBOX", str(inbox)))
    db = str(tmp_path / "m.db")
    r = cli("schedule", "apply", str(pipe), "--db", db, "--no-start", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["name"] == "nightly" and doc["created"] and doc["controller"] is None
    assert doc["next_due_text"].endswith("T03:00+01:00")
    listed = json.loads(cli("schedule", "list", "--db", db, "--json").stdout)
    assert [s["name"] for s in listed] == ["nightly"] and listed[0]["last_fire"] is None
    assert cli("schedule", "pause", "nightly", "--db", db).exit_code == 0
    assert json.loads(cli("schedule", "list", "--db", db, "--json").stdout)[0]["paused"] is True
    assert cli("schedule", "resume", "nightly", "--db", db).exit_code == 0
    hist = json.loads(cli("schedule", "history", "nightly", "--db", db, "--json").stdout)
    assert hist["fires"] == []
    r = cli("schedule", "history", "nope", "--db", db)
    assert r.exit_code == 2 and "no schedule 'nope'" in r.stderr and "schedules: nightly" in r.stderr
    assert cli("schedule", "delete", "nightly", "--db", db).exit_code == 0
    assert json.loads(cli("schedule", "list", "--db", db, "--json").stdout) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPELINE.replace("catch_up: latest", "catch_up: sometimes").replace("INBOX", str(inbox)))
    r = cli("schedule", "apply", str(bad), "--db", db, "--no-start")
    assert r.exit_code == 2 and "bad.yaml:8 triggers.schedule.catch_up" in r.stderr
    none = tmp_path / "none.yaml"
    none.write_text(PIPELINE.split("triggers:")[0])
    r = cli("schedule", "apply", str(none), "--db", db, "--no-start")
    assert r.exit_code == 2 and "no `triggers:` section" in r.stderr


def test_only_the_owner_or_an_admin_changes_a_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = str(tmp_path / "m.db")
    r = cli("admin", "apply", str(platform_yaml(tmp_path / "platform.yaml")), "--db", db, "--no-push", token=ALICE)
    assert r.exit_code == 0, r.output
    (tmp_path / "inbox").mkdir()
    pipe = tmp_path / "p.yaml"
    pipe.write_text(PIPELINE.replace("INBOX", str(tmp_path / "inbox")))
    r = cli("schedule", "apply", str(pipe), "--db", db, "--no-start", token=BOB)
    assert r.exit_code == 0, r.output
    assert json.loads(cli("schedule", "list", "--db", db, "--json", token=BOB).stdout)[0]["owner"] == "bob"
    assert cli("schedule", "pause", "nightly", "--db", db, token=BOB).exit_code == 0  # bob's own
    assert cli("schedule", "resume", "nightly", "--db", db, token=ALICE).exit_code == 0  # an admin
    r = cli("schedule", "apply", str(pipe), "--db", db, "--no-start", token=ALICE)
    assert r.exit_code == 0 and json.loads(cli("schedule", "list", "--db", db, "--json").stdout)[0]["owner"] == "bob"
    # alice took it over? No: re-applying keeps the owner.  Now alice's schedule, bob may not touch it.
    pipe2 = tmp_path / "p2.yaml"
    pipe2.write_text(PIPELINE.replace("INBOX", str(tmp_path / "inbox")).replace("name: nightly", "name: alices"))
    assert cli("schedule", "apply", str(pipe2), "--db", db, "--no-start", token=ALICE).exit_code == 0
    for cmd in (["pause", "alices"], ["delete", "alices"], ["apply", str(pipe2)]):
        args = ["schedule", *cmd, "--db", db] + (["--no-start"] if cmd[0] == "apply" else [])
        r = cli(*args, token=BOB)
        assert r.exit_code == 2 and "schedule alices belongs to alice" in r.stderr, r.stderr
