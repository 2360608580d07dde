"""Live replay of a trace through the real scheduler controller on a fake-GPU Ray cluster.

The same jobs the simulator replays are submitted, time-scaled, to the live
controller (the actor every pipeline uses) on a local multi-node
``ray.cluster_utils.Cluster`` whose nodes declare the cluster's GPUs as logical
resources.  A granted job is real Ray work: one call per granted node on an
asyncio holder actor pinned to that node, which lasts the job's remaining run
time / ``time_scale``.  Grants are ``ledger`` grants (capacity booked in the
controller, work pinned to the granted nodes), as single-bundle pipeline stages
get: creating a placement group per job would add Ray's own ~1 s rescheduling
delay on a full node to every start, which at one trace hour per second is an
hour of trace time.

:func:`replay_plain_ray` is the baseline without raypipe: each job becomes a
plain Ray placement group created at its arrival, held for its run time once
ready, then removed.

Every time is converted back to trace seconds (``(wall - start) * time_scale``)
so the records compare with the simulator's.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE, SchedulerClient, get_controller
from raypipe.scheduler.cluster_spec import ClusterSpec
from raypipe.scheduler.jobs import JobState, JobView, request_to_dict
from raypipe.scheduler.metrics import JobRecord, ReplayResult
from raypipe.scheduler.placement import feasible_ever
from raypipe.scheduler.placement_settings import DEFAULT_PLACEMENT, SpreadSlowdown
from raypipe.scheduler.policies.registry import get_policy
from raypipe.scheduler.simulator import SimOptions, job_request
from raypipe.scheduler.traces import Trace
from raypipe.scheduler.types import ClusterView, TeamConfig

#: More Ray nodes than this on one machine is refused (each is a raylet process).
MAX_LIVE_NODES = 12
#: Policy arguments measured in (trace) seconds, scaled to wall seconds live.
_TIME_ARGS = {"aging_s", "thresholds"}


class LiveReplayError(RaypipeError):
    """The live replay cannot run as asked (cluster too big for this machine, bad scale...)."""


class _Holder:
    """Holds grants on one node: ``hold`` sleeps, and is cancelled on preemption."""

    async def hold(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return time.time()

    def ping(self) -> bool:
        return True


@dataclass
class _Live:
    job_idx: int
    remaining_s: float  # trace seconds of work left at full speed
    version: int = -1
    state: str = "queued"
    run_start: float | None = None  # wall time the current run started
    refs: list[Any] = field(default_factory=list)
    slow: float = 1.0
    runs: list[tuple[float, float]] = field(default_factory=list)
    preemptions: int = 0
    first_start: float | None = None
    end: float | None = None
    restarts: int = 0


def _check(cluster: ClusterSpec, time_scale: float) -> None:
    if not time_scale > 0:
        raise LiveReplayError(f"--time-scale: got {time_scale}; expected trace seconds per wall second > 0")
    if cluster.num_nodes > MAX_LIVE_NODES:
        raise LiveReplayError(
            f"live replay starts one Ray node per cluster node; {cluster.num_nodes} nodes is more than "
            f"{MAX_LIVE_NODES} on this machine: give a smaller cluster (--gpus/--gpus-per-node or --cluster)"
        )


def _scaled_policy_args(policy_name: str, args: Mapping[str, Any] | None, time_scale: float) -> dict[str, Any]:
    """Time-valued policy arguments (defaults included) converted to wall seconds."""
    cls = type(get_policy(policy_name))
    out = dict(args or {})
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name not in _TIME_ARGS:
            continue
        value = out.get(name, p.default)
        if value is inspect.Parameter.empty or value is None:
            continue
        out[name] = [v / time_scale for v in value] if isinstance(value, (list, tuple)) else value / time_scale
    return out


def _teams_settings(teams: Mapping[str, TeamConfig] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, t in (teams or {}).items():
        d: dict[str, Any] = {"priority": t.priority, "weight": t.weight}
        if t.quota is not None:
            d.update(t.quota.to_dict())
        out[name] = d
    return out


class LiveCluster:
    """A local multi-node Ray shaped like ``cluster`` (one holder actor per node), for one or
    several replays: ``with LiveCluster(cluster, trace) as lc: replay_live(..., on=lc)``.
    Starting nine raylets costs seconds; replays of several policies (and the plain-Ray
    baseline) on one cluster pay it once.  Each replay gets a fresh controller."""

    def __init__(self, cluster: ClusterSpec, trace: Trace) -> None:
        import ray
        from ray.cluster_utils import Cluster
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.spec = cluster
        self.any_of = sorted({j.gpu_types for j in trace.jobs if len(j.gpu_types) > 1})
        self.rc = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
        try:
            for node in cluster.nodes(self.any_of):
                self.rc.add_node(
                    num_cpus=max(1, int(node.total.cpu)),
                    num_gpus=node.total.gpu,
                    memory=int(max(node.total.memory_mb, 1024) * 1024 * 1024),
                    labels=dict(node.labels),
                )
            ray.init(address=self.rc.address, include_dashboard=False, logging_level=logging.ERROR)
            holder_cls = ray.remote(_Holder)
            self.holders: dict[str, Any] = {}
            self.labels_of: dict[str, dict[str, str]] = {}
            for n in ray.nodes():
                if n.get("Alive") and n["NodeID"] != ray.get_runtime_context().get_node_id():
                    self.labels_of[n["NodeID"]] = dict(n.get("Labels") or {})
                    self.holders[n["NodeID"]] = holder_cls.options(
                        num_cpus=0,
                        max_concurrency=10_000,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                    ).remote()
            ray.get([h.ping.remote() for h in self.holders.values()])
        except BaseException:
            self.close()
            raise

    def fits(self, cluster: ClusterSpec, trace: Trace) -> None:
        """Refuse a replay of another cluster shape (or GPU-type mix) on this one."""
        any_of = sorted({j.gpu_types for j in trace.jobs if len(j.gpu_types) > 1})
        if cluster != self.spec or any_of != self.any_of:
            raise LiveReplayError("this live cluster was started for another cluster or trace: start a new one")

    def stop_controller(self) -> None:
        """The replay's controller gone: the next replay starts its own, with its own settings."""
        import ray

        try:
            ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        import ray

        self.stop_controller()
        ray.shutdown()
        self.rc.shutdown()

    def __enter__(self) -> LiveCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Using:
    """The cluster a replay runs on: the caller's (kept) or its own (closed at the end)."""

    def __init__(self, on: LiveCluster | None, cluster: ClusterSpec, trace: Trace) -> None:
        if on is not None:
            on.fits(cluster, trace)
        self.own = on is None
        self.lc = on if on is not None else LiveCluster(cluster, trace)

    def __enter__(self) -> LiveCluster:
        self.lc.stop_controller()  # a controller left by an earlier replay
        return self.lc

    def __exit__(self, *exc: object) -> None:
        if self.own:
            self.lc.close()
        else:
            self.lc.stop_controller()


def replay_live(
    trace: Trace,
    cluster: ClusterSpec,
    policy_name: str,
    time_scale: float,
    *,
    policy_args: Mapping[str, Any] | None = None,
    teams: Mapping[str, TeamConfig] | None = None,
    options: SimOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on: LiveCluster | None = None,
) -> ReplayResult:
    """Replay ``trace`` through the live controller running ``policy_name`` (see the module doc),
    on ``on`` (a :class:`LiveCluster` for this cluster and trace) or on a cluster of its own.

    ``time_scale`` is trace seconds per wall second.  Preempted jobs are
    requeued and resume their remaining work (plus ``options.restart_cost_s``)
    at the next grant.  The controller places with the same settings as the
    simulator (``options.placement``, else the cluster's), and a gang spread
    over several nodes runs slower by the same spread slowdown.
    """
    import ray

    _check(cluster, time_scale)
    opts = options or SimOptions()
    known = opts.durations_known if opts.durations_known is not None else trace.meta.durations_known
    placement = opts.placement or cluster.placement or DEFAULT_PLACEMENT
    slowdown = opts.spread_slowdown or cluster.spread_slowdown or SpreadSlowdown()
    with _Using(on, cluster, trace) as lc:
        holders, node_labels = lc.holders, lc.labels_of
        settings = {
            "policy": policy_name,
            "policy_args": _scaled_policy_args(policy_name, policy_args, time_scale),
            "teams": _teams_settings(teams),
            "lease_s": 3600.0,
            "consolidation": placement.consolidation,
            "node_choice": placement.node_choice,
            "task_mix": None if placement.task_mix is None else [e.model_dump() for e in placement.task_mix],
        }
        handle = get_controller(settings, tick_s=0.2)
        client = SchedulerClient(handle, owner=f"replay-{policy_name}")
        jobs = trace.jobs
        live: dict[str, _Live] = {}
        rejected: list[tuple[str, str]] = []
        finished = 0
        t0 = time.time()

        def trace_t(wall: float) -> float:
            return (wall - t0) * time_scale

        def request(i: int) -> dict[str, Any]:
            r = job_request(jobs[i], duration_known=known)
            d = request_to_dict(r)
            if r.duration_estimate_s is not None:
                d["duration_estimate_s"] = r.duration_estimate_s / time_scale
            return {**d, "grant": "ledger"}

        def start(lj: _Live, view: JobView) -> None:
            now = time.time()
            lj.run_start = now
            lj.first_start = lj.first_start if lj.first_start is not None else now
            nodes = sorted(set(view.nodes))
            lj.slow = slowdown.factor_on(node_labels.get(n, {}) for n in nodes)
            cost = opts.restart_cost_s if lj.restarts else 0.0
            seconds = (lj.remaining_s * lj.slow + cost) / time_scale
            lj.refs = [holders[n].hold.remote(seconds) for n in nodes]

        def stop(lj: _Live, *, done: bool) -> None:
            now = time.time()
            if lj.run_start is None:
                return
            lj.runs.append((lj.run_start, now))
            if not done:
                for ref in lj.refs:
                    ray.cancel(ref)
                cost = opts.restart_cost_s if lj.restarts else 0.0
                progressed = max(0.0, (now - lj.run_start) * time_scale - cost) / lj.slow
                lj.remaining_s = max(0.0, lj.remaining_s - progressed)
                lj.restarts += 1
            lj.refs, lj.run_start = [], None

        next_i = 0
        watch = None
        while next_i < len(jobs) or any(lj.state not in ("done", "rejected") for lj in live.values()):
            now = time.time()
            due = []
            while next_i < len(jobs) and jobs[next_i].submit_s / time_scale <= now - t0:
                due.append(next_i)
                next_i += 1
            if due:
                views = ray.get(handle.submit.remote([request(i) for i in due], client.owner))
                for i, raw in zip(due, views, strict=True):
                    view = JobView.from_dict(raw)
                    lj = _Live(i, jobs[i].duration_s)
                    live[jobs[i].job_id] = lj
                    if view.state is JobState.REJECTED:
                        lj.state = "rejected"
                        rejected.append((jobs[i].job_id, view.reason))
                watch = None
            active = {jid: lj.version for jid, lj in live.items() if lj.state not in ("done", "rejected")}
            running_refs = {ref: jid for jid, lj in live.items() if lj.state == "running" for ref in lj.refs}
            next_arrival = (jobs[next_i].submit_s / time_scale + t0 - time.time()) if next_i < len(jobs) else 1.0
            wait_s = max(0.0, min(next_arrival, 1.0))
            if watch is None and active:
                watch = handle.watch.remote(active, wait_s)
            ready, _ = ray.wait([*running_refs, *([watch] if watch is not None else [])], num_returns=1, timeout=wait_s)
            if running_refs:
                more, _ = ray.wait(list(running_refs), num_returns=len(running_refs), timeout=0)
                ready = list(dict.fromkeys([*ready, *more]))
            release: list[str] = []
            for ref in ready:
                if watch is not None and ref == watch:
                    watch = None
                    for jid, view in client.views(ray.get(ref)).items():
                        lj = live[jid]
                        lj.version = view.version
                        if view.state is JobState.RUNNING and lj.state != "running":
                            lj.state = "running"
                            start(lj, view)
                        elif view.state is JobState.PREEMPTING and lj.state != "done":
                            # Granted and preempted between two watches: its work never
                            # started, but the controller still waits for the requeue.
                            if lj.state == "running":
                                stop(lj, done=False)
                            lj.preemptions += 1
                            lj.state = "queued"
                            v = client.requeue(jid)
                            lj.version = v.version if v else lj.version
                        elif view.state.finished and lj.state != "done":
                            lj.state = "done"  # reaped or ended by the controller: count as unfinished
                    continue
                ended = running_refs.get(ref)
                if ended is None:
                    continue
                lj = live[ended]
                # `ready` holds every finished ref of a running job (the wait with timeout 0 above).
                if lj.state == "running" and all(r in ready for r in lj.refs):
                    stop(lj, done=True)
                    lj.end = time.time()
                    lj.state = "done"
                    release.append(ended)
                    finished += 1
                    if on_progress is not None:
                        on_progress(finished, len(jobs))
            if release:
                ray.get(client.release(release))
                watch = None
        stats = ray.get(handle.decision_latencies.remote())
        wall_s = time.time() - t0

    records = []
    unfinished = []
    for jid, lj in live.items():
        if lj.state == "rejected":
            continue
        job = jobs[lj.job_idx]
        end = trace_t(lj.end) if lj.end is not None else None
        if end is None:
            unfinished.append((jid, "ended by the controller before it finished"))
        records.append(
            JobRecord(
                job_id=jid,
                submit_s=job.submit_s,
                duration_s=job.duration_s,
                gpus=job.gpus,
                first_start_s=trace_t(lj.first_start) if lj.first_start is not None else None,
                end_s=end,
                runs=tuple((trace_t(a), trace_t(b)) for a, b in lj.runs),
                preemptions=lj.preemptions,
                team=job.team,
            )
        )
    return ReplayResult(
        policy=policy_name,
        mode="ray",
        records=tuple(records),
        total_gpus=cluster.total_gpus,
        decision_latencies_s=tuple(stats["latencies_s"]),
        decisions=int(stats["decisions"]),
        rejected=tuple(rejected),
        unfinished=tuple(unfinished),
        wall_s=wall_s,
        extra={"time_scale": time_scale, "grant": "ledger", "placement": placement.describe()},
    )


def replay_plain_ray(
    trace: Trace,
    cluster: ClusterSpec,
    time_scale: float,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    on: LiveCluster | None = None,
) -> ReplayResult:
    """The baseline without raypipe: each job is a plain Ray placement group created at its
    arrival (same bundles and GPU-type labels), held for its run time once ready, then removed.
    Ray admits groups in no particular order, with no queue, priorities or quotas."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    _check(cluster, time_scale)
    any_of = sorted({j.gpu_types for j in trace.jobs if len(j.gpu_types) > 1})
    view = ClusterView(cluster.nodes(any_of))
    jobs = trace.jobs
    with _Using(on, cluster, trace):
        t0 = time.time()
        next_i = 0
        waiting: dict[Any, tuple[int, Any]] = {}  # ready ref -> (job index, pg)
        holding: list[tuple[float, int, Any]] = []  # (wall end, job index, pg)
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        rejected: list[tuple[str, str]] = []
        while next_i < len(jobs) or waiting or holding:
            now = time.time()
            while next_i < len(jobs) and jobs[next_i].submit_s / time_scale <= now - t0:
                j = jobs[next_i]
                req = job_request(j, duration_known=False)
                selector = dict(req.label_selector)
                never = feasible_ever(req, view, {})
                if never:  # Ray would leave it pending forever
                    rejected.append((j.job_id, never))
                    next_i += 1
                    continue
                try:
                    pg = placement_group(
                        [b.to_ray_bundle() for b in req.bundles],
                        strategy="PACK",
                        bundle_label_selector=[selector] * len(req.bundles) if selector else None,
                    )
                except Exception as e:  # noqa: BLE001 - Ray refuses some shapes outright
                    rejected.append((j.job_id, str(e)))
                else:
                    waiting[pg.ready()] = (next_i, pg)
                next_i += 1
            holding.sort(key=lambda x: x[0])
            while holding and holding[0][0] <= now:
                _, i, pg = holding.pop(0)
                remove_placement_group(pg)
                ends[i] = now
                if on_progress is not None:
                    on_progress(len(ends), len(jobs))
            horizon = holding[0][0] - now if holding else 0.2
            if next_i < len(jobs):
                horizon = min(horizon, jobs[next_i].submit_s / time_scale + t0 - now)
            timeout = max(0.0, min(horizon, 0.2))
            if waiting:
                ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout)
                for ref in ready:
                    i, pg = waiting.pop(ref)
                    starts[i] = time.time()
                    holding.append((starts[i] + jobs[i].duration_s / time_scale, i, pg))
            else:
                time.sleep(timeout)
        wall_s = time.time() - t0

    def tt(w: float) -> float:
        return (w - t0) * time_scale

    records = tuple(
        JobRecord(
            job_id=jobs[i].job_id,
            submit_s=jobs[i].submit_s,
            duration_s=jobs[i].duration_s,
            gpus=jobs[i].gpus,
            first_start_s=tt(starts[i]),
            end_s=tt(ends[i]),
            runs=((tt(starts[i]), tt(ends[i])),),
            team=jobs[i].team,
        )
        for i in sorted(starts)
        if i in ends
    )
    return ReplayResult(
        policy="plain_ray",
        mode="ray",
        records=records,
        total_gpus=cluster.total_gpus,
        rejected=tuple(rejected),
        wall_s=wall_s,
        extra={"time_scale": time_scale, "baseline": "plain Ray placement groups"},
    )
