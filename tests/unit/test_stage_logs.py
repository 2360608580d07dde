"""Stage logs without Ray: the layout under the storage root (local and a URI root), the output
of a stage's Ray workers found from task events (a fake of Ray's records over real files),
the log file written by several threads, and ``raypipe logs`` on a real SQLite store."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from raypipe.cli import app
from raypipe.exceptions import StorageError
from raypipe.runner.stage_log import capture
from raypipe.runner.worker_output import READER_TASK, WorkerOutput, descendants
from raypipe.stages.base import stage_log_path
from raypipe.store import logs
from raypipe.store.metadata import MetadataStore

runner = CliRunner()


# --------------------------------------------------------------------------- the layout


def test_a_local_root_keeps_logs_in_place_by_run_stage_and_attempt(tmp_path: Path) -> None:
    root = str(tmp_path / "store")
    path = stage_log_path(root, "r1", "train", 2)
    assert path == tmp_path / "store" / "logs" / "r1" / "train" / "2.log"
    path.parent.mkdir(parents=True)
    path.write_text("line 1\nline 2\n")
    assert logs.publish(root, "r1", "train", 2, path) == str(path) and path.exists()  # nothing to upload
    chunk = logs.read_log(root, "r1", "train", 2)
    assert chunk.data == b"line 1\nline 2\n" and chunk.size == 14 and chunk.location == str(path)
    assert logs.read_log(root, "r1", "train", 2, offset=7).data == b"line 2\n"
    assert logs.read_log(root, "r1", "train", 2, offset=-7).data == b"line 2\n"
    assert logs.read_log(root, "r1", "train", 2, offset=0, limit=4).data == b"line"
    with pytest.raises(FileNotFoundError):
        logs.read_log(root, "r1", "train", 3)
    (tmp_path / "store" / "logs" / "r1" / "train.1.log").write_text("the layout of earlier versions\n")
    assert logs.logged_attempts(root, "r1", "train") == [1, 2]
    assert logs.read_log(root, "r1", "train", 1).data == b"the layout of earlier versions\n"
    for run, stage, attempt in (("..", "train", 1), ("r1", "a/b", 1), ("r1", "train", 0)):
        with pytest.raises(StorageError, match="cannot name a log file"):
            logs.log_rel(run, stage, attempt)


def test_an_object_store_root_gets_the_log_uploaded_when_the_attempt_ends(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/bucket/raypipe"  # a URI root: written through pyarrow.fs, not in place
    local = stage_log_path(root, "r1", "evaluate", 1)
    assert not str(local).startswith(str(tmp_path)) and local.parts[-4:] == ("logs", "r1", "evaluate", "1.log")
    with pytest.raises(FileNotFoundError):  # running: the log is on the worker
        logs.read_log(root, "r1", "evaluate", 1)
    with capture(local, "stage evaluate attempt 1", on_close=lambda: logs.publish(root, "r1", "evaluate", 1, local)):
        print("accuracy 0.97")
    assert not local.exists()  # uploaded, the worker's copy removed
    stored = tmp_path / "bucket" / "raypipe" / "logs" / "r1" / "evaluate" / "1.log"
    assert "accuracy 0.97\n" in stored.read_text() and " done\n" in stored.read_text()
    chunk = logs.read_log(root, "r1", "evaluate", 1)
    assert chunk.location == f"{root}/logs/r1/evaluate/1.log" and b"accuracy 0.97" in chunk.data
    assert logs.logged_attempts(root, "r1", "evaluate") == [1]
    # the same attempt again (requeued after a preemption): its log goes on after the first part
    with capture(local, "stage evaluate attempt 1", on_close=lambda: logs.publish(root, "r1", "evaluate", 1, local)):
        print("resumed from the checkpoint")
    text = stored.read_text()
    assert text.index("accuracy 0.97") < text.index("resumed from the checkpoint") and text.count(" done\n") == 2


@pytest.mark.parametrize("uri", [False, True], ids=["local", "object-store"])
def test_a_killed_attempts_log_ends_with_the_runners_word(tmp_path: Path, uri: bool) -> None:
    root = f"file://{tmp_path}/bucket" if uri else str(tmp_path / "root")
    local = stage_log_path(root, "r1", "train", 2)
    with capture(local, "stage train attempt 2", on_close=lambda: logs.publish(root, "r1", "train", 2, local)):
        print("epoch 1")
    assert logs.note_killed(root, "r1", "train", 2, "timed out after 60s")
    text = logs.read_log(root, "r1", "train", 2).data.decode()
    assert text.index("epoch 1") < text.index("killed by the runner: timed out after 60s")
    # a task killed before it wrote anything: the log is the runner's line alone
    assert logs.note_killed(root, "r1", "train", 3, "stopped: SIGTERM")
    assert "killed by the runner: stopped: SIGTERM" in logs.read_log(root, "r1", "train", 3).data.decode()
    assert not logs.note_killed("/proc/no-such-root", "r1", "train", 1, "x")  # never raises


# --------------------------------------------------------------------------- Ray's workers


class FakeRay:
    """Ray's task events and actor table over real worker files in one folder (one node)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events: list[dict[str, Any]] = []
        self.actor_rows: list[dict[str, Any]] = []
        self.dropped = 0
        self.reads = 0
        self.marker_id: str | None = None

    def file(self, name: str, text: str) -> tuple[str, int, int]:
        """Append ``text`` to a worker file; its span."""
        path = self.folder / name
        start = path.stat().st_size if path.exists() else 0
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return str(path), start, start + len(text.encode())

    def task(self, task_id: str, parent: str, name: str, out: str = "", finished: bool = True, **kw: Any) -> None:
        span = self.file("worker-w1-01000000-100.out", out) if out else None
        if span is not None and not kw.get("reported", finished):  # where its output ends: not known yet
            span = (span[0], span[1], None)
        self.events.append(
            {
                "task_id": task_id,
                "attempt": 0,
                "parent": parent,
                "type": kw.get("type", "NORMAL_TASK"),
                "name": name,
                "actor_id": kw.get("actor_id"),
                "detached": kw.get("detached", False),
                "node_id": "n1",
                "worker_id": "w1",
                "pid": 100,
                "finished": finished,
                "outcome": kw.get("outcome", "FINISHED" if finished else None),
                "started_ns": kw.get("started_ns", len(self.events)),
                "out": span,
                "err": None,
            }
        )

    def actor(self, actor_id: str, creator: str, cls: str, pid: int, detached: bool = False) -> None:
        self.task("c-" + actor_id, creator, f"{cls}.__init__", type="ACTOR_CREATION_TASK", actor_id=actor_id)
        self.actor_rows.append(
            {"actor_id": actor_id, "parent": creator, "class_name": cls, "detached": detached, "node_id": "n1",
             "worker_id": f"wa{pid}", "pid": pid}
        )  # fmt: skip

    # the RaySource protocol
    def task_events(self, job_id: str) -> tuple[list[dict[str, Any]], int]:
        return list(self.events), self.dropped

    def actors(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.actor_rows)

    def node_ips(self) -> dict[str, str]:
        return {"n1": "10.0.0.7"}

    def marker(self) -> str | None:
        return self.marker_id

    def read(self, node_id: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from raypipe._ray.worker_logs import read_spans

        self.reads += 1
        out = []
        for spec in specs:
            if spec.get("worker_id"):  # an actor's file, found by worker and pid as Ray names it
                spec = {
                    **spec,
                    "path": str(self.folder / f"worker-{spec['worker_id']}-01000000-{spec['pid']}.{spec['stream']}"),
                }
            out.extend(read_spans([spec]))
        return out


def test_the_stage_gets_what_its_tasks_and_actors_printed_and_nothing_else(tmp_path: Path) -> None:
    ray = FakeRay(tmp_path)
    ray.task("stage", "driver", "raypipe:p:train", out="the stage's own print (already in its log)\n")
    ray.task("t1", "stage", "ReadCSV", out=":task_name:ReadCSV\nread 10 rows\n")
    ray.task("other", "driver", "raypipe:p:other", out="another stage\n")
    ray.task("t2", "other", "ReadCSV", out="another stage's task\n")  # the same worker, another stage
    ray.actor("ctl", "stage", "TrainController", pid=200)
    ray.task("run", "stage", "TrainController.run", type="ACTOR_TASK", actor_id="ctl")
    ray.actor("wrk", "run", "RayTrainWorker", pid=300)  # started by the controller's run call
    ray.actor("stats", "t1", "_StatsActor", pid=400, detached=True)  # shared, outlives the stage
    ray.task("rd", "stage", READER_TASK, out="a reader\n")
    ray.file("worker-wa200-01000000-200.out", ":actor_name:TrainController\nreport epoch=0\n")
    ray.file("worker-wa300-01000000-300.err", "Reporting training result 1\n")
    ray.file("worker-wa400-01000000-400.out", "stats\n")

    tasks, actors = descendants("stage", ray.events, ray.actor_rows)
    assert [t["task_id"] for t in tasks] == ["t1"]
    assert sorted(a["class_name"] for a in actors) == ["RayTrainWorker", "TrainController"]

    out = WorkerOutput("stage", "01000000", source=ray)
    text = out.collect()
    assert "read 10 rows\n" in text and ":task_name:" not in text
    assert "report epoch=0\n" in text and "Reporting training result 1\n" in text
    for absent in ("own print", "another stage", "stats", "a reader"):
        assert absent not in text
    assert "----- Ray task ReadCSV (stdout, pid 100, task t1) on 10.0.0.7\n" in text
    assert "----- Ray actor RayTrainWorker (stderr, pid 300, actor wrk) on 10.0.0.7\n" in text
    # Only what is new comes next time: the task was copied, the actor's file is read on.
    ray.file("worker-wa200-01000000-200.out", "report epoch=1\n")
    again = out.collect()
    assert "report epoch=1\n" in again and "epoch=0" not in again and "read 10 rows" not in again
    assert out.collect() == ""


def test_the_end_of_an_attempt_waits_for_its_tasks_to_report_then_says_what_is_missing(tmp_path: Path) -> None:
    class Clock:
        def __init__(self) -> None:
            self.now = 0.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, s: float) -> None:
            self.now += s
            if self.now >= 0.4 and ray.events[1]["out"][2] is None:  # its worker reports after a while
                ray.events[1]["out"] = (ray.events[1]["out"][0], ray.events[1]["out"][1], ray.events[1]["out"][1] + 5)

    ray = FakeRay(tmp_path)
    ray.task("stage", "driver", "raypipe:p:s")
    ray.task("t1", "stage", "Map", out="done\n", reported=False)  # its owner saw it finish; its worker not yet
    ray.task("t2", "stage", "Map", finished=False)  # never reports its end
    ray.task("t3", "stage", "Map", outcome="TASK_CANCELLED", started_ns=None)  # never ran: nothing to wait for
    ray.dropped = 3
    written: list[str] = []
    out = WorkerOutput("stage", "01000000", source=ray)
    out.finish(written.append, wait_s=1.0, every_s=0.2, clock=Clock())
    text = "".join(written)
    assert "done\n" in text
    assert text.count("Ray dropped 3 task events") == 1
    assert text.endswith("----- 1 Ray task(s) had not reported their output after 1s: not shown\n")


def test_the_end_of_an_attempt_waits_until_ray_knows_the_tasks_started_last(tmp_path: Path) -> None:
    """Ray reports a worker's task events in order, every so often: once the marker started at
    the end is known, so is every task started before it."""

    class Clock:
        now = 0.0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, s: float) -> None:
            self.now += s
            if self.now >= 0.3 and len(ray.events) == 1:  # the stage's last events arrive together
                ray.task("late", "stage", "Map", out="started in the last moment\n")
                ray.task("m", "stage", "raypipe:log-marker")

    ray = FakeRay(tmp_path)
    ray.task("stage", "driver", "raypipe:p:s")
    ray.marker_id = "m"
    written: list[str] = []
    WorkerOutput("stage", "01000000", source=ray).finish(written.append, wait_s=3.0, every_s=0.1, clock=Clock())
    text = "".join(written)
    assert "started in the last moment\n" in text and "not reported" not in text


def test_capture_adds_the_workers_output_while_running_and_at_the_end_from_one_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYPIPE_WORKER_LOGS_S", "0.05")
    ray = FakeRay(tmp_path)
    ray.task("stage", "driver", "raypipe:p:s")
    ray.actor("a", "stage", "Worker", pid=500)
    seen = threading.Event()

    class Watched(WorkerOutput):
        def collect(self) -> str:
            text = super().collect()
            if "live line" in text:
                seen.set()
            return text

    path = tmp_path / "logs" / "r" / "s" / "1.log"
    with capture(path, "stage s attempt 1", workers=Watched("stage", "j", source=ray)):
        print("before", end="")  # a line not ended yet when the workers' output comes
        ray.file("worker-wa500-01000000-500.out", "live line\n")
        assert seen.wait(10), "the live collection never ran"
        print(" after")
        ray.file("worker-wa500-01000000-500.out", "last line\n")
    text = path.read_text()
    assert text.index("live line") < text.index(" done\n") < text.index("last line")
    assert "before\n----- Ray actor Worker" in text  # the section starts on a line of its own
    assert text.count("live line") == 1 and text.count("last line") == 1


def test_a_failing_collection_never_fails_the_stage(tmp_path: Path) -> None:
    class Broken(WorkerOutput):
        def collect(self) -> str:
            raise ConnectionError("the GCS is gone")

    path = tmp_path / "s.log"
    with capture(path, "h", workers=Broken("stage", "j", source=FakeRay(tmp_path))):
        print("work")
    assert "could not be read: ConnectionError: the GCS is gone" in path.read_text()


# --------------------------------------------------------------------------- raypipe logs


def fill(tmp_path: Path) -> tuple[str, Path]:
    """A store with run r1 (train failed once, then succeeded; evaluate skipped; report never
    ran) and run r2 (train a cache hit of r1's)."""
    root = tmp_path / "store"
    db = root / "raypipe.db"
    root.mkdir()
    meta = MetadataStore(str(db))
    stages = [{"name": n, "kind": "python"} for n in ("ingest", "train", "evaluate", "report")]
    config = json.dumps({"name": "p", "stages": stages})
    meta.create_run("r1", "p", config, None, str(root))
    for stage, attempt, status, text in (
        ("ingest", 1, "succeeded", "ingested 10 rows\n"),
        ("train", 1, "failed", "epoch 1\nTraceback: boom\n"),
        ("train", 2, "succeeded", "epoch 1\nepoch 2\n"),
    ):
        sid = meta.start_stage("r1", stage, attempt, f"k-{stage}")
        path = stage_log_path(str(root), "r1", stage, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if status == "succeeded":
            meta.succeed_stage(sid, {}, {})
        else:
            meta.fail_stage(sid, status, "boom")
    meta.skip_stage("r1", "evaluate", "upstream failed")
    meta.finish_run("r1", "succeeded")
    meta.create_run("r2", "p", config, None, str(root))
    origin = next(s.id for s in meta.stage_runs("r1") if s.stage == "train" and s.status == "succeeded")
    meta.record_cached("r2", "train", "k-train", origin, {}, {})
    meta.finish_run("r2", "succeeded")
    meta.close()
    return str(db), root


def test_logs_prints_a_stage_every_attempt_or_the_whole_run(tmp_path: Path) -> None:
    db, _ = fill(tmp_path)
    r = runner.invoke(app, ["logs", "r1", "ingest", "--db", db])
    assert r.exit_code == 0 and r.stdout == "ingested 10 rows\n"
    r = runner.invoke(app, ["logs", "r1", "train", "--attempt", "1", "--db", db])
    assert r.exit_code == 0 and r.stdout == "epoch 1\nTraceback: boom\n"
    r = runner.invoke(app, ["logs", "r1", "train", "--db", db])
    assert r.stdout.count("==> train attempt") == 2 and r.stdout.index("boom") < r.stdout.index("epoch 2")
    r = runner.invoke(app, ["logs", "r1", "--db", db])  # the last attempt of every stage
    assert r.exit_code == 0, r.output
    assert "==> ingest attempt 1 · succeeded <==\ningested 10 rows\n" in r.stdout
    assert "==> train attempt 2 · succeeded <==\nepoch 1\nepoch 2\n" in r.stdout and "boom" not in r.stdout
    r = runner.invoke(app, ["logs", "r2", "train", "--db", db])  # a cache hit: the log that made it
    assert r.exit_code == 0 and r.stdout == "epoch 1\nepoch 2\n"
    doc = json.loads(runner.invoke(app, ["logs", "r2", "--db", db, "--json"]).stdout)
    assert (
        doc["run_id"] == "r2" and doc["logs"][0]["from_run"] == "r1" and doc["logs"][0]["text"] == "epoch 1\nepoch 2\n"
    )
    r = runner.invoke(app, ["logs", "r1", "train", "--follow", "--db", db])  # ended: prints and returns
    assert r.exit_code == 0 and r.stdout == "epoch 1\nepoch 2\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "nope"),
        (["r1", "trian"], "run r1 has no stage 'trian'; its stages: ingest, train, evaluate, report"),
        (["r1", "train", "--attempt", "3"], "stage 'train' of run r1 has attempts 1, 2; no attempt 3"),
        (["r1", "report"], "stage 'report' of run r1 has not started"),
        (["r1", "evaluate"], "stage 'evaluate' of run r1 did not run (skipped): it has no log"),
        (["r2", "train", "--attempt", "1"], "no attempt of its own (a cache hit); no attempt 1"),
        (["r1", "--attempt", "1"], "--attempt needs a STAGE"),
    ],
)
def test_logs_names_what_is_unknown(tmp_path: Path, args: list[str], message: str) -> None:
    db, _ = fill(tmp_path)
    r = runner.invoke(app, ["logs", *args, "--db", db])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.stderr.split()) and "Traceback" not in r.output


def test_logs_follow_prints_what_a_running_stage_writes_until_it_ends(tmp_path: Path) -> None:
    db, root = fill(tmp_path)
    meta = MetadataStore(db)
    meta.create_run("r3", "p", json.dumps({"name": "p", "stages": [{"name": "train"}]}), None, str(root))
    sid = meta.start_stage("r3", "train", 1, "k")
    path = stage_log_path(str(root), "r3", "train", 1)
    path.parent.mkdir(parents=True)
    path.write_text("epoch 1\n")

    def work() -> None:
        for i in (2, 3):
            time.sleep(0.3)
            with open(path, "a") as f:
                f.write(f"epoch {i}\n")
        time.sleep(0.3)
        meta.succeed_stage(sid, {}, {})
        meta.finish_run("r3", "succeeded")

    t = threading.Thread(target=work)
    t.start()
    r = runner.invoke(app, ["logs", "r3", "train", "-f", "--db", db])
    t.join()
    meta.close()
    assert r.exit_code == 0 and r.stdout == "epoch 1\nepoch 2\nepoch 3\n"


# --------------------------------------------------------------------------- the console


def test_the_log_file_keeps_whole_lines_and_leaves_out_rays_progress_bar_messages(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    token = '{"__magic_token__": "__ray_tqdm_magic_token__", "x": 1, "desc": "Running Dataset"}'
    with capture(path, "h") as f:
        assert f is not None
        print(token)
        print("half", end="")
        f.section("----- a section\n")
        print("a line")
        print("last words", end="")
    lines = path.read_text().splitlines()
    assert lines[1:] == ["half", "----- a section", "a line", "last words", lines[-1]] and lines[-1].endswith(" done")


def test_a_quiet_run_shows_stage_ends_and_waits_and_verbose_shows_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from raypipe.cli import render
    from raypipe.runner.events import StageEvent
    from raypipe.runner.states import StageEventKind as K

    def shown(verbose: bool) -> str:
        out = io.StringIO()
        rep = render.Reporter(out=Console(file=out, width=200), verbose=verbose)
        with rep.running():
            for e in (
                StageEvent("a", K.QUEUED),
                StageEvent("b", K.QUEUED, message="needs 2 GPUs; 0 free"),
                StageEvent("a", K.STARTED, 1),
                StageEvent("a", K.SUCCEEDED, 1, 1.5),
            ):
                rep.on_event(e)
        return out.getvalue()

    quiet = shown(False)
    assert "a succeeded (1.5s)" in quiet and "b queued: needs 2 GPUs; 0 free" in quiet
    assert "a queued" not in quiet and "started" not in quiet
    loud = shown(True)
    assert "a queued" in loud and "a started" in loud

    monkeypatch.setattr(render, "RUNNING_NOTICE_S", 0.01)  # a stage still running says so once
    out = io.StringIO()
    rep = render.Reporter(out=Console(file=out, width=200))
    with rep.running():
        rep.on_event(StageEvent("train", K.STARTED, 1))
        deadline = time.monotonic() + 30
        while "train running" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        rep.on_event(StageEvent("train", K.SUCCEEDED, 1, 3.0))
    assert out.getvalue().count("train running") == 1 and "train succeeded (3.0s)" in out.getvalue()


def test_the_quiet_driver_keeps_rays_warnings_off_the_console(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    import ray  # noqa: F401 - sets up the `ray` logger's console handler, as in a driver

    from raypipe.runner import ray_session

    monkeypatch.delenv("RAYPIPE_VERBOSE", raising=False)
    assert not ray_session.console_verbose()
    ray_session.set_verbose(False)  # leaves the environment alone
    assert not ray_session.console_verbose()
    ray_session.set_verbose(True)
    assert ray_session.console_verbose()
    ray_logger = logging.getLogger("ray")
    before = {h: list(h.filters) for h in ray_logger.handlers}
    level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)  # as a quiet driver's ray.init sets it (the suite's Ray set ERROR)
    # a driver log of this test's own: the process's may already write to an earlier test's Ray session
    monkeypatch.setattr(ray_session, "_DRIVER_LOG", ray_session.DriverLog())
    ray_session.quiet_ray_logging()
    try:
        log = logging.getLogger("ray.some.module")
        log.warning("Failed to query Ray Train Controller actor state")
        # for Ray's log folder: in memory until this process knows a Ray session
        assert any("Failed to query" in line for line in ray_session._DRIVER_LOG.buffer)

        def record(level: int) -> logging.LogRecord:
            return log.makeRecord(log.name, level, __file__, 1, "m", (), None)

        consoles = [h for h in ray_logger.handlers if h is not ray_session._DRIVER_LOG]
        assert consoles and all(not h.filter(record(logging.WARNING)) for h in consoles)
        assert all(h.filter(record(logging.ERROR)) for h in consoles)  # errors still on the console
    finally:
        ray_logger.removeHandler(ray_session._DRIVER_LOG)
        ray_logger.setLevel(level)
        for h, filters in before.items():
            h.filters = filters
