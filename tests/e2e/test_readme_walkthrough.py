"""The README's path on a 2-CPU `ray start` cluster, with the commands exactly as the README
writes them (the block after `<!-- walkthrough -->`): serving, a split, a canary rollout,
A/B numbers, drift monitoring and the closed loop's status, in a copy of the project whose
configs are made test-sized (fewer epochs and rows, short canary steps).  The test fails
when the README and the CLI drift apart: every line must run and exit 0."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import REPO, cli_json, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RAY = str(Path(sys.executable).parent / "ray")


def walkthrough() -> list[str]:
    """The README's walkthrough block, one command per line (comments dropped)."""
    text = (Path(REPO) / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```", text, re.S)
    assert m, "README.md has no walkthrough block (<!-- walkthrough --> then ```bash)"
    lines = [ln.split("#", 1)[0].strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln]


def make_test_sized(project: Path) -> None:
    """The copied configs, smaller: the commands stay as written, the work is lighter."""

    def edit(name: str, fn: Any) -> None:
        path = project / "configs" / name
        doc = yaml.safe_load(path.read_text())
        fn(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    def quickstart(d: dict[str, Any]) -> None:
        st = {s["name"]: s for s in d["stages"]}
        st["train"]["params"].update(epochs=3, batch_size=256)  # the README's v2 line sets 16 epochs
        st["evaluate"]["params"]["gate"]["min"]["accuracy"] = 0.5

    def canary(d: dict[str, Any]) -> None:
        d["rollout"].update(steps=[50, 100], interval_s=3)
        d["rollout"]["guardrails"]["min_requests"] = 10
        # latency on a busy 2-CPU machine, where a p99 of a few dozen requests is one scheduling
        # hiccup: the guardrail the closed loop's end-to-end test uses
        d["rollout"]["guardrails"]["p99_latency_ms"] = {"max_ratio": 5.0, "min_increase_ms": 200}

    def closed_loop(d: dict[str, Any]) -> None:
        st = {s["name"]: s for s in d["stages"]}
        st["generate"]["params"]["args"]["rows"] = 1500
        st["train"]["params"]["epochs"] = 2

    edit("quickstart.yaml", quickstart)
    edit("canary_digits.yaml", canary)
    edit("closed_loop.yaml", closed_loop)


#: What Ray prints when its output reaches the console: worker prefixes, Ray's log format,
#: Ray Train's reports and cleaner, Ray Data's plans and progress bars.
RAY_LINES = re.compile(
    r"\(pid=|\([A-Za-z_:]+ pid=\d+|Ray Train|TrainingReport|PlacementGroupCleaner|WARNING|\S+\.py:\d+ -- "
    r"|Execution plan|InputDataBuffer|tqdm|core_worker|\(raylet\)"
)


def ray_chatter(console: str) -> list[str]:
    """The lines of ``console`` that Ray printed."""
    return [line for line in console.splitlines() if RAY_LINES.search(line)]


class Traffic:
    """Requests to the digits app from a thread, so the canary's steps see traffic."""

    def __init__(self, url: str, row: dict[str, float]) -> None:
        self.url, self.row = url, row
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        s = requests.Session()
        while not self.stop.is_set():
            try:
                r = s.post(
                    f"{self.url}/predict",
                    json={"features": self.row},
                    headers={"X-User-Id": f"u{random.randrange(10_000)}"},
                    timeout=10,
                )
                self.sent += 1
                self.failed += r.status_code >= 500
            except requests.RequestException:
                self.failed += 1
            time.sleep(0.02)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    lines = walkthrough()
    assert lines[0].startswith("ray start") and lines[-1] == "ray stop"
    project = tmp_path / "project"
    shutil.copytree(Path(REPO) / "configs", project / "configs")
    make_test_sized(project)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("RAY_ADDRESS", "RAYPIPE_DB", "RAYPIPE_HOME"):
        env.pop(var, None)
    outputs: dict[str, str] = {}
    consoles: dict[str, str] = {}  # what each line printed, stdout and stderr
    traffic: Traffic | None = None

    def run(line: str) -> str:
        argv = shlex.split(line)
        cmd = [RAY, *argv[1:]] if argv[0] == "ray" else [sys.executable, "-m", "raypipe.cli", *argv[1:]]
        started = time.monotonic()
        res = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=400)
        print(f"{time.monotonic() - started:6.1f}s  {line}", file=sys.stderr)
        assert res.returncode == 0, f"README line failed: {line}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        consoles[line] = res.stdout + res.stderr
        return res.stdout

    def json_of(*args: str) -> Any:
        res = subprocess.run(
            [sys.executable, "-m", "raypipe.cli", *args, "--json"],
            cwd=project, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return cli_json(res.stdout)

    try:
        for line in lines:
            outputs[line] = run(line)
            if line.startswith("raypipe rollout start"):
                status = json_of("serve", "status", "digits")
                url = (status[0] if isinstance(status, list) else status)["url"]
                traffic = Traffic(url, {f"px{i}": float(i % 16) for i in range(64)})
                traffic.thread.start()
            if line.startswith("raypipe rollout status"):
                wait_for(
                    lambda: json_of("rollout", "status", "digits").get("state") in ("promoted", "rolled_back"),
                    timeout_s=240,
                    every_s=1.0,
                    what="the canary to finish",
                )
                done = json_of("rollout", "status", "digits")
                assert done["state"] == "promoted", json.dumps(done, indent=1, default=str)[-4000:]
            if line.startswith("raypipe monitor status") and traffic is not None:
                traffic.stop.set()
                traffic.thread.join(timeout=30)
    finally:
        if traffic is not None:
            traffic.stop.set()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)

    # A quiet console: raypipe's progress and results, Ray's own lines only in the stage logs.
    console = consoles["raypipe run configs/quickstart.yaml"]
    assert len(console.splitlines()) <= 40, console
    assert not ray_chatter(console), ray_chatter(console)
    outputs = {k: " ".join(v.split()) for k, v in outputs.items()}  # rich wraps long lines
    first = outputs["raypipe run configs/quickstart.yaml"]
    assert "joins the Ray cluster at" in first  # not a second Ray beside the one `ray start` made
    assert "registered digits v1 @candidate" in first
    assert "registered digits v2 @candidate" in outputs[next(ln for ln in lines if "epochs=16" in ln)]
    assert traffic is not None and traffic.sent > 20 and traffic.failed == 0
    assert "sensors" in outputs["raypipe loop status sensors"]
    runs = outputs["raypipe runs"]
    assert "quickstart" in runs and "closed_loop" in runs  # one store for the project's pipelines
    assert (project / ".raypipe" / "raypipe.db").is_file()

    # The store outlives the cluster.  The v2 line again: every stage up to training is a cache
    # hit; evaluate runs again (its `beat` baseline, production, is v2 itself now) and
    # register finds v2, moving nothing (this run trained nothing); no version is added.
    v2_line = next(ln for ln in lines if "epochs=16" in ln)
    again = subprocess.run(
        [sys.executable, "-m", "raypipe.cli", *shlex.split(v2_line)[1:], "--local"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = " ".join(again.stdout.split())
    assert again.returncode == 0 and "train cache hit" in text, again.stdout + again.stderr
    assert "already registered: digits v2" in text, text
    models = json_of("models")
    assert [(m["name"], m["versions"]) for m in models] == [("digits", 2), ("sensors", 1)]
    v1 = json_of("model", "show", "digits:1")

    def sources(node: dict[str, Any]) -> list[str]:
        found = [node["uri"]] if node.get("format") == "source" else []
        inputs = (node.get("produced_by") or {}).get("inputs") or []
        return found + [u for child in inputs for u in sources(child)]

    assert any(u.endswith("digits.csv.gz") for u in sources(v1["lineage"])), v1["lineage"]
