"""The scheduler's Prometheus metrics, exported by the controller actor.

:class:`SchedulerExporter` looks at the controller's jobs after every change
(:meth:`~raypipe.scheduler.actor.ControllerActor`'s ``_notify``) and records, by team: the
queue's length, the jobs running, the resources they hold against the team's quota, the
wait from (re)queueing to the grant (a histogram), grants by kind, preemptions and
rejections.  It reads the core's jobs and settings only; the core stays pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raypipe._ray.metrics import SECONDS_BUCKETS, MetricSpec, Registry
from raypipe.scheduler.jobs import Job, JobState

#: Resources shown per team (a quota's keys).
RESOURCES = ("cpu", "gpu", "memory_mb")

SCHEDULER_METRICS = (
    MetricSpec("raypipe_scheduler_queue_length", "gauge", "Jobs waiting for a grant.", ("team",)),
    MetricSpec("raypipe_scheduler_running_jobs", "gauge", "Jobs holding a grant (running or preempting).", ("team",)),
    MetricSpec(
        "raypipe_scheduler_allocated", "gauge", "Resources granted to the team's running jobs.", ("team", "resource")
    ),
    MetricSpec(
        "raypipe_scheduler_quota", "gauge", "The team's quota (teams without one: absent).", ("team", "resource")
    ),
    MetricSpec(
        "raypipe_scheduler_wait_seconds",
        "histogram",
        "Seconds from a job's (re)queueing to its grant.",
        ("team",),
        (0.1, 0.5, *SECONDS_BUCKETS),
    ),
    MetricSpec("raypipe_scheduler_grants_total", "counter", "Grants made.", ("team", "grant")),
    MetricSpec("raypipe_scheduler_preemptions_total", "counter", "Jobs preempted.", ("team",)),
    MetricSpec("raypipe_scheduler_rejections_total", "counter", "Jobs rejected: they can never fit.", ("team",)),
)


class SchedulerExporter:
    """Turns the controller's jobs, seen after each change, into metrics."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry(SCHEDULER_METRICS)
        #: job id -> (start time of its last grant seen, preemptions seen, state seen)
        self._seen: dict[str, tuple[float | None, int, JobState]] = {}
        self._teams: set[str] = set()

    def prime(self, jobs: Mapping[str, Job]) -> None:
        """Take ``jobs`` as seen (a restarted controller's restored jobs: their grants were counted)."""
        self._seen = {jid: (j.start_time, j.preemptions, j.state) for jid, j in jobs.items()}

    def observe(self, jobs: Mapping[str, Job], teams: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Record what changed since the last call.  ``teams``: the settings' teams (quotas)."""
        r = self.registry
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        held: dict[tuple[str, str], float] = {}
        seen: dict[str, tuple[float | None, int, JobState]] = {}
        for job_id, job in jobs.items():
            team = job.request.team
            self._teams.add(team)
            before = self._seen.get(job_id)
            start, preempted, state = before if before is not None else (None, 0, None)
            if job.start_time is not None and job.start_time != start and job.state.holds_grant:
                wait = max(0.0, job.start_time - job.request.wait_start)
                r.observe("raypipe_scheduler_wait_seconds", wait, team=team)
                r.inc("raypipe_scheduler_grants_total", team=team, grant=job.grant.value)
            if job.preemptions > preempted:
                r.inc("raypipe_scheduler_preemptions_total", job.preemptions - preempted, team=team)
            if job.state is JobState.REJECTED and state is not JobState.REJECTED:
                r.inc("raypipe_scheduler_rejections_total", team=team)
            seen[job_id] = (job.start_time if job.state.holds_grant else start, job.preemptions, job.state)
            if job.state is JobState.QUEUED:
                queued[team] = queued.get(team, 0) + 1
            elif job.state.holds_grant:
                running[team] = running.get(team, 0) + 1
                demand = job.request.demand
                for res in RESOURCES:
                    held[(team, res)] = held.get((team, res), 0.0) + float(getattr(demand, res))
        self._seen = seen
        for team in sorted(self._teams):  # a team that had jobs reads 0 once they are gone
            r.set("raypipe_scheduler_queue_length", queued.get(team, 0), team=team)
            r.set("raypipe_scheduler_running_jobs", running.get(team, 0), team=team)
            for res in RESOURCES:
                r.set("raypipe_scheduler_allocated", held.get((team, res), 0.0), team=team, resource=res)
        for team, cfg in (teams or {}).items():
            for res in RESOURCES:
                if cfg.get(res):
                    r.set("raypipe_scheduler_quota", float(cfg[res]), team=team, resource=res)
