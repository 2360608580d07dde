"""The platform config: who may use a shared cluster and how its scheduler runs, owned by admins.

``raypipe admin apply platform.yaml`` stores it, versioned, in the metadata store
(:mod:`raypipe.store.platform`); :mod:`raypipe.identity` maps a caller's token to one of its
``users``; the driver checks every pipeline against its ``teams`` and pushes its
``scheduler`` part to the cluster's scheduler.  While one is stored, a pipeline's
``scheduler:`` section may only choose ``enabled`` and a default ``team``; its stages a
``team`` and a ``priority`` in that team's range.

Only SHA-256 hashes of tokens are kept here (``raypipe admin token`` mints a token and prints
its hash), never a token.

```yaml
kind: platform
users:
  alice: {token_sha256: 5e88...42, teams: [research], admin: true}
  bob:   {token_sha256: 9f86...08, teams: [research, serving]}
teams:
  research: {gpu: 8, cpu: 64, min_priority: 0, max_priority: 10, weight: 2}
  default:  {gpu: 0, cpu: 8}            # everyone's team; without this entry: no quota
scheduler: {policy: fair_share, lease_s: 60}
notify:                                  # pipelines without their own `notify:` use this
  - webhook: {url: "${env:SLACK_WEBHOOK_URL}", format: slack}
    events: [run_failed, gate_failed, rollout_rolled_back, stage_waiting]
```
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from raypipe.config.notify import NotifySink
from raypipe.config.schema import _NAME_RE, AutoscalerConfig, NodeTypeConfig, StrictModel, TeamConfig

__all__ = [
    "DEFAULT_TEAM",
    "PlatformConfig",
    "PlatformScheduler",
    "PlatformTeam",
    "PlatformUser",
    "is_platform_document",
]

#: The team every user belongs to; known even when ``teams`` does not define it (then without
#: a quota, priorities 0..0).
DEFAULT_TEAM = "default"

Name = Annotated[str, Field(pattern=_NAME_RE, max_length=128)]


class PlatformUser(StrictModel):
    """A user: the SHA-256 (hex) of its token, its teams (besides ``default``), and whether it
    is an admin (applies platform configs; releases, requeues and cancels anyone's jobs; runs as
    any team)."""

    #: The SHA-256 (64 hex digits) of the user's token (`raypipe admin token` prints it); never the token.
    token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    #: The teams whose stages the user may run (besides `default`, everyone's); names from `teams`.
    teams: list[Name] = Field(default_factory=list)
    #: Applies platform configs; releases, requeues and cancels anyone's jobs; runs stages as any team.
    admin: bool = False


class PlatformTeam(TeamConfig):
    """A team: its quota (``cpu``, ``gpu``, ``memory_mb``, ``custom``; unset kinds are
    unlimited), the priority bonus and fair-share ``weight`` the scheduler's policies use, and
    the range of stage ``priority`` values its members may ask for."""

    #: The lowest stage `priority` a member may ask for.
    min_priority: int = 0
    #: The highest stage `priority` a member may ask for.
    max_priority: int = 0

    @model_validator(mode="after")
    def _range(self) -> PlatformTeam:
        if self.min_priority > self.max_priority:
            raise ValueError(f"min_priority {self.min_priority} is above max_priority {self.max_priority}")
        return self


class PlatformScheduler(StrictModel):
    """The cluster's scheduler: its policy (``fifo``, ``priority``, ``backfill``, ``fair_share``,
    ``las``) and the policy's arguments (``preempt``, ``aging_s``, ``max_preemptions``...), the
    lease a driver's jobs outlive it by, and the cluster's maximum shape under an autoscaler."""

    #: `fifo`, `priority`, `backfill`, `fair_share` or `las`.
    policy: str = "fifo"
    #: Keyword arguments of the policy (`preempt`, `aging_s`, `max_preemptions`...).
    policy_args: dict[str, Any] = Field(default_factory=dict)
    #: A job whose driver stops polling for this long is released (at least 5 s: a driver polls
    #: about every second).
    lease_s: Annotated[float, Field(ge=5)] = 30.0
    #: The cluster's maximum shape, when an autoscaler can add nodes (a `cluster_config` file is
    #: read when the config is applied: the stored config holds its node types).
    autoscaler: AutoscalerConfig | None = None
    #: Placement for every policy: strict, prefer or none (see Scheduling, Placement).
    consolidation: Literal["strict", "prefer", "none"] = "none"
    #: first_fit, best_fit, least_fragmenting or fgd (see Scheduling, Placement).
    node_choice: Literal["first_fit", "best_fit", "least_fragmenting", "fgd"] = "best_fit"


class PlatformConfig(StrictModel):
    """A platform config (``raypipe admin apply FILE``).  ``kind: platform`` tells ``raypipe
    validate`` it is not a pipeline.  No ``users``: one user (the OS user, an admin); with
    users, every command that changes something needs a token (``$RAYPIPE_TOKEN`` or the token
    file) whose SHA-256 is one of theirs."""

    #: `platform`: tells `raypipe validate` this file is a platform config.
    kind: Literal["platform"] = "platform"
    #: Free text, shown by `raypipe admin show`.
    description: str = ""
    #: User name -> token hash, teams, admin. None: one user, the OS user, an admin.
    users: dict[Name, PlatformUser] = Field(default_factory=dict)
    #: Team name -> quota, priority range, priority bonus, fair-share weight. `default` (everyone's
    #: team) is known without an entry: then with no quota and priorities 0..0.
    teams: dict[Name, PlatformTeam] = Field(default_factory=dict)
    #: The cluster's scheduler: policy, its arguments, lease, autoscaler.
    scheduler: PlatformScheduler = Field(default_factory=PlatformScheduler)
    #: The admins' default receivers (webhooks, mail) and their events, for every pipeline and
    #: served app that names no `notify` of its own (see Notifications).
    notify: list[NotifySink] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> PlatformConfig:
        problems = self.problems()
        if problems:
            raise ValidationError.from_exception_data(
                "PlatformConfig",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", "{message}", {"message": msg}), loc=loc, input=None
                    )
                    for loc, msg in problems
                ],
            )
        return self

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What is inconsistent across fields: a user's unknown team, a token shared by two
        users, users without an admin."""
        known = self.team_names()
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: dict[str, str] = {}
        for name, user in self.users.items():
            for i, team in enumerate(user.teams):
                if team not in known:
                    msg = f"team {team!r} is not in teams; known teams: {', '.join(known)}"
                    problems.append((("users", name, "teams", i), msg))
            if user.token_sha256 in seen:
                msg = f"the same token as user {seen[user.token_sha256]!r}: every user needs a token of its own"
                problems.append((("users", name, "token_sha256"), msg))
            seen.setdefault(user.token_sha256, name)
        if self.users and not any(u.admin for u in self.users.values()):
            problems.append((("users",), "no user is an admin (admin: true): nobody could change this config again"))
        return problems

    def team_names(self) -> list[str]:
        """The known teams: ``teams`` and ``default``."""
        return sorted({*self.teams, DEFAULT_TEAM})

    def team(self, name: str) -> PlatformTeam | None:
        """A known team (``default`` as configured, else with no quota and priorities 0..0), or None."""
        if name in self.teams:
            return self.teams[name]
        return PlatformTeam() if name == DEFAULT_TEAM else None

    def admins(self) -> list[str] | None:
        """The admins' names; None when no users are configured (then every caller is one)."""
        return sorted(n for n, u in self.users.items() if u.admin) if self.users else None

    def self_contained(self) -> PlatformConfig:
        """This config with an autoscaler's ``cluster_config`` file read into ``node_types``:
        what is stored, so every driver pushes the same shape wherever it runs."""
        auto = self.scheduler.autoscaler
        if auto is None or auto.cluster_config is None:
            return self
        shape = auto.shape()
        types = {n: NodeTypeConfig.model_validate(t) for n, t in shape["node_types"].items()}
        fixed = AutoscalerConfig(node_types=types, max_workers=shape["max_workers"])
        return self.model_copy(update={"scheduler": self.scheduler.model_copy(update={"autoscaler": fixed})})

    def settings(self, version: int) -> dict[str, Any]:
        """The scheduler controller's settings from version ``version`` of this config (see
        ``raypipe.scheduler.controller.SchedulerSettings``): what the controller keeps."""
        sched = self.scheduler
        ranges = {"min_priority", "max_priority"}
        return {
            "policy": sched.policy,
            "policy_args": dict(sched.policy_args),
            "teams": {n: t.model_dump(exclude_none=True, exclude=ranges) for n, t in self.teams.items()},
            "lease_s": sched.lease_s,
            "autoscaler": sched.autoscaler.shape() if sched.autoscaler is not None else None,
            "consolidation": sched.consolidation,
            "node_choice": sched.node_choice,
            "version": version,
            "admins": self.admins(),
        }


def is_platform_document(data: Any) -> bool:
    """A YAML document that is a platform config: ``kind: platform``, or (no ``stages``) a
    ``users`` or ``teams`` mapping at the top."""
    if not isinstance(data, dict):
        return False
    if data.get("kind") == "platform":
        return True
    return "stages" not in data and "name" not in data and bool({"users", "teams"} & set(data))
