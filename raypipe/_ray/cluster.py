"""What Ray knows of the cluster that its public API does not say: free resources per node,
the drivers that exited, a placement group from its id."""

from __future__ import annotations

from typing import Any


def available_per_node() -> dict[str, dict[str, float]]:
    """Node id -> Ray resources free on it now."""
    from ray._private.state import available_resources_per_node

    return dict(available_resources_per_node())


def dead_job_ids() -> set[str]:
    """Ray job ids (hex) of drivers that have exited."""
    from ray._private.state import jobs

    return {j["JobID"] for j in jobs() if j.get("IsDead")}


def placement_group_from_id(pg_id: str) -> Any:
    """A ``PlacementGroup`` handle from its hex id."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id)))
