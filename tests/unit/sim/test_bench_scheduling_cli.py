"""``raypipe bench scheduling`` end to end (simulator only) and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raypipe import api
from raypipe.bench.scheduling import SchedulingBenchConfig, metric_keys
from raypipe.cli import app
from raypipe.exceptions import RaypipeError

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"
REPO = Path(__file__).resolve().parents[3]


def test_cli_sim_writes_results_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raypipe.cli",
            "bench",
            "scheduling",
            "--trace",
            str(DATA / "philly-sample.csv"),
            "--format",
            "philly",
            "--gpus",
            "32",
            "--gpus-per-node",
            "8",
            "--policies",
            "fifo,las,backfill",
            "--mode",
            "sim",
            "--restart-cost-s",
            "30",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "scheduling benchmark" in proc.stdout and "las" in proc.stdout
    doc = json.loads((out / "results.json").read_text())
    assert set(doc) >= {"trace", "cluster", "options", "policies", "best_policy", "best_vs_fifo_avg_jct"}
    assert doc["trace"]["jobs"] == 200 and doc["cluster"]["total_gpus"] == 32
    assert list(doc["policies"]) == ["fifo", "las", "backfill"]
    for m in doc["policies"].values():
        assert list(m) == list(metric_keys())
        assert m["mode"] == "sim" and m["finished"] == 200 and m["avg_jct_ratio_to_bound"] >= 1
        assert m["wall_s"] > 0 and m["decision_latency_p99_ms"] is not None
    summary = (out / "summary.md").read_text()
    assert summary.count("\n| ") == 4 and "| las | sim |" in summary  # header + 3 rows
    for png in ("jct_cdf.png", "utilization.png", "queue_length.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_api_alibaba_sample_uses_the_node_list_beside_it(tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    doc = api.bench_scheduling(
        {"trace": str(DATA / "alibaba-sample"), "format": "alibaba", "policies": ["fifo", "priority"], "load": 0.9},
        on_progress=lambda p, done, total: seen.__setitem__(p, done),
    )
    assert doc["cluster"]["nodes"] == 56 and len(doc["cluster"]["gpu_types"]) == 7
    assert doc["trace"]["offered_load"] == pytest.approx(0.9)
    assert set(seen) == {"fifo", "priority"} and seen["fifo"] == doc["trace"]["jobs"]
    assert doc["policies"]["fifo"]["finished"] + doc["policies"]["fifo"]["rejected"] == doc["trace"]["jobs"]


def test_synthetic_needs_a_cluster_and_no_trace() -> None:
    with pytest.raises(RaypipeError, match="needs a cluster"):
        SchedulingBenchConfig.parse({"format": "synthetic"})
    with pytest.raises(RaypipeError, match="--trace is not used"):
        SchedulingBenchConfig.parse({"format": "synthetic", "trace": "x", "gpus": 8, "gpus_per_node": 8})
    with pytest.raises(RaypipeError, match="either --cluster"):
        SchedulingBenchConfig.parse({"format": "synthetic", "cluster": "c.yaml", "gpus": 8, "gpus_per_node": 8})
    with pytest.raises(RaypipeError, match="listed twice"):
        SchedulingBenchConfig.parse({"format": "synthetic", "gpus": 8, "gpus_per_node": 8, "policies": ["fifo", "fifo"]})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "synthetic", "--gpus", "8", "--gpus-per-node", "4", "--policies", "fifo,sjf"], "unknown scheduling policy 'sjf'"),
        (["--format", "philly", "--trace", "/no/such/trace.csv", "--gpus", "8", "--gpus-per-node", "4"], "no such trace file"),
        (["--format", "synthetic", "--gpus", "8"], "--gpus needs --gpus-per-node"),
        (["--format", "synthetic", "--gpus-per-node", "8"], "--gpus-per-node needs --gpus"),
        (["--format", "yarn", "--trace", "x"], "--format: Input should be 'philly', 'alibaba' or 'synthetic'"),
        (["--format", "synthetic", "--gpus", "8", "--gpus-per-node", "4", "--mode", "fast"], "--mode: Input should be 'sim', 'ray' or 'both'"),
        (["--format", "synthetic", "--gpus", "8", "--gpus-per-node", "4", "--spread-slowdown", "0.5"], "--spread-slowdown"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "scheduling", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_trace_rows_exit_2_and_skip_mode_counts_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("submit_time,duration,num_gpus\n0,10,1\n1,-1,1\n2,10,0\n")
    base = ["bench", "scheduling", "--format", "philly", "--trace", str(bad), "--gpus", "4", "--gpus-per-node", "4"]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 2 and f"{bad}:3: negative duration" in result.output and "2 bad row(s)" in result.output
    result = CliRunner().invoke(app, [*base, "--skip-bad-rows", "--policies", "fifo", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["trace"]["rows_skipped"] == 2 and doc["trace"]["jobs"] == 1
