"""The scheduler's backend on Ray: nodes from the GCS, grants as detached placement groups,
the controller's state in Ray's KV, autoscaler requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raypipe._ray import kv
from raypipe._ray.cluster import available_per_node, dead_job_ids, placement_group_from_id
from raypipe.resources import Resources
from raypipe.scheduler.backend import NODE_GROUP_LABEL, NODE_ID_LABEL, PG_PREFIX, NodeInfo

_SETTINGS_KEY = b"raypipe-scheduler/settings"
_JOB_PREFIX = b"raypipe-scheduler/job/"


class RayBackend:
    """Ray's GCS as the source of nodes and the home of grants and state.

    Placement groups are detached, named, and pinned bundle by bundle to the
    nodes the policy chose (``bundle_label_selector`` on ``ray.io/node-id``), so
    they outlive a crashed controller and a crashed driver until released.
    State lives in Ray's internal KV, which survives the controller actor.
    """

    def nodes(self) -> list[NodeInfo]:
        import ray

        try:
            avail = available_per_node()
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
        return dead_job_ids()

    def load_state(self) -> tuple[bytes | None, dict[str, bytes]]:
        """The settings and every persisted job (one key per job)."""
        settings = kv.get(_SETTINGS_KEY)
        values = {k: kv.get(k) for k in kv.keys(_JOB_PREFIX)}
        return settings, {k[len(_JOB_PREFIX) :].decode(): v for k, v in values.items() if v is not None}

    def save_settings(self, blob: bytes) -> None:
        kv.put(_SETTINGS_KEY, blob)

    def save_jobs(self, jobs: Mapping[str, bytes | None]) -> None:
        """Write changed jobs; ``None`` deletes a job's key."""
        for job_id, blob in jobs.items():
            key = _JOB_PREFIX + job_id.encode()
            if blob is None:
                kv.delete(key)
            else:
                kv.put(key, blob)

    def request_resources(self, bundles: Sequence[Resources], label_selectors: Sequence[Mapping[str, str]]) -> None:
        """``ray.autoscaler.sdk.request_resources``: the autoscaler scales until ``bundles`` fit
        (each on a node matching its label selector); the next call replaces this one."""
        from ray.autoscaler.sdk import request_resources

        selectors = [dict(s) for s in label_selectors] if any(label_selectors) else None
        request_resources(bundles=[b.to_ray_bundle() for b in bundles], bundle_label_selectors=selectors)


def clear_state() -> None:
    """Forget persisted scheduler state (tests)."""
    kv.delete(_SETTINGS_KEY)
    kv.delete_prefix(_JOB_PREFIX)


pg_from_id = placement_group_from_id
