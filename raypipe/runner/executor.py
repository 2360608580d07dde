"""The run loop: cache lookups, tasks for ready stages, retries, timeouts, records.

Runs on the driver.  Stages whose upstream stages are done run concurrently as
tasks of the executor's backend (:class:`~raypipe.runner.ray_backend.RayExecutorBackend`:
Ray tasks with their declared resources); every state change is written to the
metadata store before the loop moves on, so a driver killed at any moment leaves
a record that ``resume`` can continue from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from raypipe import failures
from raypipe.exceptions import RunStopped, StagePreempted
from raypipe.runner.backend import ExecutorBackend, GrantScheduler, Handle, StageTask, TaskFailed
from raypipe.runner.cache import checkpoint_dir, hash_document, key_document
from raypipe.runner.events import RunResult, StageEvent, request_stop, short_error, take_stop_request
from raypipe.runner.plan import Plan, PlannedStage
from raypipe.runner.states import BLOCKING_STATES, DONE_STATES, RunStatus, StageEventKind, StageStatus
from raypipe.stages.base import CommitContext, StageKind
from raypipe.store import logs as stage_logs
from raypipe.store.artifacts import ArtifactRef, ArtifactStore, source_refs
from raypipe.store.metadata import MetadataStore, StageRunRecord

__all__ = [
    "DONE_STATES",
    "WAIT_NOTICE_S",
    "Executor",
    "RunResult",
    "StageEvent",
    "request_stop",
    "short_error",
]


#: How often a stage that waits for its grant says so again, and why (seconds;
#: ``$RAYPIPE_WAIT_NOTICE_S`` overrides).
WAIT_NOTICE_S = 60.0


@dataclass
class _Attempt:
    stage: str
    stage_run_id: int
    attempt: int
    started: float
    deadline: float | None
    inputs: dict[str, ArtifactRef]
    key: str
    job_id: str | None = None  # the scheduler's job, when the attempt needs resources
    reason: str = ""
    stop_by: float | None = None  # preempted: cancelled at this time unless it stopped itself
    noticed: float = 0.0  # when the waiting line was last shown


#: A hook run on the driver after a stage of one kind succeeded: (the kind, its commit) -> a note.
AfterSuccess = Callable[[StageKind, CommitContext], str | None]


class Executor:
    """Drives one run of a plan to completion (or failure) through its backend."""

    def __init__(
        self,
        plan: Plan,
        run_id: str,
        meta: MetadataStore,
        artifacts: ArtifactStore,
        *,
        use_cache: bool = True,
        reuse: Mapping[str, StageRunRecord] | None = None,
        on_event: Callable[[StageEvent], None] | None = None,
        connect: Callable[[], GrantScheduler | None] | None = None,
        poll_s: float = 0.5,
        backend: ExecutorBackend | None = None,
        after_success: Mapping[str, AfterSuccess] | None = None,
    ) -> None:
        """``connect`` is called once, before the first stage that must run (a run that
        is all cache hits never starts or joins Ray); it returns the scheduler client
        every stage with resources is admitted through, or None to use Ray's own.
        ``backend`` runs the stage tasks and keeps time (default: Ray tasks, the wall clock).
        ``after_success``: per stage kind, what the layers above the runner do on the driver
        after a stage of that kind succeeded (after the kind's own ``after_success``); each
        returns a note for the stage's event, or None."""
        if backend is None:
            from raypipe.runner.ray_backend import RayExecutorBackend

            backend = RayExecutorBackend()
        self.backend: ExecutorBackend = backend
        self.plan = plan
        self.run_id = run_id
        self.meta = meta
        self.artifacts = artifacts
        self.use_cache = use_cache
        self.reuse = dict(reuse or {})
        self.on_event = on_event or (lambda e: None)
        self.poll_s = poll_s
        self._connect = connect
        self._hooks = dict(after_success or {})
        self.state: dict[str, StageStatus] = {name: StageStatus.WAITING for name in plan.order}
        self.outputs: dict[str, dict[str, ArtifactRef]] = {}
        self.keys: dict[str, str] = {}
        self.docs: dict[str, dict[str, Any]] = {}  # stage -> the document its key hashes (kept with its runs)
        self.attempts: dict[str, int] = {}
        self.retry_at: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.running: dict[Handle, _Attempt] = {}
        self.pending: dict[str, _Attempt] = {}  # job id -> attempt waiting for its grant
        self.versions: dict[str, int] = {}  # job id -> last seen version, for watching
        self.scheduler: GrantScheduler | None = None
        self._watch: Handle = None
        #: A stage that waits for its grant says so again this often (seconds).
        self.notice_s = float(os.environ.get("RAYPIPE_WAIT_NOTICE_S", WAIT_NOTICE_S))

    # ------------------------------------------------------------------ helpers
    def _emit(self, stage: str, status: StageEventKind, **kw: Any) -> None:
        self.on_event(StageEvent(stage=stage, status=status, **kw))

    def _inputs_of(self, ps: PlannedStage) -> dict[str, ArtifactRef] | str:
        refs: dict[str, ArtifactRef] = {}
        for arg, ref in ps.spec.inputs.items():
            producer, _, output = ref.partition(".")
            produced = self.outputs.get(producer, {})
            if output not in produced:
                return (
                    f"input {arg!r}: stage {producer!r} produced no output {output!r}; "
                    f"it produced: {', '.join(sorted(produced)) or 'nothing'}"
                )
            refs[arg] = produced[output]
        return {**refs, **ps.kind.resolve_inputs(self.meta)}

    def _try_cache(self, ps: PlannedStage, key: str, inputs: dict[str, ArtifactRef]) -> bool:
        if not (self.use_cache and ps.spec.cache):
            return False
        hit = self.meta.find_cached(key)
        if hit is None:
            return False
        recorded = self.meta.io_of(hit.id, "out")
        outs = {name: self.artifacts.rebased(ref) for name, ref in recorded.items()}
        missing = [name for name, ref in outs.items() if not self.artifacts.exists(ref)]
        if missing:
            gone = ", ".join(f"{n} ({recorded[n].uri})" for n in missing[:3])
            self._emit(
                ps.spec.name,
                StageEventKind.STALE,
                message=f"cached by stage run {hit.id}, but its outputs are gone from storage: {gone}; running it again",
            )
            return False
        moved = {n: r for n, r in outs.items() if r.uri != recorded[n].uri}
        if moved:  # the project moved: its records follow
            self.meta.relocate(moved)
        source = hit.cached_from or hit.id
        recorded_in = self._recorded_inputs(ps, inputs)
        sid = self.meta.record_cached(
            self.run_id, ps.spec.name, key, source, recorded_in, outs, key_doc=self.docs.get(ps.spec.name)
        )
        self.outputs[ps.spec.name] = outs
        self.state[ps.spec.name] = StageStatus.CACHED
        note = self._after_success(ps.spec.name, sid, inputs, outs, cached=True)
        self._emit(
            ps.spec.name, StageEventKind.CACHED, message=f"from stage run {source}" + (f"; {note}" if note else "")
        )
        return True

    def _recorded_inputs(self, ps: PlannedStage, inputs: Mapping[str, ArtifactRef]) -> dict[str, ArtifactRef]:
        """The inputs recorded for lineage: artifacts, plus the files a kind read from outside the store."""
        return {**inputs, **source_refs(ps.kind.source_files() or [])}

    def _after_success(
        self,
        stage: str,
        stage_run_id: int,
        inputs: Mapping[str, ArtifactRef],
        outs: Mapping[str, ArtifactRef],
        *,
        cached: bool,
    ) -> str | None:
        commit = CommitContext(
            self.meta, self.artifacts, self.run_id, stage, stage_run_id, dict(inputs), dict(outs), cached=cached
        )
        ps = self.plan.stages[stage]
        notes = [ps.kind.after_success(commit)]
        hook = self._hooks.get(ps.spec.kind)
        if hook is not None:
            notes.append(hook(ps.kind, commit))
        return "; ".join(n for n in notes if n) or None

    def _request(self, ps: PlannedStage, key: str, inputs: dict[str, ArtifactRef]) -> None:
        """A new attempt: ask the scheduler for its resources (or launch at once if it needs none)."""
        if self._connect is not None:
            self.scheduler = self._connect()
            self._connect = None
        name = ps.spec.name
        attempt = self.attempts.get(name, 0) + 1
        self.attempts[name] = attempt
        res = ps.spec.resources.to_resources()
        if self.scheduler is None or res.is_zero():
            sid = self.meta.start_stage(self.run_id, name, attempt, key, StageStatus.RUNNING, self.docs.get(name))
            self._launch(_Attempt(name, sid, attempt, self.backend.now(), None, inputs, key), None)
            return
        sid = self.meta.start_stage(self.run_id, name, attempt, key, StageStatus.QUEUED, self.docs.get(name))
        job_id = self.scheduler.new_job_id(f"{self.run_id}:{name}:{attempt}")
        att = _Attempt(name, sid, attempt, self.backend.now(), None, inputs, key, job_id)
        spec = ps.spec
        view = self.scheduler.submit(
            job_id,
            [res] * spec.gang_size,
            priority=spec.priority,
            team=spec.team,
            preemptible=spec.preemptible,
            strategy=spec.placement,
            # One bundle: booked in the controller's ledger and the task pinned to its
            # node, as fast as a plain task.  A gang: one placement group, reserved
            # atomically by Ray, with the stage's child tasks captured in it.
            # Kinds that launch their own Ray work (Ray Data, Ray Train) get a ledger
            # grant too: their library places its tasks (or its own group) on the
            # granted nodes.
            grant="ledger" if spec.gang_size == 1 or ps.kind.runs_ray_work else "pg",
        )
        if view["state"] == "rejected":
            msg = f"cannot be scheduled: {view['reason']}"
            self._fail(att, StageStatus.REJECTED, msg, msg, retry=False)
            return
        self.pending[job_id] = att
        self.state[name] = StageStatus.QUEUED
        self._emit(name, StageEventKind.QUEUED, attempt=attempt, message=view.get("reason", ""))
        self._on_view(job_id, view)

    def _launch(self, att: _Attempt, grant: Mapping[str, Any] | None) -> None:
        ps = self.plan.stages[att.stage]
        res = ps.spec.resources.to_resources()
        payload = {
            "run_id": self.run_id,
            "stage": att.stage,
            "attempt": att.attempt,
            "kind": ps.spec.kind,
            "params": ps.kind.params.model_dump(mode="json"),
            "outputs": None if ps.outputs is None else list(ps.outputs),
            "pickle": ps.spec.pickle,
            "storage": self.artifacts.root,
            "inputs": {k: v.to_dict() for k, v in att.inputs.items()},
            "resources": res.to_dict(),
            "job_id": att.job_id,
            "checkpoint_dir": self.artifacts.uri_of(checkpoint_dir(self.run_id, att.stage, att.key)),
            "gang_size": ps.spec.gang_size,
            "grant_nodes": list(grant["nodes"]) if grant is not None and grant.get("grant") == "ledger" else None,
        }
        if grant is not None:
            self.meta.mark_running(att.stage_run_id)
        # Kinds that launch their own Ray work leave the grant to it (else a data stage's
        # tasks would wait for the CPUs its own driver task holds).
        own = ps.kind.task_resources(res, ps.spec.gang_size)
        name = f"raypipe:{self.plan.config.name}:{att.stage}"
        handle = self.backend.launch(StageTask(name, payload, own, grant))
        now = self.backend.now()
        att.started = now
        att.deadline = now + ps.spec.timeout_s if ps.spec.timeout_s else None
        self.running[handle] = att
        self.state[att.stage] = StageStatus.RUNNING
        self._emit(att.stage, StageEventKind.STARTED, attempt=att.attempt)

    def _on_view(self, job_id: str, view: Mapping[str, Any]) -> None:
        """React to the scheduler's view of one of our jobs."""
        if job_id not in self.versions and job_id not in self.pending:
            return
        self.versions[job_id] = view["version"]
        state = view["state"]
        if job_id in self.pending:
            att = self.pending[job_id]
            if state == "running":
                del self.pending[job_id]
                self._launch(att, view)
            elif state in ("preempting", "lost"):
                # Granted, then preempted (or its node lost) before we saw the grant:
                # nothing was launched; hand it back and keep waiting.
                requeued = self.scheduler.requeue(job_id) if self.scheduler is not None else None
                if requeued is not None:
                    self._on_view(job_id, requeued)
            elif state == "queued" and view.get("reason") and view["reason"] != att.reason:
                att.reason = view["reason"]
                att.noticed = self.backend.now()
                self._emit(att.stage, StageEventKind.WAITING, attempt=att.attempt, message=att.reason)
            elif state in ("done", "rejected"):
                del self.pending[job_id]
                self.versions.pop(job_id, None)
                msg = f"the scheduler ended the job: {view.get('reason') or state}"
                self._fail(att, StageStatus.FAILED, msg, msg)
            return
        if state in ("preempting", "lost"):
            handle = next((h for h, a in self.running.items() if a.job_id == job_id), None)
            if handle is None:
                return
            att = self.running[handle]
            grace = self._grace_s(att.stage)
            if state == "preempting" and grace > 0:
                if att.stop_by is None:  # let it checkpoint and stop; cancelled at stop_by
                    att.stop_by = self.backend.now() + grace
                    att.reason = view.get("reason", "")
                    self._emit(
                        att.stage,
                        StageEventKind.PREEMPTING,
                        attempt=att.attempt,
                        message=f"{grace:g}s to checkpoint and stop",
                    )
                return
            status = StageStatus.PREEMPTED if state == "preempting" else StageStatus.LOST
            self._requeue(handle, att, status, view.get("reason", ""))

    def _grace_s(self, stage: str) -> float:
        ps = self.plan.stages[stage]
        if ps.spec.preempt_grace_s is not None:
            return ps.spec.preempt_grace_s
        return 30.0 if ps.kind.handles_preemption() else 0.0

    def _requeue(self, handle: Handle, att: _Attempt, status: StageStatus, reason: str) -> None:
        """Stop work the scheduler took back; the same attempt waits for a new grant."""
        if self.running.pop(handle, None) is not None:
            self.backend.cancel(handle)
        self.meta.fail_stage(att.stage_run_id, status, reason or status)
        if self.scheduler is None or att.job_id is None:
            raise RuntimeError(f"stage {att.stage!r}: only admitted attempts can be requeued")
        att.stage_run_id = self.meta.start_stage(
            self.run_id, att.stage, att.attempt, att.key, StageStatus.QUEUED, self.docs.get(att.stage)
        )
        att.deadline = att.stop_by = None
        view = self.scheduler.requeue(att.job_id)
        self.pending[att.job_id] = att
        self.state[att.stage] = StageStatus.QUEUED
        self._emit(att.stage, StageEventKind.REQUEUED, attempt=att.attempt, message=f"{status}: {reason}")
        if view is not None:
            self._on_view(att.job_id, view)

    def _release(self, att: _Attempt) -> None:
        if att.job_id is not None and self.scheduler is not None:
            self.versions.pop(att.job_id, None)
            self.scheduler.release([att.job_id])

    def _succeed(self, att: _Attempt, result: Mapping[str, Any]) -> None:
        outs = {k: ArtifactRef.from_dict(v) for k, v in result["outputs"].items()}
        ps = self.plan.stages[att.stage]
        self.meta.succeed_stage(
            att.stage_run_id, self._recorded_inputs(ps, att.inputs), outs, node_id=result.get("node_id")
        )
        self._release(att)
        self.outputs[att.stage] = outs
        self.state[att.stage] = StageStatus.SUCCEEDED
        note = self._after_success(att.stage, att.stage_run_id, att.inputs, outs, cached=False)
        self._emit(
            att.stage,
            StageEventKind.SUCCEEDED,
            attempt=att.attempt,
            duration_s=self.backend.now() - att.started,
            message=note or "",
        )

    def _fail(self, att: _Attempt, status: StageStatus, short: str, detail: str, retry: bool = True) -> None:
        self.meta.fail_stage(att.stage_run_id, status, detail)
        self._release(att)
        spec = self.plan.stages[att.stage].spec
        if retry and att.attempt <= spec.retries.max:
            delay = spec.retries.backoff_s * (2 ** (att.attempt - 1))
            self.retry_at[att.stage] = self.backend.now() + delay
            self.state[att.stage] = StageStatus.WAITING
            self._emit(att.stage, StageEventKind.RETRYING, attempt=att.attempt, message=f"{short}; retry in {delay:g}s")
        else:
            self.state[att.stage] = StageStatus.FAILED
            self.errors[att.stage] = short
            duration = self.backend.now() - att.started
            self._emit(att.stage, StageEventKind.FAILED, attempt=att.attempt, duration_s=duration, message=short)

    def _fail_unstarted(self, name: str, message: str) -> None:
        self.meta.skip_stage(self.run_id, name, failures.encode(message, failures.CONFIG))
        self.state[name] = StageStatus.FAILED
        self.errors[name] = message
        self._emit(name, StageEventKind.FAILED, message=message)

    # ------------------------------------------------------------------ the loop
    def _schedule_ready(self) -> bool:
        """Start (or reuse from cache) every stage whose upstream is done.  True if anything changed."""
        changed = False
        now = self.backend.now()
        for name in self.plan.order:
            if self.state[name] != StageStatus.WAITING:
                continue
            ps = self.plan.stages[name]
            ups = [self.state[u] for u in ps.upstream]
            if any(s in BLOCKING_STATES for s in ups):
                bad = next(u for u in ps.upstream if self.state[u] in BLOCKING_STATES)
                reason = f"upstream stage {bad!r} {self.state[bad]}"
                self.meta.skip_stage(self.run_id, name, reason)
                self.state[name] = StageStatus.SKIPPED
                self._emit(name, StageEventKind.SKIPPED, message=reason)
                changed = True
                continue
            if not all(s in DONE_STATES for s in ups) or self.retry_at.get(name, 0.0) > now:
                continue
            inputs = self._inputs_of(ps)
            if isinstance(inputs, str):
                self._fail_unstarted(name, inputs)
                changed = True
                continue
            doc = key_document(
                ps,
                {arg: ref.sha256 for arg, ref in inputs.items()},
                {u: self.keys[u] for u in ps.spec.depends_on},
            )
            self.docs[name] = doc
            self.keys[name] = key = hash_document(doc)
            if not self._try_cache(ps, key, inputs):
                self._request(ps, key, inputs)
            changed = True
        return changed

    def _wait_limit(self, stage: str) -> float | None:
        spec = self.plan.stages[stage].spec
        return spec.wait_timeout_s if spec.wait_timeout_s is not None else self.plan.config.wait_timeout_s

    def _check_waits(self) -> None:
        """Stages still waiting for their grant: say so again every ``notice_s`` (how long,
        and why: the scheduler names what holds the capacity), and give up on one that has
        waited its ``wait_timeout_s`` (not retried: waiting again would not help)."""
        now = self.backend.now()
        for job_id, att in list(self.pending.items()):
            waited = now - att.started
            limit = self._wait_limit(att.stage)
            if limit is not None and waited >= limit:
                del self.pending[job_id]
                why = att.reason or "no grant yet"
                msg = f"waited {waited:.0f}s for resources (wait_timeout_s: {limit:g}): {why}"
                self._fail(att, StageStatus.TIMEOUT, msg, msg, retry=False)
            elif now - max(att.noticed, att.started) >= self.notice_s:
                att.noticed = now
                message = f"still waiting after {_ago(waited)}: {att.reason}"
                self._emit(att.stage, StageEventKind.WAITING, attempt=att.attempt, message=message)

    def _wait_timeout(self) -> float:
        now = self.backend.now()
        deadlines = [a.deadline for a in self.running.values() if a.deadline is not None]
        deadlines += [max(a.noticed, a.started) + self.notice_s for a in self.pending.values()]
        deadlines += [a.started + w for a in self.pending.values() if (w := self._wait_limit(a.stage)) is not None]
        deadlines += [a.stop_by for a in self.running.values() if a.stop_by is not None]
        deadlines += [t for s, t in self.retry_at.items() if self.state[s] == StageStatus.WAITING]
        nearest = min(deadlines, default=now + self.poll_s)
        return max(0.0, min(self.poll_s, nearest - now))

    def _collect(self) -> None:
        """Wait (at most until the nearest deadline) for a stage task or the scheduler's
        watch to finish, handle what finished, then cancel what overran its time."""
        if self._watch is None and self.versions and self.scheduler is not None:
            self._watch = self.scheduler.watch(self.versions)
        handles = list(self.running) + ([self._watch] if self._watch is not None else [])
        for handle in self.backend.wait(handles, self._wait_timeout()):
            if handle is self._watch or handle == self._watch:
                self._watch = None
                try:
                    views = self.backend.result(handle)
                except TaskFailed as e:  # the controller's own error, as it was raised
                    raise e.error from None
                for job_id, view in views.items():
                    self._on_view(job_id, view)
                continue
            att = self.running.pop(handle, None)
            if att is not None:  # else cancelled by a requeue in this same pass
                self._finished(handle, att)
        now = self.backend.now()
        for handle, att in list(self.running.items()):
            if att.stop_by is not None and now >= att.stop_by:
                self._requeue(
                    handle, att, StageStatus.PREEMPTED, f"{att.reason} (did not stop within its grace period)"
                )
            elif att.deadline is not None and now >= att.deadline:
                self.backend.cancel(handle)
                del self.running[handle]
                msg = f"timed out after {self.plan.stages[att.stage].spec.timeout_s:g}s"
                stage_logs.note_killed(self.artifacts.root, self.run_id, att.stage, att.attempt, msg)
                self._fail(att, StageStatus.TIMEOUT, msg, msg)

    def _finished(self, handle: Handle, att: _Attempt) -> None:
        """A stage task finished: record its success, or requeue, retry or fail it."""
        try:
            result = self.backend.result(handle)
        except TaskFailed as failed:
            e = failed.error
            if att.stop_by is not None or isinstance(failures.user_exception(e), StagePreempted):
                if self._requeue_if_preempted(handle, att, e):
                    return
            # a deterministic failure (a missed gate, a failed validation...) fails again
            self._fail(att, StageStatus.FAILED, short_error(e), _detail(e), retry=failures.retryable(e))
        except Exception as e:  # noqa: BLE001 - a system error: maybe the node died
            if not self._requeue_if_lost(handle, att):
                self._fail(att, StageStatus.FAILED, short_error(e), _detail(e))
        else:
            try:
                self._succeed(att, result)
            except Exception as e:  # noqa: BLE001
                self._fail(att, StageStatus.FAILED, short_error(e), _detail(e))

    def _requeue_if_preempted(self, handle: Handle, att: _Attempt, exc: BaseException) -> bool:
        """A stage that stopped itself (or failed while stopping) after a preemption is requeued."""
        if att.job_id is None or self.scheduler is None:
            return False
        view = self.scheduler.poll([att.job_id]).get(att.job_id)
        if view is None or view["state"] != "preempting":
            return False  # raised StagePreempted without being preempted: a failure
        reason = f"{att.reason or view.get('reason', '')}; stopped: {short_error(exc)}"
        self._requeue(handle, att, StageStatus.PREEMPTED, reason)
        return True

    def _requeue_if_lost(self, handle: Handle, att: _Attempt) -> bool:
        """After a system error, ask the scheduler whether the grant's node died."""
        if att.job_id is None or self.scheduler is None:
            return False
        view = self.scheduler.refresh([att.job_id], wait_s=10.0).get(att.job_id)
        if view is None or view["state"] != "lost":
            return False
        self.running[handle] = att
        self._requeue(handle, att, StageStatus.LOST, view.get("reason", ""))
        return True

    def _cancel_running(self, reason: str) -> None:
        for handle, att in list(self.running.items()):
            try:
                self.backend.cancel(handle)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass
            self.meta.fail_stage(att.stage_run_id, StageStatus.INTERRUPTED, reason)
            stage_logs.note_killed(self.artifacts.root, self.run_id, att.stage, att.attempt, reason)
        for att in self.pending.values():
            self.meta.fail_stage(att.stage_run_id, StageStatus.INTERRUPTED, reason)
        if self.scheduler is not None:
            jobs = [a.job_id for a in [*self.running.values(), *self.pending.values()] if a.job_id]
            if jobs:
                try:
                    self.backend.result(self.scheduler.release(jobs), timeout_s=5.0)
                except Exception:  # noqa: BLE001 - the lease reaper frees them otherwise
                    pass
        self.running.clear()
        self.pending.clear()

    def _reuse_finished(self) -> None:
        """On resume: the stages that finished earlier in this run are done, with their outputs."""
        for name, rec in self.reuse.items():
            if name not in self.state:
                continue
            self.outputs[name] = self.meta.io_of(rec.id, "out")
            if rec.cache_key:
                self.keys[name] = rec.cache_key
            self.state[name] = StageStatus.REUSED
            inputs = {k: r for k, r in self.meta.io_of(rec.id, "in").items() if r.format != "source"}
            cached = rec.status == StageStatus.CACHED
            note = self._after_success(name, rec.id, inputs, self.outputs[name], cached=cached)
            msg = f"finished earlier in this run (stage run {rec.id})" + (f"; {note}" if note else "")
            self._emit(name, StageEventKind.REUSED, message=msg)

    def execute(self) -> RunResult:
        started = self.backend.now()
        self._reuse_finished()
        try:
            while True:
                why = take_stop_request()
                if why is not None:
                    raise RunStopped(why)
                while self._schedule_ready():
                    pass
                if self.running or self.pending:
                    self._collect()
                    self._check_waits()
                elif any(s == StageStatus.WAITING for s in self.state.values()):
                    self.backend.sleep(self._wait_timeout() or 0.01)
                else:
                    break
        except BaseException as e:
            stopped = isinstance(e, (KeyboardInterrupt, RunStopped))
            why = ("stopped: " + (str(e) or "Ctrl-C")) if stopped else f"driver interrupted: {type(e).__name__}"
            self._cancel_running(why)
            self.meta.finish_run(self.run_id, RunStatus.STOPPED if stopped else RunStatus.INTERRUPTED, why)
            raise
        ok = all(s in DONE_STATES for s in self.state.values())
        status = RunStatus.SUCCEEDED if ok else RunStatus.FAILED
        summary = "; ".join(f"{s}: {m}" for s, m in self.errors.items()) or None
        self.meta.finish_run(self.run_id, status, summary)
        wall_s = self.backend.now() - started
        return RunResult(self.run_id, status, dict(self.state), dict(self.errors), wall_s, dict(self.outputs))


def _ago(seconds: float) -> str:
    """``95`` -> ``1m35s``."""
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _detail(exc: BaseException) -> str:
    """What ``stage_runs.error`` records: the clean message, the failure's category, the traceback."""
    return failures.record(exc)
