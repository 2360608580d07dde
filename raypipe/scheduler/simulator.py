"""Discrete-event scheduling simulator (pure: no Ray, never reads a clock).

It drives the scheduler's own policy objects (from the policy registry) with
the same :class:`~raypipe.scheduler.types.Snapshot`,
:class:`~raypipe.scheduler.types.ClusterView` and
:class:`~raypipe.scheduler.types.Decision` values as the live controller; only
the clock (simulated) and the cluster (a :class:`ClusterSpec`) differ.

How a trace job becomes a request (as the live replay must submit it):

* bundles: a ``single_node`` job (an Alibaba pod, or a fractional-GPU job) is
  one bundle with all its GPUs, CPUs and memory; any other job is a gang of
  one bundle per GPU (CPUs and memory split evenly), strategy ``PACK``, placed
  as the placement settings say (``SimOptions.placement``, else the cluster's
  ``placement:``, else ``none`` + ``best_fit``);
* ``label_selector`` from its GPU types (:func:`cluster_spec.gpu_type_selector`);
* ``submit_time = enqueue_time = `` its arrival; ``priority`` and ``team``
  from the trace; ``duration_estimate_s`` = its duration only when durations
  are known to the scheduler (``SimOptions.durations_known``, default: the
  trace's ``meta.durations_known``), else ``None``.

Semantics, mirroring :class:`~raypipe.scheduler.controller.ControllerCore`:

* A request that can never run on the cluster (same check as the controller's
  ``submit``) is rejected at arrival and reported, never queued.
* The queue is in submit order; running jobs are ``RunningJob(request,
  placement, start_time, borrowed=...)``; each node's ``free`` is its total
  minus what the running jobs hold.
* ``round_s == 0``: a decision after every instant at which jobs arrive or
  finish (when the queue is not empty); a decision that preempted is followed
  by another at the same instant (the live controller re-runs its policy when
  the owner requeues).  ``round_s > 0``: decisions only at multiples of
  ``round_s`` while jobs wait.
* Preemption stops a job at once and requeues it
  (:func:`~raypipe.scheduler.lifecycle.requeued_request`: attained service,
  enqueue time, last run); its remaining work resumes at its next start after
  ``restart_cost_s`` seconds.
* A gang spread over more than one node runs slower by its spread slowdown
  (:class:`~raypipe.scheduler.placement_settings.SpreadSlowdown`: by the number of
  nodes and racks it spans; ``SimOptions.spread_slowdown``, else the cluster's).
* ``node_choice: fgd`` scores nodes with the task mix given in the settings, else
  the mix of the requests admitted so far (:class:`~raypipe.scheduler.fragmentation.TaskMixTracker`).

Speed: events at the same instant are batched into one decision; the cluster
view, running tuple and queue are updated incrementally (only changed nodes get
new ``NodeView`` objects); the feasibility check is cached per request shape.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raypipe.resources import Resources
from raypipe.scheduler import vec
from raypipe.scheduler.cluster_spec import ClusterSpec, gpu_type_selector
from raypipe.scheduler.errors import SimulationError
from raypipe.scheduler.fragmentation import TaskMixTracker
from raypipe.scheduler.lifecycle import borrowing_allowed, requeued_request
from raypipe.scheduler.metrics import JobRecord, ReplayResult
from raypipe.scheduler.placement import FreeLedger, never_reason
from raypipe.scheduler.placement_settings import DEFAULT_PLACEMENT, PlacementSettings, SpreadSlowdown
from raypipe.scheduler.policies.registry import get_policy
from raypipe.scheduler.policy import Policy
from raypipe.scheduler.traces import Trace, TraceJob
from raypipe.scheduler.types import (
    ClusterView,
    Decision,
    JobRequest,
    NodeView,
    Placement,
    RunningJob,
    Snapshot,
    TeamConfig,
    freeze_labels,
)
from raypipe.scheduler.vec import Vec

__all__ = ["SimOptions", "Simulator", "job_request", "simulate"]

#: How many times a decision that preempted is repeated at the same instant.
MAX_REDECIDE = 8

ProgressFn = Callable[[int, int], None]
Timer = Callable[[], float]


class SimOptions(BaseModel):
    """Knobs of one simulation (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round_s: float = Field(default=0.0, ge=0, description="scheduling round length; 0 = event-driven")
    restart_cost_s: float = Field(default=0.0, ge=0, description="seconds lost at each restart after a preemption")
    spread_slowdown: SpreadSlowdown | None = Field(
        default=None, description="slowdown of a gang spread over several nodes (None: the cluster's, else 1)"
    )
    placement: PlacementSettings | None = Field(
        default=None, description="consolidation and node choice (None: the cluster's, else none + best_fit)"
    )
    durations_known: bool | None = Field(default=None, description="pass durations to the policy (None: the trace's)")


def _sim_options(options: SimOptions | Mapping[str, Any] | None) -> SimOptions:
    if options is None:
        return SimOptions()
    if isinstance(options, SimOptions):
        return options
    try:
        return SimOptions(**options)
    except ValidationError as e:
        raise SimulationError(
            "invalid simulation option(s): "
            + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()
            )
        ) from None


@functools.lru_cache(maxsize=4096)
def _bundles_of(gpus: float, cpus: float, memory_mb: float, single_node: bool) -> tuple[Resources, ...]:
    if single_node or gpus < 1 or gpus != int(gpus):
        return (Resources.of(cpu=cpus, gpu=gpus, memory_mb=memory_mb),)
    n = int(gpus)
    return (Resources.of(cpu=cpus / n, gpu=1.0, memory_mb=memory_mb / n),) * n


def _bundles(job: TraceJob) -> tuple[Resources, ...]:
    return _bundles_of(job.gpus, job.cpus, job.memory_mb, job.single_node)


def job_request(job: TraceJob, *, duration_known: bool) -> JobRequest:
    """The scheduler request for a trace job (see the module doc); the live replay submits the same."""
    return JobRequest(
        job_id=job.job_id,
        bundles=_bundles(job),
        submit_time=job.submit_s,
        strategy="PACK",
        priority=job.priority,
        team=job.team,
        duration_estimate_s=job.duration_s if duration_known else None,
        label_selector=freeze_labels(gpu_type_selector(job.gpu_types)),
        enqueue_time=job.submit_s,
    )


class Simulator:
    """One policy over one trace on one cluster; :meth:`run` returns a :class:`ReplayResult`.

    ``policy`` is a registry name (``policy_args`` are passed to it) or a
    :class:`Policy` instance.  ``timer`` (e.g. ``time.perf_counter``), when
    given, measures each ``decide`` call; nothing else reads wall time.
    ``on_progress(finished, total)`` is called as jobs finish.
    """

    def __init__(
        self,
        trace: Trace,
        cluster: ClusterSpec,
        policy: str | Policy,
        *,
        options: SimOptions | Mapping[str, Any] | None = None,
        policy_args: Mapping[str, Any] | None = None,
        teams: Mapping[str, TeamConfig] | None = None,
        timer: Timer | None = None,
        on_progress: ProgressFn | None = None,
    ) -> None:
        if isinstance(policy, Policy):
            if policy_args:
                raise SimulationError("policy_args apply to a policy name, not a Policy instance")
            self.policy = policy
            self.policy_name = policy.name or type(policy).__name__
        else:
            self.policy = get_policy(policy, **dict(policy_args or {}))
            self.policy_name = policy
        self.trace = trace
        self.cluster = cluster
        self.options = _sim_options(options)
        self.teams: Mapping[str, TeamConfig] = MappingProxyType(dict(teams or {}))
        self.timer = timer
        self.on_progress = on_progress
        ids = [j.job_id for j in trace.jobs]
        if len(set(ids)) != len(ids):
            raise SimulationError("the trace has duplicate job ids")
        if any(b.submit_s < a.submit_s for a, b in zip(trace.jobs, trace.jobs[1:], strict=False)):
            raise SimulationError("trace jobs must be sorted by submit time")

    # ------------------------------------------------------------------ run

    def run(self) -> ReplayResult:
        """Replay the whole trace."""
        return _Run(self).go()


def simulate(
    trace: Trace,
    cluster: ClusterSpec,
    policy: str | Policy,
    *,
    options: SimOptions | Mapping[str, Any] | None = None,
    policy_args: Mapping[str, Any] | None = None,
    teams: Mapping[str, TeamConfig] | None = None,
    timer: Timer | None = None,
    on_progress: ProgressFn | None = None,
) -> ReplayResult:
    """Replay ``trace`` on ``cluster`` under ``policy``; see :class:`Simulator`."""
    return Simulator(
        trace,
        cluster,
        policy,
        options=options,
        policy_args=policy_args,
        teams=teams,
        timer=timer,
        on_progress=on_progress,
    ).run()


class _Run:
    """The mutable state of one simulation."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        opts = sim.options
        self.jobs = sim.trace.jobs
        n = len(self.jobs)
        self.n = n
        self.known = sim.trace.meta.durations_known if opts.durations_known is None else opts.durations_known
        self.restart_cost = opts.restart_cost_s
        self.slowdown = opts.spread_slowdown or sim.cluster.spread_slowdown or SpreadSlowdown()
        self.placement = opts.placement or sim.cluster.placement or DEFAULT_PLACEMENT
        self.mix = TaskMixTracker(self.placement) if self.placement.node_choice == "fgd" else None
        self.index: dict[str, int] = {j.job_id: i for i, j in enumerate(self.jobs)}
        # per-job state
        self.request: list[JobRequest | None] = [None] * n
        self.remaining: list[float] = [j.duration_s for j in self.jobs]
        self.first_start: list[float | None] = [None] * n
        self.end: list[float | None] = [None] * n
        self.runs: list[list[tuple[float, float]]] = [[] for _ in range(n)]
        self.preemptions = [0] * n
        self.epoch = [0] * n
        self.reason: dict[str, str] = {}
        # running: job id -> (RunningJob, start, restart cost, speed); running_jobs: job id -> RunningJob
        self.running: dict[str, tuple[RunningJob, float, float, float]] = {}
        self.running_jobs: dict[str, RunningJob] = {}
        self.finish_heap: list[tuple[float, int, int, int]] = []
        self.seq = 0
        # queue: requests in (submit_time, trace index) order
        self.queue: list[JobRequest] = []
        # cluster
        sets = {j.gpu_types for j in self.jobs if len(j.gpu_types) > 1}
        nodes = sim.cluster.nodes(sorted(sets))
        self.node_ids = [nd.node_id for nd in nodes]
        self.node_total: dict[str, Vec] = {nd.node_id: vec.of(nd.total) for nd in nodes}
        self.node_view: dict[str, NodeView] = {nd.node_id: nd for nd in nodes}
        self.node_alloc: dict[str, dict[str, Vec]] = {nd.node_id: {} for nd in nodes}
        self.dirty: set[str] = set()
        self._free_of: dict[str, Vec] = {}  # free capacity by node, while its allocations stay the same
        # NodeView objects by (node, free vector): nodes keep returning to the same few states.
        self._view_cache: dict[tuple[str, Vec], NodeView] = {}
        self._cluster = ClusterView(nodes)
        self.total_gpus = sim.cluster.total_gpus
        self._total_ledger = FreeLedger(nodes, use_total=True, placement=self.placement)
        self._never: dict[tuple[str, str], str | None] = {}
        self.allow_borrowing = borrowing_allowed(sim.policy)
        self._teams = MappingProxyType(dict(sim.teams))
        # outputs
        self.rejected: list[tuple[str, str]] = []
        self.latencies: list[float] = []
        self.decisions = 0
        self.finished = 0
        self.admitted = 0
        self._progress_every = max(1, n // 200)

    # ------------------------------------------------------------ cluster state

    def _cluster_view(self) -> ClusterView:
        if self.dirty:
            changed = []
            cache = self._view_cache
            if len(cache) > 200_000:
                cache.clear()
            for nid in sorted(self.dirty):  # a fixed order: runs are reproducible across processes
                free = self._free(nid)
                key = (nid, free)
                view = cache.get(key)
                if view is None:
                    old = self.node_view[nid]
                    view = cache[key] = NodeView(nid, old.total, vec.to_resources(vec.clip(free)), old.labels, True)
                self.node_view[nid] = view
                changed.append(view)
            self.dirty.clear()
            self._cluster = self._cluster.replace_nodes(changed, handoff=True)  # the old view is done with
        return self._cluster

    def _free(self, nid: str) -> Vec:
        free = self._free_of.get(nid)
        if free is None:  # total minus the node's allocations, in allocation order (cached until they change)
            used = vec.ZERO
            for v in self.node_alloc[nid].values():
                used = vec.add(used, v)
            free = self._free_of[nid] = vec.sub(self.node_total[nid], used)
        return free

    def _allocate(self, req: JobRequest, placement: Placement) -> None:
        per: dict[str, Vec] = {}
        for b, nid in zip(req.bundle_vecs, placement.bundle_nodes, strict=True):
            per[nid] = vec.add(per[nid], b) if nid in per else b
        for nid, need in per.items():
            if nid not in self.node_alloc:
                raise SimulationError(f"policy {self.sim.policy_name} placed {req.job_id!r} on unknown node {nid!r}")
            if not vec.fits(need, self._free(nid)):
                raise SimulationError(
                    f"policy {self.sim.policy_name} over-committed node {nid!r} with {req.job_id!r} "
                    f"({vec.to_resources(need)}; free {vec.to_resources(self._free(nid))})"
                )
        for nid, need in per.items():
            self.node_alloc[nid][req.job_id] = need
            self._free_of.pop(nid, None)
            self.dirty.add(nid)

    def _release(self, req: JobRequest, placement: Placement) -> None:
        for nid in set(placement.bundle_nodes):
            self.node_alloc[nid].pop(req.job_id, None)
            self._free_of.pop(nid, None)
            self.dirty.add(nid)

    # ------------------------------------------------------------------ events

    def _never_reason(self, req: JobRequest) -> str | None:
        key = (req.shape_key, req.team)
        if key not in self._never:
            quota = self.sim.teams.get(req.team, TeamConfig()).quota
            self._never[key] = never_reason(req, self._total_ledger, quota, allow_borrowing=self.allow_borrowing)
        return self._never[key]

    def _arrive(self, i: int) -> None:
        req = job_request(self.jobs[i], duration_known=self.known)
        why = self._never_reason(req)
        if why is not None:
            self.rejected.append((req.job_id, why))
            return
        self.admitted += 1
        self.request[i] = req
        if self.mix is not None:
            self.mix.observe(req)
        q = self.queue
        if not q or (q[-1].submit_time, self.index[q[-1].job_id]) <= (req.submit_time, i):
            q.append(req)
        else:
            bisect.insort(q, req, key=self._qkey)

    def _qkey(self, r: JobRequest) -> tuple[float, int]:
        return (r.submit_time, self.index[r.job_id])

    def _start(self, jid: str, placement: Placement, now: float, borrowed: bool) -> None:
        i = self.index.get(jid)
        req = self.request[i] if i is not None else None
        if i is None or req is None or jid in self.running:
            raise SimulationError(f"policy {self.sim.policy_name} started {jid!r}, which is not queued")
        self._allocate(req, placement)
        cost = self.restart_cost if self.preemptions[i] else 0.0
        nodes = set(placement.bundle_nodes)
        speed = 1.0 / self.slowdown.factor_on(self.node_view[n].labels for n in nodes) if len(nodes) > 1 else 1.0
        rj = RunningJob(req, placement, now, borrowed=borrowed)
        self.running[jid] = (rj, now, cost, speed)
        self.running_jobs[jid] = rj
        if self.first_start[i] is None:
            self.first_start[i] = now
        self.epoch[i] += 1
        end = now + cost + self.remaining[i] / speed
        self.seq += 1
        heapq.heappush(self.finish_heap, (end, self.seq, i, self.epoch[i]))

    def _stop(self, i: int, now: float, *, finished: bool) -> None:
        jid = self.jobs[i].job_id
        rj, start, cost, speed = self.running.pop(jid)
        del self.running_jobs[jid]
        self._release(rj.request, rj.placement)
        self.runs[i].append((start, now))
        self.epoch[i] += 1
        if finished:
            self.remaining[i] = 0.0
            self.end[i] = now
            self.finished += 1
            if self.sim.on_progress is not None and (
                self.finished % self._progress_every == 0 or self.finished == self.admitted
            ):
                self.sim.on_progress(self.finished, self.n)
            return
        done = max(0.0, now - start - cost) * speed
        self.remaining[i] = max(0.0, self.remaining[i] - done)
        self.preemptions[i] += 1
        req = requeued_request(rj.request, now, start)
        self.request[i] = req
        bisect.insort(self.queue, req, key=self._qkey)

    # ---------------------------------------------------------------- decisions

    def _decide(self, now: float) -> Decision:
        snap = Snapshot.unchecked(  # ids are unique and queued xor running by construction
            now,
            tuple(self.queue),
            tuple(self.running_jobs.values()),
            self._cluster_view(),
            self._teams,
            placement=self.placement,
            task_mix=None if self.mix is None else self.mix.mix,
        )
        timer = self.sim.timer
        if timer is not None:
            t0 = timer()
            decision = self.sim.policy.decide(snap)
            self.latencies.append(timer() - t0)
        else:
            decision = self.sim.policy.decide(snap)
        self.decisions += 1
        if decision.preemptions:
            for jid in decision.preemptions:
                entry = self.running.get(jid)
                if entry is None:
                    raise SimulationError(f"policy {self.sim.policy_name} preempted {jid!r}, which is not running")
                if not entry[0].request.preemptible:
                    raise SimulationError(f"policy {self.sim.policy_name} preempted non-preemptible {jid!r}")
                self._stop(self.index[jid], now, finished=False)
        if decision.starts:
            borrowed = set(decision.borrowed)
            started = set()
            for jid, placement in decision.starts:
                self._start(jid, placement, now, jid in borrowed)
                started.add(jid)
            self.queue = [r for r in self.queue if r.job_id not in started]
        if decision.reasons:
            self.reason.update(decision.reasons)
        return decision

    # -------------------------------------------------------------------- loop

    def _next_finish(self) -> float:
        heap = self.finish_heap
        epoch = self.epoch
        while heap and heap[0][3] != epoch[heap[0][2]]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def go(self) -> ReplayResult:
        jobs = self.jobs
        n = self.n
        round_s = self.sim.options.round_s
        ptr = 0
        next_round: int | None = None
        inf = math.inf
        while True:
            t_arr = jobs[ptr].submit_s if ptr < n else inf
            t_fin = self._next_finish()
            t_round = next_round * round_s if next_round is not None else inf
            now = min(t_arr, t_fin, t_round)
            if now == inf:
                break
            heap = self.finish_heap
            while heap and heap[0][0] <= now:
                end, _, i, ep = heapq.heappop(heap)
                if ep == self.epoch[i]:
                    self._stop(i, end, finished=True)
            while ptr < n and jobs[ptr].submit_s <= now:
                self._arrive(ptr)
                ptr += 1
            if not self.queue:
                next_round = None
                continue
            started = False
            if round_s > 0:
                if next_round is None:
                    next_round = max(0, math.ceil(now / round_s - 1e-9))
                if next_round * round_s > now + 1e-9 * max(1.0, now):
                    continue
                started = bool(self._decide(now).starts)
                next_round += 1
            else:
                for _ in range(MAX_REDECIDE):
                    d = self._decide(now)
                    started = started or bool(d.starts)
                    if not d.preemptions or not self.queue:
                        break
            if self.queue and not self.running and ptr >= n and not started:
                break  # nothing runs, nothing will arrive, and the policy starts nothing: stuck
        return self._result()

    def _result(self) -> ReplayResult:
        records = []
        unfinished = []
        for i, job in enumerate(self.jobs):
            if self.request[i] is None:
                continue  # rejected
            records.append(
                JobRecord(
                    job_id=job.job_id,
                    submit_s=job.submit_s,
                    duration_s=job.duration_s,
                    gpus=job.gpus,
                    first_start_s=self.first_start[i],
                    end_s=self.end[i],
                    runs=tuple(self.runs[i]),
                    preemptions=self.preemptions[i],
                    team=job.team,
                )
            )
            if self.end[i] is None:
                unfinished.append((job.job_id, self.reason.get(job.job_id, "never started")))
        if self.sim.on_progress is not None:
            self.sim.on_progress(self.finished, self.n)
        opts = self.sim.options
        return ReplayResult(
            policy=self.sim.policy_name,
            mode="sim",
            records=tuple(records),
            total_gpus=self.total_gpus,
            decision_latencies_s=tuple(self.latencies),
            decisions=self.decisions,
            rejected=tuple(self.rejected),
            unfinished=tuple(unfinished),
            extra={
                "policy_repr": repr(self.sim.policy),
                "round_s": opts.round_s,
                "restart_cost_s": opts.restart_cost_s,
                "spread_slowdown": self.slowdown.summary(),
                "placement": self.placement.describe(),
                "durations_known": self.known,
            },
        )
