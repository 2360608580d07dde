"""The scheduler controller's settings: what a platform config (or, on a single-user
cluster, a pipeline's ``scheduler:`` section) sets, as :class:`ControllerCore
<raypipe.scheduler.controller.ControllerCore>` keeps them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raypipe.resources import Resources
from raypipe.scheduler.placement_settings import PlacementSettings, placement_from
from raypipe.scheduler.types import TeamConfig

__all__ = ["SchedulerSettings"]


@dataclass
class SchedulerSettings:
    """The controller's settings: from a platform config (``version`` and ``admins`` set: see
    :meth:`ControllerCore.configure`), else from a pipeline's ``scheduler:`` section."""

    policy: str = "fifo"
    policy_args: dict[str, Any] = field(default_factory=dict)
    teams: dict[str, dict[str, Any]] = field(default_factory=dict)
    lease_s: float = 60.0
    keep_done_s: float = 300.0
    #: The cluster's maximum shape (see ``MaxShape.from_settings``); ``None``: no autoscaler,
    #: a request that does not fit the cluster as it is is rejected.
    autoscaler: dict[str, Any] | None = None
    #: The platform config version these settings come from (None: a pipeline's).
    version: int | None = None
    #: That platform's admins (None: it has no users, every caller is one; see ``access``).
    admins: list[str] | None = None
    #: Placement for every policy (``placement_settings``); the defaults are the placement before them.
    consolidation: str = "none"
    node_choice: str = "best_fit"
    task_mix: list[dict[str, Any]] | None = None  # fgd's mix (TaskMixEntry dicts); None: observed

    def placement(self) -> PlacementSettings:
        """The placement settings (``PolicyConfigError`` naming the bad field)."""
        return placement_from(self.consolidation, self.node_choice, self.task_mix)

    def team_configs(self) -> dict[str, TeamConfig]:
        """The teams as the policies see them (quota from ``cpu``, ``gpu``, ``memory_mb``, ``custom``)."""
        out = {}
        for name, t in self.teams.items():
            quota = {k: v for k, v in t.items() if k in ("cpu", "gpu", "memory_mb")}
            custom = t.get("custom") or {}
            out[name] = TeamConfig(
                quota=Resources.of(custom=custom, **quota) if (quota or custom) else None,
                priority=int(t.get("priority", 0)),
                weight=float(t.get("weight", 1.0)),
            )
        return out
