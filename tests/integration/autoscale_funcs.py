"""A controller backend whose ``request_resources`` stands in for Ray's autoscaler (no cloud here).

Each request is appended to a list in Ray's internal KV; the test reads it and adds
a node to its ``ray.cluster_utils.Cluster`` as an autoscaler would."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from raypipe.resources import Resources
from raypipe.scheduler.ray_backend import RayBackend

KEY = b"raypipe-test/autoscaler-requests"
NAMESPACE = "raypipe-test"


class FakeAutoscalerBackend(RayBackend):
    def request_resources(self, bundles: Sequence[Resources], label_selectors: Sequence[Mapping[str, str]]) -> None:
        from ray.experimental import internal_kv

        sent = requests()
        sent.append([b.to_ray_bundle() for b in bundles])
        internal_kv._internal_kv_put(KEY, json.dumps(sent).encode(), overwrite=True, namespace=NAMESPACE)


def requests() -> list[list[dict[str, float]]]:
    """Every request sent so far (``[]``: a clear)."""
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get(KEY, namespace=NAMESPACE)
    return json.loads(blob) if blob else []
