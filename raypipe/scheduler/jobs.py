"""The live controller's jobs: their states, their persisted form and the view owners see.

Lifecycle of a job (one stage attempt, or one gang):

``submit`` -> ``QUEUED`` (or ``REJECTED`` with the reason it can never fit) ->
the policy starts it: ``RUNNING`` (it holds a grant) -> ``release`` ->
``DONE``.  The policy may preempt: the job becomes ``PREEMPTING`` (resources
still held) until its owner stops the work and requeues it; a job on a node
that died becomes ``LOST`` (grant removed) and its owner requeues it.

Pure: no Ray, no clock.  :class:`Job` is the controller's mutable record,
:class:`JobView` the immutable snapshot of it that owners, ``raypipe queue``
and the live replay read; its :meth:`JobView.to_dict` is the form that crosses
the controller actor's boundary and ``raypipe queue --json`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from raypipe.resources import Resources
from raypipe.scheduler.types import JobRequest, StrEnum, freeze_labels


class JobState(StrEnum):
    """Where a job is in its lifecycle (the values are the strings views and persisted jobs carry)."""

    QUEUED = "queued"
    RUNNING = "running"
    PREEMPTING = "preempting"
    LOST = "lost"
    DONE = "done"
    REJECTED = "rejected"

    @property
    def active(self) -> bool:
        """The job is not over: queued, holding a grant, or waiting for its owner to requeue it."""
        return self in _ACTIVE

    @property
    def holds_grant(self) -> bool:
        """Its grant's capacity is held (``RUNNING``, or ``PREEMPTING`` until the owner stops)."""
        return self is JobState.RUNNING or self is JobState.PREEMPTING

    @property
    def finished(self) -> bool:
        """``DONE`` or ``REJECTED``: kept for a while so owners and ``raypipe queue`` see the end."""
        return self is JobState.DONE or self is JobState.REJECTED


_ACTIVE = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.PREEMPTING, JobState.LOST})
#: ``raypipe queue`` lists jobs in this order of states.
QUEUE_ORDER: tuple[JobState, ...] = (
    JobState.RUNNING,
    JobState.PREEMPTING,
    JobState.LOST,
    JobState.QUEUED,
    JobState.REJECTED,
    JobState.DONE,
)


class Grant(StrEnum):
    """What a running job holds."""

    #: A placement group the owner runs its work inside.
    PG = "pg"
    #: No group: the capacity on the granted nodes is reserved in the controller's
    #: books for a library (Ray Train, Tune) that makes its own groups, pinned there.
    LEDGER = "ledger"


def request_to_dict(r: JobRequest) -> dict[str, Any]:
    """The JSON form of a request (what ``submit`` takes and the controller persists)."""
    return {
        "job_id": r.job_id,
        "bundles": [b.to_dict() for b in r.bundles],
        "submit_time": r.submit_time,
        "strategy": r.strategy,
        "priority": r.priority,
        "team": r.team,
        "duration_estimate_s": r.duration_estimate_s,
        "preemptible": r.preemptible,
        "label_selector": dict(r.label_selector),
        "attained_service": r.attained_service,
        "enqueue_time": r.enqueue_time,
        "last_run_s": r.last_run_s,
    }


def request_from_dict(d: Mapping[str, Any]) -> JobRequest:
    """Inverse of :func:`request_to_dict` (missing optional fields take their defaults)."""
    return JobRequest(
        job_id=d["job_id"],
        bundles=tuple(Resources.from_dict(b) for b in d["bundles"]),
        submit_time=float(d.get("submit_time", 0.0)),
        strategy=d.get("strategy", "PACK"),
        priority=int(d.get("priority", 0)),
        team=d.get("team", "default"),
        duration_estimate_s=d.get("duration_estimate_s"),
        preemptible=bool(d.get("preemptible", True)),
        label_selector=freeze_labels(d.get("label_selector") or {}),
        attained_service=float(d.get("attained_service", 0.0)),
        enqueue_time=d.get("enqueue_time"),
        last_run_s=float(d.get("last_run_s", 0.0)),
    )


#: The keys of a job view's dict form, in order.
VIEW_KEYS: tuple[str, ...] = (
    "job_id",
    "state",
    "owner",
    "team",
    "priority",
    "demand",
    "bundles",
    "pg_id",
    "nodes",
    "submit_time",
    "start_time",
    "preemptions",
    "reason",
    "version",
    "grant",
    "scale_up",
    "principal",
)


@dataclass(frozen=True, slots=True)
class JobView(Mapping[str, Any]):
    """What owners and ``raypipe queue`` see of a job, at one version.

    Read the attributes.  The view is also a read-only mapping with the keys
    and values of :meth:`to_dict` (``view["state"] == "running"``), for code
    that reads the dict form the controller actor returns; :meth:`from_dict`
    turns that form back into a view.

    ``demand`` is the human form of the gang's total (``{CPU: 1, GPU: 4}``
    style), ``bundles`` the gang's size, ``nodes`` the node of each bundle
    once granted, ``version`` a counter bumped by every state change (owners
    watch it), ``scale_up`` whether the job waits for nodes the autoscaler can
    add, ``principal`` the user who submitted it (None: not said).
    """

    job_id: str
    state: JobState
    owner: str
    team: str
    priority: int
    demand: str
    bundles: int
    pg_id: str | None
    nodes: tuple[str, ...]
    submit_time: float
    start_time: float | None
    preemptions: int
    reason: str
    version: int
    grant: Grant
    scale_up: bool
    principal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plain strings, lists): what the controller actor returns."""
        return {
            "job_id": self.job_id,
            "state": self.state.value,
            "owner": self.owner,
            "team": self.team,
            "priority": self.priority,
            "demand": self.demand,
            "bundles": self.bundles,
            "pg_id": self.pg_id,
            "nodes": list(self.nodes),
            "submit_time": self.submit_time,
            "start_time": self.start_time,
            "preemptions": self.preemptions,
            "reason": self.reason,
            "version": self.version,
            "grant": self.grant.value,
            "scale_up": self.scale_up,
            "principal": self.principal,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobView:
        """A view from its dict form (a ``JobView`` is returned as it is)."""
        if isinstance(d, JobView):
            return d
        return cls(
            job_id=str(d["job_id"]),
            state=JobState(d["state"]),
            owner=str(d["owner"]),
            team=str(d["team"]),
            priority=int(d["priority"]),
            demand=str(d["demand"]),
            bundles=int(d["bundles"]),
            pg_id=d.get("pg_id"),
            nodes=tuple(d.get("nodes") or ()),
            submit_time=float(d["submit_time"]),
            start_time=d.get("start_time"),
            preemptions=int(d.get("preemptions", 0)),
            reason=str(d.get("reason", "")),
            version=int(d["version"]),
            grant=Grant(d.get("grant", Grant.PG)),
            scale_up=bool(d.get("scale_up", False)),
            principal=d.get("principal"),
        )

    # The read-only mapping over the dict form.
    def __getitem__(self, key: str) -> Any:
        if key not in VIEW_KEYS:
            raise KeyError(key)
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(VIEW_KEYS)

    def __len__(self) -> int:
        return len(VIEW_KEYS)


@dataclass
class Job:
    """The controller's record of a job (mutable; persisted as :meth:`to_dict`)."""

    request: JobRequest
    owner: str
    state: JobState = JobState.QUEUED
    placement: tuple[str, ...] | None = None
    pg_id: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    borrowed: bool = False
    preemptions: int = 0
    last_seen: float = 0.0
    reason: str = ""
    version: int = 0
    grant: Grant = Grant.PG
    #: Waits for nodes the autoscaler can add: its bundles are in the controller's
    #: ``request_resources`` until it starts (or leaves the queue).
    scale_up: bool = False
    #: The user who submitted it (``release``, ``requeue`` and ``cancel`` by a person check it).
    principal: str | None = None

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": request_to_dict(self.request),
            "owner": self.owner,
            "state": self.state.value,
            "placement": list(self.placement) if self.placement else None,
            "pg_id": self.pg_id,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "borrowed": self.borrowed,
            "preemptions": self.preemptions,
            "last_seen": self.last_seen,
            "reason": self.reason,
            "version": self.version,
            "grant": self.grant.value,
            "scale_up": self.scale_up,
            "principal": self.principal,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        return cls(
            request=request_from_dict(d["request"]),
            owner=d["owner"],
            state=JobState(d["state"]),
            placement=tuple(d["placement"]) if d.get("placement") else None,
            pg_id=d.get("pg_id"),
            start_time=d.get("start_time"),
            end_time=d.get("end_time"),
            borrowed=bool(d.get("borrowed")),
            preemptions=int(d.get("preemptions", 0)),
            last_seen=float(d.get("last_seen", 0.0)),
            reason=d.get("reason", ""),
            version=int(d.get("version", 0)),
            grant=Grant(d.get("grant", Grant.PG)),
            scale_up=bool(d.get("scale_up", False)),
            principal=d.get("principal"),
        )

    def view(self) -> JobView:
        """What owners and ``raypipe queue`` see of the job now."""
        r = self.request
        return JobView(
            job_id=self.job_id,
            state=self.state,
            owner=self.owner,
            team=r.team,
            priority=r.priority,
            demand=str(r.demand),
            bundles=len(r.bundles),
            pg_id=self.pg_id,
            nodes=self.placement or (),
            submit_time=r.submit_time,
            start_time=self.start_time,
            preemptions=self.preemptions,
            reason=self.reason,
            version=self.version,
            grant=self.grant,
            scale_up=self.scale_up,
            principal=self.principal,
        )


_RUN_ID = re.compile(r"^(?P<pipeline>.+?)-\d{8}-\d{6}-[0-9a-f]+$")


def job_label(job: Job) -> str:
    """A job for people: ``serving app NAME`` for a serving reservation, ``PIPELINE/STAGE``
    for a stage attempt (job ids ``RUN_ID:STAGE:ATTEMPT:HEX``), else its id."""
    if job.owner.startswith("serve:"):
        return f"serving app {job.owner[len('serve:') :]}"
    parts = job.job_id.split(":")
    if len(parts) >= 4:
        run, stage = ":".join(parts[:-3]), parts[-3]
        m = _RUN_ID.match(run)
        return f"{m.group('pipeline') if m else run}/{stage}"
    return job.job_id
