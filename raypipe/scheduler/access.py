"""Operations people ask of the controller on a job (``raypipe queue release|requeue|cancel``),
and who may ask them: the job's principal or an admin.

Pure (no Ray).  A caller is plain data, ``{"name": ..., "admin": ...}``
(:meth:`raypipe.principal.Principal.caller`).  Who is an admin is the controller's to say
once a platform config is in force (its settings' ``admins``); only on a cluster without one
(a single user, or a platform without users) does the caller's own claim count.

This guards raypipe's own commands: code that can call the controller actor (anything with
access to the Ray cluster) can call its owner API directly.  Ray access is a trust boundary
(docs/security.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from raypipe.scheduler.errors import SchedulingError
from raypipe.scheduler.jobs import JobState, JobView

if TYPE_CHECKING:
    from raypipe.scheduler.controller import ControllerCore, SchedulerSettings

__all__ = ["ACTIONS", "AccessDenied", "act", "denial", "is_admin"]

#: What a person may do to a job: give back its grant, put it back in the queue, take it out
#: of the queue.
ACTIONS = ("release", "requeue", "cancel")
_DONE = {"release": "released", "requeue": "requeued", "cancel": "cancelled"}


class AccessDenied(SchedulingError):
    """The caller is neither the job's principal nor an admin."""


def is_admin(caller: Mapping[str, Any], settings: SchedulerSettings) -> bool:
    """Whether ``caller`` is an admin: one of the platform's ``admins`` when a platform config
    with users is in force, else as the caller says."""
    if settings.version is not None and settings.admins is not None:
        return str(caller.get("name")) in settings.admins
    return bool(caller.get("admin"))


def denial(job: JobView, caller: Mapping[str, Any], settings: SchedulerSettings, action: str) -> str | None:
    """Why ``caller`` may not ``action`` ``job`` (None: it may)."""
    name = caller.get("name")
    if not name:
        return f"{action} {job.job_id}: the caller has no name"
    if is_admin(caller, settings):
        return None
    if job.principal is not None and job.principal == name:
        return None
    holder = job.principal or f"owner {job.owner}"
    return f"job {job.job_id} belongs to {holder}: only its owner or an admin may {action} it (you are {name})"


def act(core: ControllerCore, action: str, job_id: str, caller: Mapping[str, Any]) -> JobView:
    """Do ``action`` (one of :data:`ACTIONS`) to job ``job_id`` for ``caller``; its view after.

    ``release``: any active job ends (``done``), its grant given back; its driver sees it end.
    ``requeue``: a running, preempting or lost job goes back to the queue.  ``cancel``: a
    queued (or lost) job leaves the queue.  Raises :class:`AccessDenied` or a
    :class:`SchedulingError` saying why it cannot be done."""
    if action not in ACTIONS:
        raise SchedulingError(f"unknown action {action!r}; expected one of: {', '.join(ACTIONS)}")
    job = core.jobs.get(job_id)
    if job is None:
        raise SchedulingError(f"no job {job_id!r} in the scheduler's queue (`raypipe queue` lists them)")
    why = denial(job.view(), caller, core.settings, action)
    if why is not None:
        raise AccessDenied(why)
    by = f"{_DONE[action]} by {caller['name']}"
    state = job.state
    if action == "requeue":
        if state not in (JobState.RUNNING, JobState.PREEMPTING, JobState.LOST):
            raise SchedulingError(f"job {job_id} is {state.value}: only a running, preempting or lost job is requeued")
        core.requeue(job_id, by)
    elif action == "cancel":
        if state not in (JobState.QUEUED, JobState.LOST):
            hint = "; release it to give back its grant" if state.holds_grant else ""
            raise SchedulingError(f"job {job_id} is {state.value}: only a queued or lost job is cancelled{hint}")
        core.release(job_id, by)
    else:
        if not state.active:
            raise SchedulingError(f"job {job_id} is {state.value}: nothing to release")
        core.release(job_id, by)
    return core.jobs[job_id].view()
