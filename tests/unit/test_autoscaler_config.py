"""``scheduler.autoscaler``: explicit node types or a cluster launcher YAML; errors say what is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import raypipe
from raypipe import ConfigError
from raypipe.config import SchedulerConfig, read_cluster_config
from raypipe.scheduler.autoscale import MaxShape

PIPE = """\
name: demo
scheduler:
  autoscaler:
{autoscaler}
stages:
  - name: a
    kind: python
    params: {{function: "tests.unit.funcs:make"}}
"""

LAUNCHER = """\
cluster_name: demo
max_workers: 5
provider: {type: aws, region: us-west-2}
head_node_type: head
available_node_types:
  head:
    node_config: {InstanceType: m5.large}
    resources: {}
  gpu_worker:
    node_config: {InstanceType: g5.12xlarge}
    resources: {CPU: 48, GPU: 4, memory: 68719476736}
    labels: {gpu_type: A10G}
    min_workers: 0
    max_workers: 2
  cpu_worker:
    node_config: {InstanceType: m5.4xlarge}
    resources: {CPU: 16}
"""


def load(tmp_path: Path, autoscaler: str) -> raypipe.PipelineConfig:
    p = tmp_path / "p.yaml"
    p.write_text(PIPE.format(autoscaler=textwrap.indent(textwrap.dedent(autoscaler), "    ")))
    return raypipe.load(p).config


def test_explicit_node_types_become_the_controllers_setting(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """\
        node_types:
          gpu_worker: {resources: {CPU: 8, GPU: 4}, max_workers: 4}
          cpu_worker: {resources: {CPU: 4, memory: 17179869184}, labels: {pool: cpu}}
        max_workers: 6
        """,
    )
    auto = cfg.scheduler.settings()["autoscaler"]
    assert auto == {
        "node_types": {
            "gpu_worker": {"resources": {"CPU": 8, "GPU": 4}, "labels": {}, "max_workers": 4},
            "cpu_worker": {"resources": {"CPU": 4, "memory": 17179869184}, "labels": {"pool": "cpu"}, "max_workers": 6},
        },
        "max_workers": 6,
    }
    shape = MaxShape.from_settings(auto)
    assert shape is not None and shape.node_types[1].resources == raypipe.Resources.of(cpu=4, memory_mb=16384)
    assert shape.describe() == (
        "head + up to 4 x gpu_worker {CPU: 8, GPU: 4}, 6 x cpu_worker {CPU: 4, memory_mb: 16384}; at most 6 workers"
    )


def test_no_autoscaler_section_means_none() -> None:
    assert SchedulerConfig().settings()["autoscaler"] is None


def test_a_cluster_launcher_yaml_gives_the_shape(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text(LAUNCHER)
    cfg = load(tmp_path, f"cluster_config: {tmp_path / 'cluster.yaml'}")
    assert cfg.scheduler.settings()["autoscaler"] == {
        "node_types": {
            # head: max_workers defaults to 0 for the head type, so it is left out
            "gpu_worker": {
                "resources": {"CPU": 48, "GPU": 4, "memory": 68719476736},
                "labels": {"gpu_type": "A10G"},
                "max_workers": 2,
            },
            "cpu_worker": {"resources": {"CPU": 16}, "labels": {}, "max_workers": 5},  # the global one, as in Ray
        },
        "max_workers": 5,
    }


def test_launcher_defaults_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        "available_node_types:\n  w: {node_config: {}, resources: {CPU: 2}}\n"
    )
    assert read_cluster_config("~/ray_bootstrap_config.yaml") == {
        "node_types": {"w": {"resources": {"CPU": 2}, "labels": {}, "max_workers": 2}},
        "max_workers": 2,
    }


@pytest.mark.parametrize(
    ("autoscaler", "line", "fragment"),
    [
        pytest.param("{}", 4, "give node_types or cluster_config", id="empty"),
        pytest.param(
            "node_types: {w: {resources: {CPU: 1}, max_workers: 1}}\ncluster_config: {dir}/c.yaml",
            4,
            "not both",
            id="both",
        ),
        pytest.param(
            "node_types:\n  w: {resources: {GPU: 4}, max_workers: 1}",
            5,
            "scheduler.autoscaler.node_types.w.resources: must declare CPU",
            id="no-cpu",
        ),
        pytest.param(
            "node_types:\n  w: {resources: {cpu: 4, gpu: 1}, max_workers: 1}",
            5,
            "use Ray's resource names (CPU, GPU, memory in bytes), not cpu, gpu",
            id="raypipe-names",
        ),
        pytest.param(
            "node_types:\n  w: {resources: {CPU: 4}, max_workers: -1}",
            5,
            "node_types.w.max_workers: got -1; expected a number >= 0",
            id="negative",
        ),
        pytest.param(
            "node_types:\n  w: {resources: {CPU: 4}}", 4, "node type 'w' has no max_workers", id="no-max-workers"
        ),
        pytest.param(
            "node_types:\n  w: {resources: {CPU: 4}, max_workers: 1, min_wrkers: 1}",
            5,
            "node_types.w.min_wrkers: unknown key 'min_wrkers'",
            id="unknown-key",
        ),
        pytest.param("cluster_config: nowhere.yaml", 4, "cannot read cluster config nowhere.yaml", id="missing-file"),
    ],
)
def test_errors_name_the_line_and_the_problem(tmp_path: Path, autoscaler: str, line: int, fragment: str) -> None:
    (tmp_path / "c.yaml").write_text(LAUNCHER)
    with pytest.raises(ConfigError) as e:
        load(tmp_path, autoscaler.replace("{dir}", str(tmp_path)))
    msg = str(e.value)
    assert f"p.yaml:{line} " in msg and fragment in msg, msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cluster_name: x\n", "no available_node_types"),
        ("available_node_types: [a, b]\n", "no available_node_types"),
        ("max_workers: -2\navailable_node_types: {w: {resources: {CPU: 1}}}\n", "max_workers: got -2"),
        (
            "available_node_types:\n  w: {node_config: {}, resources: {}, max_workers: 2}\n",
            "available_node_types.w.resources: must declare CPU",
        ),
        ("available_node_types:\n  w: {resources: {CPU: 1}, max_workers: 0}\n", "no node type can be launched"),
        ("available_node_types: {w: [1]\n", "invalid YAML"),
    ],
)
def test_launcher_file_errors(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "cluster.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match="cluster config") as e:
        read_cluster_config(str(p))
    assert fragment in str(e.value), str(e.value)
    if "must declare CPU" in fragment:
        assert "ray_bootstrap_config.yaml" in str(e.value)
