"""The executor's retries, timeouts, preemption, stops, cache hits and resumes, without Ray.

Stage tasks run on a fake :class:`~raypipe.runner.backend.ExecutorBackend`: each launch
follows a scripted outcome (succeed, raise, hang) on a fake clock that only moves when
the executor waits or sleeps, so no test sleeps in real time.  Grants come from a fake
scheduler; the metadata store (SQLite) and the artifact store are real.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from raypipe.config import PipelineConfig
from raypipe.exceptions import GateFailed, RunStopped, StagePreempted
from raypipe.resources import Resources
from raypipe.runner.backend import ExecutorBackend, GrantScheduler, StageTask, TaskFailed
from raypipe.runner.events import take_stop_request
from raypipe.runner.executor import Executor, RunResult, StageEvent, request_stop
from raypipe.runner.plan import Plan, build_plan
from raypipe.runner.states import RunStatus, StageEventKind, StageStatus
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.metadata import MetadataStore, StageRunRecord

START = 1_000.0
#: A run still going this long after START never ends: the test fails instead of hanging.
HORIZON_S = 3_600.0


# --------------------------------------------------------------------------- the fakes


class FakeClock:
    """Time that moves only when told to; callbacks fire when it passes their time."""

    def __init__(self, start: float = START) -> None:
        self.t = start
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), fn))

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def advance_to(self, when: float) -> None:
        if when > START + HORIZON_S:
            raise AssertionError(f"the run did not end within {HORIZON_S:g} s of fake time")
        while self._timers and self._timers[0][0] <= when:
            at, _, fn = heapq.heappop(self._timers)
            self.t = max(self.t, at)
            fn()
        self.t = max(self.t, when)


@dataclass(frozen=True)
class Outcome:
    """What one launch of a stage does: finish ``after_s`` seconds after it starts (None:
    never) with its outputs, or raise ``error`` (as the stage's own error, or as a system
    failure when ``system``)."""

    after_s: float | None = 1.0
    error: BaseException | None = None
    system: bool = False


def fail(error: BaseException, after_s: float = 1.0) -> Outcome:
    return Outcome(after_s=after_s, error=error)


HANG = Outcome(after_s=None)


@dataclass(eq=False)
class FakeTask:
    task: StageTask
    outcome: Outcome
    started: float
    cancelled: bool = False

    @property
    def stage(self) -> str:
        return str(self.task.payload["stage"])

    def due(self) -> float | None:
        return None if self.outcome.after_s is None else self.started + self.outcome.after_s

    def ready(self, now: float) -> bool:
        due = self.due()
        return self.cancelled or (due is not None and now >= due)


@dataclass(eq=False)
class FakeWatch:
    """The scheduler's watch: ready once a watched job's version changed, or at its deadline."""

    scheduler: FakeScheduler
    versions: dict[str, int]
    deadline: float

    def due(self) -> float | None:
        return self.deadline

    def ready(self, now: float) -> bool:
        views = self.scheduler.poll(list(self.versions))
        return now >= self.deadline or any(views[j]["version"] != v for j, v in self.versions.items())


@dataclass(eq=False)
class Done:
    """A handle that has finished already (the scheduler's release)."""

    value: Any = None

    def due(self) -> float | None:
        return None

    def ready(self, now: float) -> bool:
        return True


class FakeBackend:
    """Scripted stage tasks on a :class:`FakeClock`."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.scripts: dict[str, list[Outcome]] = {}
        self.launched: list[FakeTask] = []

    def script(self, stage: str, *outcomes: Outcome) -> None:
        """The outcomes of the stage's next launches, in order (then: succeed after 1 s)."""
        self.scripts.setdefault(stage, []).extend(outcomes)

    def stages_launched(self) -> list[str]:
        return [t.stage for t in self.launched]

    def launch(self, task: StageTask) -> FakeTask:
        queue = self.scripts.get(str(task.payload["stage"])) or []
        outcome = queue.pop(0) if queue else Outcome()
        handle = FakeTask(task, outcome, self.clock.now())
        self.launched.append(handle)
        return handle

    def wait(self, handles: Sequence[Any], timeout_s: float) -> list[Any]:
        end = self.clock.now() + timeout_s
        while True:
            now = self.clock.now()
            ready = [h for h in handles if h.ready(now)]
            if ready or now >= end:
                return ready
            later = [t for h in handles if (t := h.due()) is not None and t > now]
            timer = self.clock.next_timer()
            self.clock.advance_to(min([end, *later, *([timer] if timer is not None else [])]))

    def result(self, handle: Any, timeout_s: float | None = None) -> Any:
        if isinstance(handle, Done):
            return handle.value
        if isinstance(handle, FakeWatch):
            return handle.scheduler.poll(list(handle.versions))
        assert isinstance(handle, FakeTask) and handle.ready(self.clock.now())
        if handle.cancelled:
            raise RuntimeError("task cancelled")
        error = handle.outcome.error
        if error is not None:
            if handle.outcome.system:
                raise error
            raise TaskFailed(error)
        payload = handle.task.payload
        store = ArtifactStore(payload["storage"])
        names = payload["outputs"] or ["out"]
        refs = {name: store.put_value(f"{payload['stage']}.{name}").to_dict() for name in names}
        return {"outputs": refs, "node_id": "node-1"}

    def cancel(self, handle: Any) -> None:
        handle.cancelled = True

    def now(self) -> float:
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        self.clock.advance_to(self.clock.now() + seconds)


@dataclass
class FakeScheduler:
    """Grants every job at once (on ``node-1``), except the stages it is told to hold."""

    clock: FakeClock
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # stage -> why it waits
    submitted: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    #: Stages whose node is found dead when the executor asks (``refresh``) after a system error.
    dead_nodes_of: set[str] = field(default_factory=set)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def new_job_id(self, prefix: str) -> str:
        return f"{prefix}:{next(self._ids)}"

    def hold(self, stage: str, reason: str) -> None:
        self.held[stage] = reason

    def _stage(self, job_id: str) -> str:
        return job_id.split(":")[1]

    def _set(self, job_id: str, state: str, reason: str = "") -> dict[str, Any]:
        job = self.jobs[job_id]
        job.update(state=state, reason=reason, version=job["version"] + 1)
        return dict(job)

    def submit(self, job_id: str, bundles: Sequence[Resources], **kw: Any) -> dict[str, Any]:
        self.submitted.append((job_id, kw))
        waits = self.held.get(self._stage(job_id))
        self.jobs[job_id] = {
            "job_id": job_id,
            "state": "queued" if waits else "running",
            "reason": waits or "",
            "version": 1,
            "grant": kw.get("grant", "pg"),
            "nodes": ["node-1"],
            "pg_id": None,
        }
        return dict(self.jobs[job_id])

    def running_job(self, stage: str) -> str:
        (job_id,) = [j for j, v in self.jobs.items() if self._stage(j) == stage and v["state"] == "running"]
        return job_id

    def preempt(self, stage: str, reason: str = "a job of priority 10 needs node-1") -> None:
        self._set(self.running_job(stage), "preempting", reason)

    def watch(self, versions: Mapping[str, int], timeout_s: float = 10.0) -> FakeWatch:
        return FakeWatch(self, dict(versions), self.clock.now() + timeout_s)

    def refresh(self, job_ids: Sequence[str], wait_s: float = 0.0) -> dict[str, dict[str, Any]]:
        for job_id in job_ids:
            if self._stage(job_id) in self.dead_nodes_of and self.jobs[job_id]["state"] == "running":
                self._set(job_id, "lost", "a node of its grant died")
        return self.poll(job_ids)

    def release(self, job_ids: Sequence[str]) -> Done:
        for job_id in job_ids:
            self.released.append(job_id)
            self._set(job_id, "done")
        return Done()

    def poll(self, job_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {j: dict(self.jobs[j]) for j in job_ids if j in self.jobs}

    def requeue(self, job_id: str) -> dict[str, Any] | None:
        """Queued again, and granted again at once."""
        self.requeued.append(job_id)
        self._set(job_id, "queued", "requeued after preemption")
        return self._set(job_id, "running")


# --------------------------------------------------------------------------- the harness


def stage(name: str, **spec: Any) -> dict[str, Any]:
    """A python stage with one output ``out``; ``inputs`` of ``x`` make it call ``use``."""
    function = "tests.unit.funcs:use" if "inputs" in spec else "tests.unit.funcs:make"
    return {"name": name, "kind": "python", "params": {"function": function}, "outputs": ["out"], **spec}


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.backend = FakeBackend(self.clock)
        self.scheduler = FakeScheduler(self.clock)
        self.meta = MetadataStore(str(tmp_path / "meta.db"))
        self.artifacts = ArtifactStore(str(tmp_path / "store"))
        self.events: list[StageEvent] = []
        self.connects = 0

    def plan(self, *stages: dict[str, Any], **pipeline: Any) -> Plan:
        cfg = PipelineConfig.model_validate({"name": "p", "storage": self.artifacts.root, "stages": stages, **pipeline})
        return build_plan(cfg)

    def connect(self) -> GrantScheduler:
        self.connects += 1
        return self.scheduler

    def run(
        self,
        plan: Plan,
        run_id: str = "r1",
        *,
        grants: bool = True,
        reuse: Mapping[str, StageRunRecord] | None = None,
        use_cache: bool = True,
    ) -> RunResult:
        if reuse is None:
            self.meta.create_run(run_id, plan.config.name, "{}", None, self.artifacts.root)
        backend: ExecutorBackend = self.backend
        ex = Executor(
            plan,
            run_id,
            self.meta,
            self.artifacts,
            use_cache=use_cache,
            reuse=reuse,
            on_event=self.events.append,
            connect=self.connect if grants else None,
            backend=backend,
        )
        return ex.execute()

    def records(self, stage: str, run_id: str = "r1") -> list[tuple[int, str]]:
        """(attempt, status) of each stage run of the stage, oldest first."""
        return [(sr.attempt, sr.status) for sr in self.meta.stage_runs(run_id) if sr.stage == stage]

    def seen(self, stage: str) -> list[str]:
        return [e.status for e in self.events if e.stage == stage]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    while take_stop_request() is not None:
        pass
    harness = Harness(tmp_path)
    yield harness
    harness.meta.close()
    while take_stop_request() is not None:
        pass


# --------------------------------------------------------------------------- retries


def test_a_failing_stage_is_retried_up_to_its_retries_then_fails(h: Harness) -> None:
    plan = h.plan(stage("a", retries={"max": 2, "backoff_s": 5}), stage("b", inputs={"x": "a.out"}))
    h.backend.script("a", *[fail(ValueError("boom"))] * 3)
    res = h.run(plan, grants=False)
    assert res.status == RunStatus.FAILED and not res.ok
    assert res.stages == {"a": StageStatus.FAILED, "b": StageStatus.SKIPPED}
    assert res.errors == {"a": "ValueError: boom"}
    assert h.backend.stages_launched() == ["a", "a", "a"]
    assert [t.task.payload["attempt"] for t in h.backend.launched] == [1, 2, 3]
    assert h.records("a") == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert h.records("b") == [(0, "skipped")]
    # each attempt fails 1 s after it starts; the waits before the retries double from backoff_s
    starts = [t.started for t in h.backend.launched]
    assert [b - a for a, b in itertools.pairwise(starts)] == pytest.approx([1 + 5, 1 + 10])
    assert h.seen("a") == ["started", "retrying", "started", "retrying", "started", "failed"]
    assert h.meta.get_run("r1").status == "failed"


def test_a_retry_that_passes_lets_the_run_succeed(h: Harness) -> None:
    plan = h.plan(stage("a", retries={"max": 2, "backoff_s": 1}), stage("b", inputs={"x": "a.out"}))
    h.backend.script("a", fail(OSError("connection reset")))
    res = h.run(plan)
    assert res.ok and res.stages == {"a": "succeeded", "b": "succeeded"}
    assert h.records("a") == [(1, "failed"), (2, "succeeded")]
    assert h.backend.stages_launched() == ["a", "a", "b"]
    # every attempt asked for its own grant and gave it back
    assert len(h.scheduler.submitted) == 3 and sorted(h.scheduler.released) == sorted(h.scheduler.jobs)


def test_a_deterministic_failure_is_not_retried(h: Harness) -> None:
    plan = h.plan(stage("a", retries={"max": 3}))
    h.backend.script("a", fail(GateFailed("accuracy 0.5 < 0.9")))
    res = h.run(plan)
    assert res.stages == {"a": "failed"} and h.records("a") == [(1, "failed")]
    assert h.backend.stages_launched() == ["a"]


# --------------------------------------------------------------------------- timeouts


def test_waiting_longer_than_wait_timeout_s_for_a_grant_times_out_without_retry(h: Harness) -> None:
    plan = h.plan(stage("a", wait_timeout_s=30, retries={"max": 3}), stage("b", inputs={"x": "a.out"}))
    why = "2 CPUs held by pipeline other's stage train"
    h.scheduler.hold("a", why)
    res = h.run(plan)
    assert res.status == RunStatus.FAILED
    assert res.stages == {"a": StageStatus.FAILED, "b": StageStatus.SKIPPED}
    assert h.records("a") == [(1, "timeout")]
    assert h.backend.launched == [] and len(h.scheduler.submitted) == 1
    assert h.clock.now() == pytest.approx(START + 30)
    assert res.errors["a"] == f"waited 30s for resources (wait_timeout_s: 30): {why}"
    assert h.scheduler.released == [h.scheduler.submitted[0][0]]
    assert h.seen("a") == ["queued", "waiting", "failed"]


def test_the_pipeline_wait_timeout_s_applies_to_every_stage(h: Harness) -> None:
    plan = h.plan(stage("a"), wait_timeout_s=12)
    h.scheduler.hold("a", "no node has a GPU")
    assert h.run(plan).errors["a"].startswith("waited 12s for resources")
    assert h.records("a") == [(1, "timeout")]


def test_a_stage_running_longer_than_timeout_s_is_cancelled_and_retried(h: Harness) -> None:
    plan = h.plan(stage("a", timeout_s=10, retries={"max": 1, "backoff_s": 0}))
    h.backend.script("a", HANG, HANG)
    res = h.run(plan)
    assert res.stages == {"a": "failed"} and res.errors == {"a": "timed out after 10s"}
    assert h.records("a") == [(1, "timeout"), (2, "timeout")]
    assert [t.cancelled for t in h.backend.launched] == [True, True]
    assert h.clock.now() == pytest.approx(START + 20)


# --------------------------------------------------------------------------- preemption


def test_a_preempted_stage_is_requeued_and_runs_again_without_spending_a_retry(h: Harness) -> None:
    plan = h.plan(stage("a"), stage("b", inputs={"x": "a.out"}))
    h.backend.script("a", Outcome(after_s=10), Outcome(after_s=10))
    h.clock.at(START + 3, lambda: h.scheduler.preempt("a"))
    res = h.run(plan)
    assert res.ok and res.stages == {"a": "succeeded", "b": "succeeded"}
    assert h.backend.stages_launched() == ["a", "a", "b"]
    first, second = h.backend.launched[:2]
    assert first.cancelled and not second.cancelled
    assert second.started == pytest.approx(START + 3)
    assert [t.task.payload["attempt"] for t in (first, second)] == [1, 1]
    assert first.task.grant is not None and second.task.grant is not None
    assert h.records("a") == [(1, "preempted"), (1, "succeeded")]
    job_a = h.scheduler.submitted[0][0]
    assert h.scheduler.requeued == [job_a] and job_a in h.scheduler.released
    assert h.seen("a") == ["queued", "started", "requeued", "started", "succeeded"]


def test_a_preempted_stage_with_a_grace_period_stops_itself_and_is_requeued(h: Harness) -> None:
    plan = h.plan(stage("a", preempt_grace_s=5))
    # preempted at 3 s; it checkpoints and raises StagePreempted at 4 s, inside its grace
    h.backend.script("a", fail(StagePreempted("checkpointed at step 30"), after_s=4))
    h.clock.at(START + 3, lambda: h.scheduler.preempt("a"))
    res = h.run(plan)
    assert res.ok and h.records("a") == [(1, "preempted"), (1, "succeeded")]
    assert [t.cancelled for t in h.backend.launched] == [False, False]
    assert h.seen("a") == ["queued", "started", "preempting", "requeued", "started", "succeeded"]
    (err,) = [sr.error for sr in h.meta.stage_runs("r1") if sr.status == "preempted"]
    assert err is not None and "stopped: StagePreempted: checkpointed at step 30" in err


def test_a_preempted_stage_that_does_not_stop_in_its_grace_period_is_cancelled(h: Harness) -> None:
    plan = h.plan(stage("a", preempt_grace_s=5))
    h.backend.script("a", HANG)
    h.clock.at(START + 3, lambda: h.scheduler.preempt("a"))
    res = h.run(plan)
    assert res.ok and h.records("a") == [(1, "preempted"), (1, "succeeded")]
    first, second = h.backend.launched
    assert first.cancelled and second.started == pytest.approx(START + 3 + 5)


def test_stage_preempted_raised_without_a_preemption_is_a_failure(h: Harness) -> None:
    plan = h.plan(stage("a"))
    h.backend.script("a", fail(StagePreempted("nobody asked")))
    res = h.run(plan)
    assert res.stages == {"a": "failed"} and h.records("a") == [(1, "failed")]
    assert h.scheduler.requeued == []


def test_a_stage_whose_node_died_is_requeued_without_spending_a_retry(h: Harness) -> None:
    plan = h.plan(stage("a"))
    h.backend.script("a", Outcome(error=ConnectionError("worker exited unexpectedly"), system=True))
    h.scheduler.dead_nodes_of.add("a")
    res = h.run(plan)
    assert res.ok and h.records("a") == [(1, "lost"), (1, "succeeded")]
    assert h.scheduler.requeued == [h.scheduler.submitted[0][0]]


def test_a_system_error_on_a_live_node_is_a_failure(h: Harness) -> None:
    plan = h.plan(stage("a"))
    h.backend.script("a", Outcome(error=ConnectionError("worker exited unexpectedly"), system=True))
    res = h.run(plan)
    assert res.stages == {"a": "failed"} and h.records("a") == [(1, "failed")]
    assert h.scheduler.requeued == []


# --------------------------------------------------------------------------- stop requests


def test_a_stop_request_cancels_the_stages_and_ends_the_run_stopped(h: Harness) -> None:
    plan = h.plan(stage("a"), stage("b", inputs={"x": "a.out"}))
    h.backend.script("a", HANG)
    h.clock.at(START + 2, lambda: request_stop("SIGTERM"))
    with pytest.raises(RunStopped, match="SIGTERM"):
        h.run(plan)
    run = h.meta.get_run("r1")
    assert run.status == RunStatus.STOPPED and run.error == "stopped: SIGTERM"
    assert h.records("a") == [(1, "interrupted")] and h.records("b") == []
    (task,) = h.backend.launched
    assert task.cancelled
    assert h.scheduler.released == [h.scheduler.submitted[0][0]]
    assert h.clock.now() < START + 3  # at the loop's next turn


def test_a_driver_error_ends_the_run_interrupted(h: Harness) -> None:
    plan = h.plan(stage("a"))
    h.backend.script("a", HANG)

    def crash() -> None:
        raise ConnectionError("lost the cluster")

    h.clock.at(START + 2, crash)
    with pytest.raises(ConnectionError):
        h.run(plan, grants=False)
    run = h.meta.get_run("r1")
    assert run.status == RunStatus.INTERRUPTED and run.error == "driver interrupted: ConnectionError"
    assert h.records("a") == [(1, "interrupted")]


# --------------------------------------------------------------------------- cache and resume


def test_a_cached_stage_is_not_launched_again(h: Harness) -> None:
    plan = h.plan(stage("a"), stage("b", inputs={"x": "a.out"}))
    first = h.run(plan, "r1")
    assert first.ok and h.backend.stages_launched() == ["a", "b"] and h.connects == 1
    h.backend.launched.clear()
    again = h.run(plan, "r2")
    assert again.ok and again.stages == {"a": StageStatus.CACHED, "b": StageStatus.CACHED}
    assert h.backend.launched == [] and h.connects == 1  # all cache hits: no cluster needed
    assert again.outputs == first.outputs
    assert h.records("a", "r2") == [(0, "cached")]
    assert h.seen("a")[-1] == StageEventKind.CACHED


def test_without_the_cache_every_stage_runs_again(h: Harness) -> None:
    plan = h.plan(stage("a"), stage("b", inputs={"x": "a.out"}))
    h.run(plan, "r1")
    h.backend.launched.clear()
    assert h.run(plan, "r2", use_cache=False).stages == {"a": "succeeded", "b": "succeeded"}
    assert h.backend.stages_launched() == ["a", "b"]


def test_a_cache_hit_whose_outputs_are_gone_runs_again(h: Harness) -> None:
    plan = h.plan(stage("a"))
    first = h.run(plan, "r1")
    Path(h.artifacts.local_path(first.outputs["a"]["out"])).unlink()
    h.backend.launched.clear()
    assert h.run(plan, "r2").stages == {"a": "succeeded"}
    assert h.backend.stages_launched() == ["a"]
    assert StageEventKind.STALE in h.seen("a")


def test_resume_reuses_the_finished_stages_and_runs_the_rest(h: Harness) -> None:
    plan = h.plan(stage("a"), stage("b", inputs={"x": "a.out"}))
    h.backend.script("b", fail(OSError("disk full")))
    first = h.run(plan)
    assert first.stages == {"a": "succeeded", "b": "failed"}
    h.backend.launched.clear()
    h.meta.claim_run("r1")
    res = h.run(plan, reuse=h.meta.done_stages("r1"))
    assert res.ok and res.stages == {"a": StageStatus.REUSED, "b": StageStatus.SUCCEEDED}
    assert h.backend.stages_launched() == ["b"]
    assert h.backend.launched[0].task.payload["inputs"]["x"] == first.outputs["a"]["out"].to_dict()
    assert h.records("a") == [(1, "succeeded")]
    assert h.records("b") == [(1, "failed"), (1, "succeeded")]
    assert h.meta.get_run("r1").status == "succeeded"
