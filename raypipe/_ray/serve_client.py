"""Ray Serve's controller client: started, looked up and forgotten when it belongs to a
cluster that is gone (the only place that touches ``ray.serve``'s private modules)."""

from __future__ import annotations

import logging
from typing import Any

#: The cluster (GCS address) Serve's cached client was obtained on.
_CLIENT_CLUSTER: dict[str, str | None] = {"gcs": None}


def forget_stale_client(gcs_address: str) -> bool:
    """Drop Serve's cached controller client if it belongs to another cluster.  Serve checks
    only the job id, and a new local Ray in the same process reuses job id 01000000, so a
    client of a cluster that is gone would pass (then "Can't find actor").  True if dropped."""
    from ray.serve import context

    if context._global_client is not None and _CLIENT_CLUSTER["gcs"] != gcs_address:
        context._set_global_client(None)
        _CLIENT_CLUSTER["gcs"] = None
        return True
    return False


def _current_cluster() -> None:
    import ray

    gcs = ray.get_runtime_context().gcs_address
    forget_stale_client(gcs)
    _CLIENT_CLUSTER["gcs"] = gcs


def running_client() -> Any | None:
    """The client of the Serve instance running on the connected cluster, or None."""
    from ray.serve.context import _get_global_client

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _current_cluster()
    return _get_global_client(raise_if_no_controller_running=False)


def start_client(host: str, port: int) -> Any:
    """Serve's client, starting Serve (HTTP on ``host:port``) when it is not running."""
    from ray.serve._private import api as serve_api

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    _current_cluster()
    return serve_api.serve_start(http_options={"host": host, "port": port})
