"""What the controller needs of a cluster (pure: the protocol and its types): nodes,
placement groups, durable state, autoscaler requests.

:class:`ControllerCore` talks to a :class:`Backend`; the controller actor uses
:class:`~raypipe.scheduler.ray_backend.RayBackend`, unit tests a fake.
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
