"""The live scheduler: a queue of jobs, the policy, and grants held as placement groups.

:class:`ControllerCore` holds all the logic and talks to Ray only through a
:class:`~raypipe.scheduler.backend.Backend` and an injected clock, so unit tests
drive it without Ray; :class:`~raypipe.scheduler.actor.ControllerActor` is the
thin asyncio Ray actor around it.  The jobs it keeps, their states and the
views owners see are in :mod:`raypipe.scheduler.jobs`.

The policy starts a queued job: a detached placement group pinned to the
chosen nodes is created (or, for a ``ledger`` grant, the capacity is booked)
and the job is ``running``; its owner launches work inside the group and
calls ``release`` at the end.  Owners poll; a job whose owner stops polling
for ``lease_s`` is released, so a killed driver leaks nothing.

With an autoscaler in the settings (the cluster's maximum shape), a job that
does not fit the cluster as it is but fits its maximum size is queued instead
of rejected: the controller asks the autoscaler for the bundles of every such
job (one ``request_resources`` with their union, re-sent when it changes and
cleared when no job needs it) until the job starts.

Every change is persisted (Ray's internal KV) before it is visible, so a
restarted controller comes back with its queue and grants, adopts the groups it
knows and removes the ones it does not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypedDict

from raypipe.resources import Resources
from raypipe.scheduler import vec
from raypipe.scheduler.autoscale import MaxShape, count_workers, format_bundles, scale_up_bundles
from raypipe.scheduler.backend import PG_PREFIX, Backend, NodeInfo
from raypipe.scheduler.blockers import Blockers
from raypipe.scheduler.fragmentation import TaskMixTracker
from raypipe.scheduler.jobs import (
    QUEUE_ORDER,
    Grant,
    Job,
    JobState,
    JobView,
    request_from_dict,
    request_to_dict,
)
from raypipe.scheduler.lifecycle import borrowing_allowed, requeued_request
from raypipe.scheduler.placement import FreeLedger, admission_block
from raypipe.scheduler.policies.registry import get_policy
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.settings import SchedulerSettings
from raypipe.scheduler.types import (
    BlockKind,
    ClusterView,
    JobRequest,
    NodeView,
    Placement,
    RunningJob,
    Snapshot,
)

__all__ = [
    "AutoscalerStats",
    "ControllerCore",
    "ControllerStats",
    "SchedulerSettings",
    "request_from_dict",
    "request_to_dict",
]

_QUEUE_RANK = {state: i for i, state in enumerate(QUEUE_ORDER)}


def _clip(r: Resources) -> Resources:
    """Negative parts to zero."""
    return vec.to_resources(vec.clip(vec.of(r)))


class AutoscalerStats(TypedDict):
    """The autoscaler part of :class:`ControllerStats`."""

    max_shape: str
    requested: str
    error: str


class ControllerStats(TypedDict):
    """``ControllerCore.stats()``: what ``raypipe queue`` prints above the jobs."""

    policy: str
    #: The platform config version in force (None: a pipeline's settings, or the defaults).
    platform_version: int | None
    decisions: int
    decision_p50_ms: float | None
    decision_p99_ms: float | None
    jobs: dict[str, int]
    nodes: int
    free: dict[str, Any]
    autoscaler: AutoscalerStats | None


class ControllerCore:
    """Queue, grants and policy; all Ray access goes through ``backend``."""

    def __init__(
        self, backend: Backend, settings: SchedulerSettings | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.settings = settings or SchedulerSettings()
        self.decisions = 0
        self.decision_s: list[float] = []
        # job id -> (request, stopping, placement, start, borrowed, its RunningJob): see _running_jobs
        self._running_kept: dict[str, tuple[Any, ...]] = {}
        self._nodes: list[NodeInfo] = []
        self._totals_kept: tuple[list[NodeInfo], ClusterView] | None = None  # see _totals
        self._external: dict[str, Resources] = {}
        self._dirty: set[str] = set()
        self._batch_depth = 0
        #: The bundles last sent to the autoscaler (``None``: nothing sent by this instance yet).
        self._requested: list[Resources] | None = None
        self.autoscale_error = ""
        self._restore()
        self._policy = self._make_policy()
        self._shape = MaxShape.from_settings(self.settings.autoscaler)
        self._placement = self.settings.placement()
        self._mix = TaskMixTracker(self._placement)

    # ---------------------------------------------------------------- persistence
    def _restore(self) -> None:
        settings_blob, job_blobs = self.backend.load_state()
        live = self.backend.live_pgs()
        if settings_blob:
            self.settings = SchedulerSettings(**json.loads(settings_blob))
        self.jobs = {jid: Job.from_dict(json.loads(b)) for jid, b in job_blobs.items()}
        now = self.clock()
        known = set()
        for job in self.jobs.values():
            job.last_seen = max(job.last_seen, now)  # owners get a full lease to reconnect
            if job.state.holds_grant and job.pg_id:
                if job.pg_id in live:
                    known.add(job.pg_id)
                else:
                    # The group vanished with the controller (it was being created): start over.
                    self._to_queue(job, "its grant was lost while the controller restarted")
        for pg_id in live - known:
            self.backend.remove_pg(pg_id)  # created but never recorded: a leak otherwise
        self._persist()

    def _persist(self) -> None:
        """Write the jobs changed since the last call (finished jobs are deleted).

        Called at the end of every operation, before its result is visible.  A
        crash between creating a placement group and persisting its job leaves
        a group nobody recorded: the restarted controller removes it and the job
        is still queued, so nothing is lost or held twice."""
        if not self._dirty or self._batch_depth:
            return
        out: dict[str, bytes | None] = {}
        for jid in self._dirty:
            job = self.jobs.get(jid)
            out[jid] = json.dumps(job.to_dict()).encode() if job is not None and job.state.active else None
        self.backend.save_jobs(out)
        self._dirty.clear()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Operations inside persist once, at the end (one write per changed job)."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            self._persist()

    def _make_policy(self) -> Policy:
        return get_policy(self.settings.policy, **self.settings.policy_args)

    def configure(self, settings: SchedulerSettings) -> bool:
        """Switch policy or teams (validated first; a bad name changes nothing).  Once a platform
        config's settings (``version``) are in force, only a newer version replaces them: a
        pipeline's, or an older version, is ignored.  Whether ``settings`` were applied."""
        have = self.settings.version
        if have is not None and (settings.version is None or settings.version <= have):
            return False
        policy = get_policy(settings.policy, **settings.policy_args)
        settings.team_configs()
        shape = MaxShape.from_settings(settings.autoscaler)
        placement = settings.placement()
        if placement != self._placement:
            self._placement, self._mix = placement, TaskMixTracker(placement)
        self.settings, self._policy, self._shape = settings, policy, shape
        self.backend.save_settings(json.dumps(settings.__dict__).encode())
        return True

    # ---------------------------------------------------------------- helpers
    def _bump(self, job: Job, state: JobState, reason: str = "") -> None:
        self._dirty.add(job.job_id)
        job.state = state
        job.reason = reason
        job.version += 1

    def _to_queue(self, job: Job, reason: str) -> None:
        now = self.clock()
        if job.pg_id:
            self.backend.remove_pg(job.pg_id)
        job.request = requeued_request(job.request, now, job.start_time or None)
        job.pg_id, job.placement, job.start_time, job.borrowed = None, None, None, False
        self._bump(job, JobState.QUEUED, reason)

    def _held(self) -> dict[str, Resources]:
        """What raypipe's grants hold, per node."""
        used: dict[str, Resources] = {}
        for job in self.jobs.values():
            if job.state.holds_grant and job.placement:
                for b, nid in zip(job.request.bundles, job.placement, strict=True):
                    used[nid] = used.get(nid, Resources()) + b
        return used

    def _cluster(self) -> ClusterView:
        used = self._held_vecs()  # the same float operations as Resources arithmetic, on vectors
        held = self._held() if used is None else {}  # a grant with custom kinds: in Resources arithmetic
        nodes = []
        for n in self._nodes:
            if used is None:
                free = _clip(n.total - held.get(n.node_id, Resources()) - self._external.get(n.node_id, Resources()))
            else:
                left = vec.sub(vec.of(n.total), used.get(n.node_id, vec.ZERO))
                e = self._external.get(n.node_id)
                free = vec.to_resources(vec.clip(left if e is None else vec.sub(left, vec.of(e))))
            nodes.append(NodeView(n.node_id, n.total, free, tuple(sorted(n.labels.items())), n.alive))
        return ClusterView(tuple(nodes))

    def _held_vecs(self) -> dict[str, vec.Vec] | None:
        """:meth:`_held` as vectors; ``None`` when a node total, a grant or work raypipe did not
        admit has a custom kind (then :meth:`_held` sums ``Resources``)."""
        if any(n.total.custom for n in self._nodes) or any(e.custom for e in self._external.values()):
            return None
        used: dict[str, vec.Vec] = {}
        for job in self.jobs.values():
            if job.state.holds_grant and job.placement:
                for b, nid in zip(job.request.bundle_vecs, job.placement, strict=True):
                    if b[3]:
                        return None
                    u = used.get(nid)
                    used[nid] = b if u is None else (u[0] + b[0], u[1] + b[1], u[2] + b[2], ())
        return used

    def _totals(self) -> ClusterView:
        """The nodes with nothing held, for checks against node totals (admission: can a job
        ever fit; the autoscaler: does it fit the cluster when empty).  Kept until the nodes are
        read again, so a submission does not sum every grant to build a view it reads totals of."""
        kept = self._totals_kept
        if kept is None or kept[0] is not self._nodes:
            nodes = tuple(
                NodeView(n.node_id, n.total, n.total, tuple(sorted(n.labels.items())), n.alive) for n in self._nodes
            )
            kept = self._totals_kept = (self._nodes, ClusterView(nodes))
        return kept[1]

    # ---------------------------------------------------------------- why jobs wait
    def blockers(self) -> Blockers:
        """Who holds each node's capacity now, to name in reasons (:class:`Blockers`)."""
        return Blockers(self._nodes, self.jobs.values(), self._external)

    def name_blockers(self, why: str) -> str:
        """A policy's reason with nodes by IP or name instead of ids, and what holds the
        capacity of the node it names (of every node when it names none)."""
        return self.blockers().name(why)

    # ---------------------------------------------------------------- API
    def submit(self, request: Mapping[str, Any], owner: str) -> JobView:
        """Queue a job; idempotent on ``job_id``.  Infeasible requests are rejected at once."""
        job_id = request["job_id"]
        if job_id in self.jobs:
            job = self.jobs[job_id]
            job.last_seen = self.clock()
            return job.view()
        now = self.clock()
        req = request_from_dict({**request, "submit_time": now, "enqueue_time": now})
        grant = request.get("grant", Grant.PG)
        if grant not in tuple(Grant):
            raise ValueError(f"job {job_id!r}: grant must be 'pg' or 'ledger', got {grant!r}")
        job = Job(request=req, owner=owner, last_seen=now, grant=Grant(grant), principal=request.get("principal"))
        if not self._nodes:
            self.refresh_nodes()
        teams = self.settings.team_configs()
        blocked = admission_block(
            req, self._totals(), teams, allow_borrowing=borrowing_allowed(self._policy), placement=self._placement
        )
        reason = None if blocked is None else blocked.text
        if blocked is not None and blocked.kind is BlockKind.NEVER_FITS and self._shape is not None:
            # Too big for the cluster as it is, within quota: does it fit the largest cluster?
            reason = self._never_at_max(req)
            if reason is None:
                job.scale_up = True
                job.reason = self._waiting_reason(req)
        if reason:
            job.state, job.reason, job.end_time = JobState.REJECTED, reason, now
        else:
            self._mix.observe(req)
        self.jobs[job_id] = job
        self._dirty.add(job_id)
        self._persist()
        return job.view()

    def release(self, job_id: str, reason: str = "") -> None:
        """The job is over (or cancelled while queued): give back what it holds."""
        job = self.jobs.get(job_id)
        if job is None or job.state.finished:
            return
        if job.pg_id:
            self.backend.remove_pg(job.pg_id)
        job.pg_id = None
        job.end_time = self.clock()
        self._bump(job, JobState.DONE, reason)
        self._persist()

    def requeue(self, job_id: str, reason: str = "") -> JobView | None:
        """The owner stopped a preempted or lost job: put it back in the queue (counted)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state in (JobState.PREEMPTING, JobState.LOST, JobState.RUNNING):
            preempted = job.state is JobState.PREEMPTING
            job.preemptions += 1 if preempted else 0
            self._to_queue(job, reason or "requeued after " + ("preemption" if preempted else "node loss"))
            self._persist()
        return job.view()

    def poll(self, job_ids: Iterable[str]) -> dict[str, JobView]:
        """Views of the owner's jobs; polling keeps their lease alive."""
        now = self.clock()
        out = {}
        for jid in job_ids:
            job = self.jobs.get(jid)
            if job is not None:
                job.last_seen = now
                out[jid] = job.view()
        return out

    def queue(self) -> list[JobView]:
        """Every active job (and recently finished ones), running first."""
        jobs = sorted(self.jobs.values(), key=lambda j: (_QUEUE_RANK[j.state], j.request.submit_time))
        return [j.view() for j in jobs]

    def stats(self) -> ControllerStats:
        """The policy, decision latencies, jobs per state, alive nodes, free capacity, autoscaler."""
        lat = sorted(self.decision_s)
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else None  # noqa: E731
        return {
            "policy": self.settings.policy,
            "platform_version": self.settings.version,
            "decisions": self.decisions,
            "decision_p50_ms": pick(0.5),
            "decision_p99_ms": pick(0.99),
            "jobs": {s.value: sum(1 for j in self.jobs.values() if j.state is s) for s in JobState},
            "nodes": len([n for n in self._nodes if n.alive]),
            "free": self._cluster().free().to_dict(),
            "autoscaler": None
            if self._shape is None
            else {
                "max_shape": self._shape.describe(),
                "requested": format_bundles(self._requested or []),
                "error": self.autoscale_error,
            },
        }

    # ---------------------------------------------------------------- the loop
    def refresh_nodes(self) -> bool:
        """Re-read the nodes; jobs on nodes that died become ``lost``.  True if anything changed."""
        nodes = self.backend.nodes()
        changed = [(n.node_id, n.alive, n.total) for n in nodes] != [(n.node_id, n.alive, n.total) for n in self._nodes]
        self._nodes = nodes
        # Work raypipe did not admit (plain Ray tasks, other frameworks) is what
        # Ray sees taken beyond raypipe's own grants.  Ledger grants whose library
        # has not made its groups yet, or groups Ray has not reported, clip to zero.
        held = self._held()
        self._external = {
            n.node_id: ext
            for n in nodes
            if n.available is not None
            and not (ext := _clip(n.total - n.available - held.get(n.node_id, Resources()))).is_zero()
        }
        alive = {n.node_id for n in nodes if n.alive}
        lost = False
        for job in self.jobs.values():
            if job.state.holds_grant and job.placement and not set(job.placement) <= alive:
                if job.pg_id:
                    self.backend.remove_pg(job.pg_id)
                job.pg_id = None
                self._bump(job, JobState.LOST, "a node of its grant died")
                lost = True
        if lost:
            self._persist()
        return changed or lost

    def reap(self) -> bool:
        """Release jobs whose owner's driver exited or stopped polling; forget old finished jobs."""
        now = self.clock()
        changed = False
        owners = {j.owner for j in self.jobs.values() if j.state.active}
        dead = self.backend.dead_drivers() if owners else set()
        for job in list(self.jobs.values()):
            driver = job.owner.rsplit("@", 1)[-1] if "@" in job.owner else None
            why = ""
            if job.state.active and driver is not None and driver in dead:
                why = f"owner {job.owner} exited"
            elif job.state.active and now - job.last_seen > self.settings.lease_s:
                why = f"owner {job.owner} stopped polling for {self.settings.lease_s:g}s"
            if why:
                if job.pg_id:
                    self.backend.remove_pg(job.pg_id)
                job.pg_id, job.end_time = None, now
                self._bump(job, JobState.DONE, why)
                changed = True
            elif job.state.finished and job.end_time and now - job.end_time > self.settings.keep_done_s:
                del self.jobs[job.job_id]
        if changed:
            self._persist()
        return changed

    def _running_jobs(self, now: float) -> tuple[RunningJob, ...]:
        """The jobs holding a grant; an unchanged job keeps its ``RunningJob`` object from the last
        decision (the policy's indexes diff running jobs by identity: new objects only cost speed)."""
        kept, out = self._running_kept, []
        self._running_kept = keep = {}
        for j in self.jobs.values():
            if not (j.state.holds_grant and j.placement):
                continue
            stopping, start = j.state is not JobState.RUNNING, j.start_time or now
            hit = kept.get(j.job_id)
            if hit is None or hit[0] is not j.request or hit[1:5] != (stopping, j.placement, start, j.borrowed):
                # A job already stopping still holds its grant, but is not a victim twice.
                req = replace(j.request, preemptible=False) if stopping else j.request
                r = RunningJob(req, Placement(j.placement), start, borrowed=j.borrowed)
                hit = (j.request, stopping, j.placement, start, j.borrowed, r)
            keep[j.job_id] = hit
            out.append(hit[5])
        return tuple(out)

    def schedule(self) -> int:
        """Run the policy once and apply its decision; returns how many jobs changed state."""
        queued = tuple(
            j.request
            for j in sorted(self.jobs.values(), key=lambda j: j.request.submit_time)
            if j.state is JobState.QUEUED
        )
        if not queued:
            self.autoscale()
            self._persist()
            return 0
        now = self.clock()
        running = self._running_jobs(now)
        preempting = {j.job_id for j in self.jobs.values() if j.state is JobState.PREEMPTING}
        teams = self.settings.team_configs()
        snap = Snapshot(now, queued, running, self._cluster(), teams, self._placement, self._mix.mix)
        t0 = time.perf_counter()
        decision = self._policy.decide(snap)
        self.decision_s.append(time.perf_counter() - t0)
        self.decision_s = self.decision_s[-2000:]
        self.decisions += 1
        n = 0
        for jid in decision.preemptions:
            job = self.jobs[jid]
            if jid not in preempting:
                self._bump(job, JobState.PREEMPTING, f"preempted by the {self.settings.policy} policy")
                n += 1
        borrowed = set(decision.borrowed)
        for jid, placement in decision.starts:
            job = self.jobs[jid]
            if job.grant is Grant.PG:
                name = f"{PG_PREFIX}{jid}-{job.version + 1}"
                job.pg_id = self.backend.create_pg(name, job.request.bundles, placement.bundle_nodes)
            job.placement, job.start_time, job.borrowed = placement.bundle_nodes, now, jid in borrowed
            self._bump(job, JobState.RUNNING)
            n += 1
        if decision.reasons:
            blockers = self.blockers()  # one index of the holders per step; a distinct reason named once
            for jid, why in decision.reasons.items():
                waiting = self.jobs.get(jid)
                if waiting is not None and waiting.state is JobState.QUEUED:
                    why = blockers.name(why)
                    if waiting.reason != why:
                        waiting.reason = why
        self.autoscale()
        self._persist()
        return n

    # ---------------------------------------------------------------- autoscaler
    def _workers(self) -> tuple[dict[str, int], int]:
        """Alive workers (nodes other than the head) per node type, and in all."""
        assert self._shape is not None
        workers = [(n.total, n.labels, n.node_type) for n in self._nodes if n.alive and not n.head]
        return count_workers(self._shape, workers), len(workers)

    def _never_at_max(self, request: JobRequest) -> str | None:
        """Why ``request`` cannot fit even the largest cluster the autoscaler allows (``None``: it fits)."""
        assert self._shape is not None
        by_type, workers = self._workers()
        return self._shape.never_reason(request, self._cluster(), by_type, workers)

    def _waiting_reason(self, request: JobRequest) -> str:
        why = f"waiting for the autoscaler: requested {format_bundles(scale_up_bundles(request))}"
        return why + (f" (the last request failed: {self.autoscale_error})" if self.autoscale_error else "")

    def autoscale(self) -> None:
        """Keep the autoscaler's request equal to what the queue needs.

        A queued job that does not fit the cluster as it is (even empty) but
        fits its maximum shape is marked ``scale_up`` and says so in its
        reason; once it fits, a marked job keeps its bundles in the request
        until it leaves the queue, so the nodes that came for it are not scaled
        down before it starts.  (One that fits neither stays queued with the
        policy's reason, as without an autoscaler: it was admitted when it
        fitted, and a node died since.)  The union of the marked jobs' bundles is sent when it changes
        (each request replaces the last; an empty one clears it) and once by a
        new controller instance.  Without an autoscaler in the settings
        nothing is sent (a request left by earlier settings is cleared once).
        """
        if self._shape is None:
            for job in self.jobs.values():
                if job.scale_up:
                    job.scale_up = False
                    self._dirty.add(job.job_id)
            if self._requested:
                self._send([], [])
            return
        totals: FreeLedger | None = None
        at_max: dict[str, str | None] = {}
        bundles: list[Resources] = []
        selectors: list[dict[str, str]] = []
        waiting: list[Job] = []
        for job in sorted(self.jobs.values(), key=lambda j: j.request.submit_time):
            if job.state is not JobState.QUEUED:
                if job.scale_up:
                    job.scale_up = False
                    self._dirty.add(job.job_id)
                continue
            req = job.request
            if totals is None:
                totals = FreeLedger.from_cluster(self._totals(), use_total=True, placement=self._placement)
            fits_now = totals.place(req) is not None
            if not fits_now:
                key = req.shape_key
                if key not in at_max:
                    at_max[key] = self._never_at_max(req)
                if job.scale_up != (at_max[key] is None):  # e.g. the maximum shape changed
                    job.scale_up = at_max[key] is None
                    self._dirty.add(job.job_id)
            if job.scale_up:
                wanted = scale_up_bundles(req)
                bundles += wanted
                selectors += [dict(req.label_selector)] * len(wanted)
                if not fits_now:
                    waiting.append(job)
        if bundles != self._requested:
            self._send(bundles, selectors)
        for job in waiting:
            job.reason = self._waiting_reason(job.request)

    def _send(self, bundles: list[Resources], selectors: list[dict[str, str]]) -> None:
        try:
            self.backend.request_resources(bundles, selectors)
        except Exception as e:  # noqa: BLE001 - retried on the next tick; the queue shows it
            self.autoscale_error = f"{type(e).__name__}: {e}"
            return
        self.autoscale_error = ""
        self._requested = bundles

    def step(self) -> int:
        """One tick: nodes, leases, policy."""
        with self.batch():
            self.refresh_nodes()
            self.reap()
            return self.schedule()
