"""Several processes writing one metadata store at once, on SQLite and on PostgreSQL: model
versions numbered 1..N exactly, alias moves chained, runs, stage runs, artifacts and event
log rows neither lost nor duplicated."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from raypipe.store.artifacts import ArtifactRef
from raypipe.store.metadata import MetadataStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import LoopStore, RolloutStore
from raypipe.store.sql import Database

REPO = Path(__file__).resolve().parents[2]
WORKERS, MODELS, OVERLAP, RUNS, STAGES, EVENTS = 4, 24, 8, 6, 3, 24

_WORKER = textwrap.dedent(
    """
    import hashlib, itertools, sys, time
    from pathlib import Path
    from raypipe.store.artifacts import ArtifactRef
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.registry import ModelRegistry
    from raypipe.store.rollouts import LoopStore, RolloutStore

    db, go, w, models, overlap, runs, stages, events = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
    meta = MetadataStore(db)
    reg, rollouts, loops = ModelRegistry(meta), RolloutStore(meta), LoopStore(meta)

    def art(tag, fmt="json"):
        return ArtifactRef(f"/o/{tag}", hashlib.sha256(tag.encode()).hexdigest(), 1, fmt, None)

    lo = w * (models - overlap)  # each worker registers `models` artifacts, `overlap` of them also its neighbour's
    todo = [("model", i) for i in range(lo, lo + models)]
    todo += [("run", k) for k in range(runs)] + [("event", n) for n in range(events)]
    todo.sort(key=lambda t: hashlib.sha256(f"{w}{t}".encode()).digest())  # interleave the kinds
    seq = itertools.count()
    while not go.exists():
        time.sleep(0.005)
    for what, i in todo:
        if what == "model":
            ref = ArtifactRef(f"/o/m{i}", hashlib.sha256(b"m%d" % i).hexdigest(), 1, "model", {"metrics": {"i": i}})
            reg.register("shared", ref, None, None, None, aliases=["candidate"])
        elif what == "run":
            run = f"run-{w}-{i}"
            meta.create_run(run, "p", "{}", None, "/o")
            shared = [art(f"shared-{j}") for j in range(stages + 1)]  # the same outputs in every worker's runs
            order = shared if (w + i) % 2 else shared[::-1]  # written in both orders: deadlocks get retried
            for s in range(stages):
                sid = meta.start_stage(run, f"s{s}", 1, f"key-{run}-{s}")
                outs = {f"o{j}": a for j, a in enumerate(order)}
                meta.succeed_stage(sid, {"own": art(f"in-{run}-{s}")}, outs)
            meta.finish_run(run, "succeeded")
        else:
            n = next(seq)
            rollouts.record("app", f"w{w}", "step", {"n": n})
            loops.record("app", f"w{w}", "drift", {"n": n})
    meta.close()
    """
)


def test_processes_writing_at_once_lose_and_duplicate_nothing(tmp_path: Path, metadata_db: str, reliability: Any) -> None:
    go = tmp_path / "go"
    MetadataStore(metadata_db).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [str(a) for a in (MODELS, OVERLAP, RUNS, STAGES, EVENTS)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, metadata_db, str(go), str(w), *args], env=env)
        for w in range(WORKERS)
    ]
    go.touch()
    assert [p.wait(timeout=240) for p in procs] == [0] * WORKERS
    meta = MetadataStore(metadata_db)
    try:
        reg = ModelRegistry(meta)
        # model versions: every distinct artifact once, numbered 1..N with no gap or repeat
        n = (WORKERS - 1) * (MODELS - OVERLAP) + MODELS
        versions = reg.versions("shared")
        reliability.records("model versions", n, len({v.version for v in versions}))
        assert [v.version for v in versions] == list(range(1, n + 1))
        assert sorted(v.metrics["i"] for v in versions) == list(range(n))
        # alias moves form one chain: each event starts where the one before ended
        history = reg.alias_history("shared", "candidate")
        assert history[0].old_version is None
        assert all(b.old_version == a.new_version for a, b in zip(history, history[1:], strict=False))
        assert reg.get("shared@candidate").version == history[-1].new_version
        # runs, stage runs, their inputs and outputs
        runs = meta.list_runs(limit=1000)
        assert sorted(r.run_id for r in runs) == sorted(f"run-{w}-{k}" for w in range(WORKERS) for k in range(RUNS))
        assert {r.status for r in runs} == {"succeeded"}
        count = {t: meta._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("stage_runs", "stage_io")}
        reliability.records("runs", WORKERS * RUNS, len(runs))
        reliability.records("stage runs", WORKERS * RUNS * STAGES, count["stage_runs"])
        reliability.records("stage inputs and outputs", WORKERS * RUNS * STAGES * (STAGES + 2), count["stage_io"])
        assert count["stage_runs"] == WORKERS * RUNS * STAGES
        assert count["stage_io"] == WORKERS * RUNS * STAGES * (STAGES + 2)
        assert all(len(meta.io_of(sr.id, "out")) == STAGES + 1 for r in runs for sr in meta.stage_runs(r.run_id))
        formats = dict(meta._conn.execute("SELECT format, count(*) FROM artifacts GROUP BY format").fetchall())
        assert formats == {"model": n, "json": STAGES + 1 + WORKERS * RUNS * STAGES}
        # event logs: every event once, ids unique, each writer's events in its order
        for log in (RolloutStore(meta), LoopStore(meta)):
            events = log.all_events("app")
            reliability.records("events", WORKERS * EVENTS, len({e.id for e in events}))
            assert len(events) == len({e.id for e in events}) == WORKERS * EVENTS
            for w in range(WORKERS):
                assert [e.detail["n"] for e in events if e.series == f"w{w}"] == list(range(EVENTS))
    finally:
        meta.close()


def test_a_deadlocked_transaction_is_run_again(postgres: Any, monkeypatch: pytest.MonkeyPatch, reliability: Any) -> None:
    """PostgreSQL: two drivers record the same two outputs in opposite orders, each pausing after
    its first insert, so they deadlock; the server aborts one, and it is run again whole."""
    url = postgres.new_database()
    a, b = MetadataStore(url), MetadataStore(url)
    a.create_run("r", "p", "{}", None, "/o")
    x, y = (ArtifactRef(f"/o/{t}", sha256(t.encode()).hexdigest(), 1, "json", None) for t in "xy")
    sids = {a: a.start_stage("r", "s1", 1, None), b: b.start_stage("r", "s2", 1, None)}
    barrier, paused, deadlocks = threading.Barrier(2), set(), []
    execute = Database.execute

    def pausing(self: Database, sql: str, params: Any = ()) -> Any:
        try:
            cur = execute(self, sql, params)
        except Exception as e:
            deadlocks.append(getattr(e, "sqlstate", None))
            raise
        if sql.startswith("INSERT OR IGNORE INTO artifacts") and self not in paused:
            paused.add(self)  # the first attempt only
            barrier.wait(timeout=30)
        return cur

    monkeypatch.setattr(Database, "execute", pausing)
    reliability.fault("PostgreSQL deadlock between two drivers' transactions")
    threads = [
        threading.Thread(target=m.succeed_stage, args=(sids[m], {}, outs))
        for m, outs in ((a, {"o1": x, "o2": y}), (b, {"o1": y, "o2": x}))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert deadlocks == ["40P01"]
    assert [sr.status for sr in a.stage_runs("r")] == ["succeeded", "succeeded"]
    assert {m: set(m.io_of(sids[m]).values()) for m in (a, b)} == {a: {x, y}, b: {x, y}}


def _open_after(path: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    try:
        MetadataStore(path).list_runs()
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - reported by the test
        out.put(repr(e))


def test_drivers_opening_a_new_store_at_the_same_instant_all_open_it(tmp_path: Path) -> None:
    """SQLite answers "database is locked" at once (not after its busy timeout) to a second
    connection while the first switches a new file to WAL; every opener must still get in."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results: list[str] = []
    for trial in range(8):
        path = str(tmp_path / f"store{trial}" / "raypipe.db")
        barrier, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_after, args=(path, barrier, out)) for _ in range(6)]
        for p in procs:
            p.start()
        results += [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join()
    assert [r for r in results if r != "ok"] == []
