"""cluster.yaml is a valid Ray cluster-launcher config with the groups the README promises, and
the shared-storage check names the nodes that cannot see a local storage root."""

from __future__ import annotations

from pathlib import Path

import yaml

from raypipe.runner.ray_session import unshared_nodes
from tests.conftest import REPO


def test_cluster_yaml_is_a_valid_launcher_config() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((Path(REPO) / "cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # Ray's own schema (ray-schema.json): raises on a bad field
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] == 4 and types["gpu_worker"]["max_workers"] >= 1
    assert "GPU" not in types["cpu_worker"]["resources"] and types["cpu_worker"]["min_workers"] >= 0
    assert sum(t.get("max_workers", 0) for t in types.values()) >= config["max_workers"]
    assert any("raypipe" in c for c in config["setup_commands"])
    assert any("--autoscaling-config" in c for c in config["head_start_ray_commands"])


def test_unshared_nodes_names_the_nodes_that_cannot_read_the_marker() -> None:
    nodes = [
        {"NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1"},
        {"NodeID": "b" * 56, "NodeManagerAddress": "10.0.0.2"},
        {"NodeID": "c" * 56, "NodeManagerAddress": "10.0.0.3"},
    ]
    seen = {"a" * 56: "tok", "b" * 56: None, "c" * 56: "other"}
    assert unshared_nodes(nodes, "tok", lambda ids: [seen[i] for i in ids]) == [
        "10.0.0.2 (bbbbbbbb)",
        "10.0.0.3 (cccccccc)",
    ]
    assert unshared_nodes(nodes, "tok", lambda ids: ["tok"] * len(ids)) == []
