"""The scheduler's only contact with Ray: nodes, placement groups, durable state, autoscaler requests.

:class:`ControllerCore` talks to a :class:`Backend`; the controller actor uses
:class:`RayBackend`, unit tests a fake.  Nothing else in ``raypipe.scheduler``
calls Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from raypipe.resources import Resources

#: Names of placement groups raypipe creates start with this.
PG_PREFIX = "raypipe-grant-"
NODE_ID_LABEL = "ray.io/node-id"
#: The node type (worker group) a node was launched as, set by Ray's autoscalers.
NODE_GROUP_LABEL = "ray.io/node-group"
_SETTINGS_KEY = b"raypipe-scheduler/settings"
_JOB_PREFIX = b"raypipe-scheduler/job/"
_KV_NAMESPACE = "raypipe"


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    total: Resources
    labels: Mapping[str, str] = field(default_factory=dict)
    alive: bool = True
    #: What Ray reports free on the node (``None``: unknown).  Placement groups
    #: are already subtracted, so work raypipe did not admit shows up here.
    available: Resources | None = None
    #: The head node (Ray's ``node:__internal_head__`` resource): never an autoscaler worker.
    head: bool = False
    #: The node type it was launched as (``ray.io/node-group``), when Ray knows.
    node_type: str | None = None
    #: Its IP address (Ray's ``NodeManagerAddress``) and name (``NodeName``), for people.
    address: str | None = None
    name: str | None = None


class Backend(Protocol):
    def nodes(self) -> list[NodeInfo]: ...

    def create_pg(self, name: str, bundles: Sequence[Resources], node_ids: Sequence[str]) -> str: ...

    def remove_pg(self, name: str) -> None: ...

    def live_pgs(self) -> set[str]: ...

    def dead_drivers(self) -> set[str]: ...

    def load_state(self) -> tuple[bytes | None, dict[str, bytes]]: ...

    def save_settings(self, blob: bytes) -> None: ...

    def save_jobs(self, jobs: Mapping[str, bytes | None]) -> None: ...

    def request_resources(self, bundles: Sequence[Resources], label_selectors: Sequence[Mapping[str, str]]) -> None:
        """Ask the autoscaler to make room for ``bundles`` (replaces the last request; empty: clear).

        Called only when the controller's settings describe an autoscaler."""
        ...


class RayBackend:
    """Ray's GCS as the source of nodes and the home of grants and state.

    Placement groups are detached, named, and pinned bundle by bundle to the
    nodes the policy chose (``bundle_label_selector`` on ``ray.io/node-id``), so
    they outlive a crashed controller and a crashed driver until released.
    State lives in Ray's internal KV, which survives the controller actor.
    """

    def nodes(self) -> list[NodeInfo]:
        import ray
        from ray._private.state import available_resources_per_node

        try:
            avail = available_resources_per_node()
        except Exception:  # noqa: BLE001 - the view is an optimisation; totals still hold
            avail = {}
        out = []
        for n in ray.nodes():
            all_labels = n.get("Labels") or {}
            labels = {k: v for k, v in all_labels.items() if not k.startswith("ray.io/")}
            resources = n.get("Resources") or {}
            out.append(
                NodeInfo(
                    node_id=n["NodeID"],
                    total=Resources.from_ray(resources),
                    labels=labels,
                    alive=bool(n.get("Alive")),
                    available=Resources.from_ray(avail[n["NodeID"]]) if n["NodeID"] in avail else None,
                    head="node:__internal_head__" in resources,
                    node_type=all_labels.get(NODE_GROUP_LABEL) or None,
                    address=n.get("NodeManagerAddress") or None,
                    name=n.get("NodeName") or None,
                )
            )
        return out

    def create_pg(self, name: str, bundles: Sequence[Resources], node_ids: Sequence[str]) -> str:
        """Create the group; return its id (hex).  Named lookups are namespaced and racy: use the id."""
        from ray.util.placement_group import placement_group

        pg = placement_group(
            [b.to_ray_bundle() for b in bundles],
            strategy="PACK",
            name=name,
            lifetime="detached",
            bundle_label_selector=[{NODE_ID_LABEL: nid} for nid in node_ids],
        )
        return pg.id.hex()

    def remove_pg(self, pg_id: str) -> None:
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(pg_from_id(pg_id))
        except Exception:  # noqa: BLE001 - already gone
            pass

    def live_pgs(self) -> set[str]:
        """Ids of raypipe's groups that Ray still holds."""
        from ray.util.placement_group import placement_group_table

        return {
            pid
            for pid, t in placement_group_table().items()
            if str(t.get("name", "")).startswith(PG_PREFIX) and t.get("state") != "REMOVED"
        }

    def dead_drivers(self) -> set[str]:
        """Ray job ids (hex) of drivers that have exited."""
        import ray

        return {j["JobID"] for j in ray._private.state.jobs() if j.get("IsDead")}

    def load_state(self) -> tuple[bytes | None, dict[str, bytes]]:
        """The settings and every persisted job (one key per job)."""
        from ray.experimental import internal_kv

        settings = internal_kv._internal_kv_get(_SETTINGS_KEY, namespace=_KV_NAMESPACE)
        keys = internal_kv._internal_kv_list(_JOB_PREFIX, namespace=_KV_NAMESPACE)
        values = {k: internal_kv._internal_kv_get(k, namespace=_KV_NAMESPACE) for k in keys}
        return settings, {k[len(_JOB_PREFIX) :].decode(): v for k, v in values.items() if v is not None}

    def save_settings(self, blob: bytes) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(_SETTINGS_KEY, blob, overwrite=True, namespace=_KV_NAMESPACE)

    def save_jobs(self, jobs: Mapping[str, bytes | None]) -> None:
        """Write changed jobs; ``None`` deletes a job's key."""
        from ray.experimental import internal_kv

        for job_id, blob in jobs.items():
            key = _JOB_PREFIX + job_id.encode()
            if blob is None:
                internal_kv._internal_kv_del(key, namespace=_KV_NAMESPACE)
            else:
                internal_kv._internal_kv_put(key, blob, overwrite=True, namespace=_KV_NAMESPACE)

    def request_resources(self, bundles: Sequence[Resources], label_selectors: Sequence[Mapping[str, str]]) -> None:
        """``ray.autoscaler.sdk.request_resources``: the autoscaler scales until ``bundles`` fit
        (each on a node matching its label selector); the next call replaces this one."""
        from ray.autoscaler.sdk import request_resources

        selectors = [dict(s) for s in label_selectors] if any(label_selectors) else None
        request_resources(bundles=[b.to_ray_bundle() for b in bundles], bundle_label_selectors=selectors)


def clear_state() -> None:
    """Forget persisted scheduler state (tests)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(_SETTINGS_KEY, namespace=_KV_NAMESPACE)
    internal_kv._internal_kv_del(_JOB_PREFIX, del_by_prefix=True, namespace=_KV_NAMESPACE)


def pg_from_id(pg_id: str) -> object:
    """A ``PlacementGroup`` handle from its hex id."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    return PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id)))
