"""``raypipe bench scheduling``'s placement flags, policy arguments and spread slowdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raypipe import api
from raypipe.bench.options import parse_policy_args, parse_spread_slowdown
from raypipe.bench.scheduling import SchedulingBenchConfig
from raypipe.cli import app
from raypipe.exceptions import RaypipeError

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"
PHILLY = ["bench", "scheduling", "--format", "philly", "--trace", str(DATA / "philly-sample.csv")]
CLUSTER = ["--gpus", "32", "--gpus-per-node", "4"]


def run_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*PHILLY, *CLUSTER, *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_defaults_are_strict_first_fit_on_whole_gpu_traces_and_recorded() -> None:
    doc = run_json("--policies", "fifo")
    assert doc["options"]["placement"] == {
        "consolidation": "strict",
        "node_choice": "first_fit",
        "task_mix": None,
        "source": {"consolidation": "default", "node_choice": "default", "task_mix": "observed"},
    }
    assert doc["options"]["spread_slowdown"] == 1.0 and doc["options"]["policy_args"] == {}


def test_fractional_traces_default_to_best_fit() -> None:
    doc = api.bench_scheduling({"trace": str(DATA / "alibaba-sample"), "format": "alibaba", "policies": ["fifo"]})
    assert doc["options"]["placement"]["consolidation"] == "strict"
    assert doc["options"]["placement"]["node_choice"] == "best_fit"


def test_flags_reach_the_simulator_and_results(tmp_path: Path) -> None:
    doc = run_json(
        "--policies",
        "fifo,las",
        "--consolidation",
        "prefer",
        "--node-choice",
        "fgd",
        "--task-mix",
        "trace",
        "--spread-slowdown",
        "per_extra_node=0.1,cross_rack=1.5",
        "--policy-arg",
        "las.thresholds=3250,7200",
        "--policy-arg",
        "las.preempt=false",
        "--out",
        str(tmp_path / "out"),
    )
    opts = doc["options"]
    assert opts["placement"]["consolidation"] == "prefer" and opts["placement"]["node_choice"] == "fgd"
    assert opts["placement"]["task_mix"] == "trace"
    assert opts["placement"]["source"]["consolidation"] == "flag"
    assert opts["spread_slowdown"] == {"per_extra_node": 0.1, "cross_rack": 1.5}
    assert opts["policy_args"] == {"las": {"thresholds": [3250.0, 7200.0], "preempt": False}}
    assert doc["policies"]["las"]["preemptions"] == 0  # las.preempt=false reached the policy
    assert "placement: prefer + fgd" in (tmp_path / "out" / "summary.md").read_text()
    # and the same las preempts without the argument
    assert run_json("--policies", "las")["policies"]["las"]["preemptions"] > 0


def test_cluster_yaml_placement_applies_unless_a_flag_says_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "node_groups:\n  - {count: 8, gpus: 4, cpus: 32, memory_mb: 65536}\nplacement: {consolidation: none}\n"
    )
    base = ["bench", "scheduling", "--format", "philly", "--trace", str(DATA / "philly-sample.csv")]
    result = CliRunner().invoke(app, [*base, "--cluster", str(path), "--policies", "fifo", "--json"])
    placement = json.loads(result.stdout)["options"]["placement"]
    assert placement["consolidation"] == "none" and placement["source"]["consolidation"] == "cluster"
    assert placement["node_choice"] == "first_fit" and placement["source"]["node_choice"] == "default"
    result = CliRunner().invoke(
        app, [*base, "--cluster", str(path), "--policies", "fifo", "--consolidation", "strict", "--json"]
    )
    assert json.loads(result.stdout)["options"]["placement"]["consolidation"] == "strict"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--consolidation", "loose"], "--consolidation: Input should be 'strict', 'prefer' or 'none'"),
        (["--node-choice", "worst_fit"], "--node-choice: Input should be"),
        (["--task-mix", "later"], "--task-mix: Input should be 'observed' or 'trace'"),
        (["--spread-slowdown", "per_node=0.1"], "--spread-slowdown: unknown key 'per_node'"),
        (["--spread-slowdown", "1.2,per_extra_node=0.1"], "--spread-slowdown"),
        (
            ["--policy-arg", "las.thresholds=abc"],
            "--policy-arg las.thresholds=abc: las.thresholds expects a comma-separated list of numbers",
        ),
        (
            ["--policy-arg", "las.threshold=3"],
            "--policy-arg las.threshold=3: las has no argument 'threshold'; its arguments: thresholds",
        ),
        (["--policy-arg", "las=3"], "--policy-arg 'las=3': expected POLICY.NAME=VALUE"),
        (["--policy-arg", "sjf.x=3"], "unknown scheduling policy 'sjf'"),
        (["--policies", "fifo", "--policy-arg", "las.preempt=true"], "policy 'las' is not compared (--policies fifo)"),
        (["--policy-arg", "las.preempt=maybe"], "las.preempt expects true or false"),
        (["--policy-arg", "las.max_preemptions=-1"], "las: max_preemptions must be an int >= 0 or None"),
        (["--policy-arg", "las.thresholds=7200,3250"], "las: thresholds must be positive and strictly increasing"),
        (["--policy-arg", "las.preempt=true", "--policy-arg", "las.preempt=false"], "las.preempt is given twice"),
    ],
)
def test_bad_placement_and_policy_args_exit_2_naming_the_argument(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*PHILLY, *CLUSTER, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_policy_args_parse_by_the_policys_types() -> None:
    got = parse_policy_args(
        ["las.thresholds=100", "las.max_preemptions=none", "las.starve_factor=2", "priority.preempt=yes"],
        ["las", "priority"],
    )
    assert got == {
        "las": {"thresholds": [100.0], "max_preemptions": None, "starve_factor": 2.0},
        "priority": {"preempt": True},
    }
    assert parse_policy_args(["fair_share.max_preemptions=4"]) == {"fair_share": {"max_preemptions": 4}}


def test_spread_slowdown_text_forms() -> None:
    assert parse_spread_slowdown("1.25") == 1.25
    assert parse_spread_slowdown("2=1.1, 4=1.3, rack_label=row, cross_rack=2") == {
        "by_nodes": {2: 1.1, 4: 1.3},
        "rack_label": "row",
        "cross_rack": 2.0,
    }
    with pytest.raises(ValueError, match="expected a number or KEY=VALUE"):
        parse_spread_slowdown("fast")


def test_config_takes_policy_args_as_a_mapping_too() -> None:
    base = {"format": "synthetic", "gpus": 8, "gpus_per_node": 4, "policies": ["fifo", "las"]}
    cfg = SchedulingBenchConfig.parse({**base, "policy_args": {"las": {"thresholds": [10.0]}}})
    assert cfg.policy_args == {"las": {"thresholds": [10.0]}}
    with pytest.raises(RaypipeError, match="policy_args for 'priority', which is not compared"):
        SchedulingBenchConfig.parse({**base, "policy_args": {"priority": {"preempt": True}}})
