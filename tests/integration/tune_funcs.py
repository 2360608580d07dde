"""Ray Tune trainables for the ``tune`` kind's tests; trial actors import them by name."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def _resume(step_key: str = "step") -> int:
    """The next iteration: 0, or one past the restored checkpoint's."""
    import ray.tune

    ckpt = ray.tune.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        return json.loads(Path(d, "state.json").read_text())[step_key] + 1


def _report(metrics: dict, step: int) -> None:
    import ray.tune

    with tempfile.TemporaryDirectory() as d:
        Path(d, "state.json").write_text(json.dumps({"step": step, **metrics}))
        Path(d, "weights.txt").write_text(f"quality {metrics.get('quality', 0)}\n")
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))


def quality_curve(config: dict, train=None) -> None:
    """``loss`` falls with every iteration; configs with a higher ``quality`` fall faster,
    so bad configs are worse at every iteration.  Logs ``<log>/q<quality>-it<i>`` with the
    iteration's start and end times and the rows of the ``train`` input."""
    log = Path(config["log"])
    q = config["quality"]
    rows = -1 if train is None else len(train)
    for i in range(_resume(), config["iterations"]):
        start = time.time()
        time.sleep(config.get("step_s", 0.0))
        (log / f"q{q}-it{i}").write_text(f"{start} {time.time()} {rows}")
        _report({"loss": 10.0 / (1 + q * (i + 1)), "quality": q}, i)


def interrupted_once(config: dict) -> None:
    """``quality_curve``, but the trial with ``quality == config["killer"]`` kills the Tune
    driver (the stage's task, found by its process title) at its second iteration, once
    (marker file), after the sweep's saved state shows ``config["finished_first"]``
    trials finished.  Every iteration of every trial is logged as a file
    ``<log>/q<quality>-it<i>-<pid>``, so a re-run shows as a second file."""
    import signal

    log = Path(config["log"])
    q = config["quality"]
    for i in range(_resume(), config["iterations"]):
        (log / f"q{q}-it{i}-{os.getpid()}").write_text("")
        if q == config["killer"] and i == 1 and not Path(config["marker"]).exists():
            _wait_for_saved_finished(config["storage"], config["finished_first"])
            Path(config["marker"]).write_text("killed")
            os.kill(_driver_pid(config["driver_title"]), signal.SIGKILL)
            time.sleep(60)  # this actor dies with its owner
        _report({"loss": 10.0 / (1 + q * (i + 1)), "quality": q}, i)


def _driver_pid(title: str) -> int:
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(f"ray::{title}"):
            return p.info["pid"]
    raise RuntimeError(f"no process titled ray::{title}")


def _wait_for_saved_finished(storage: str, n: int, timeout_s: float = 60.0) -> None:
    """Until Tune's saved experiment state (under ``storage``) lists ``n`` finished trials."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for state in Path(storage).rglob("experiment_state-*.json"):
            try:
                data = json.loads(state.read_text())
            except ValueError:
                continue
            finished = sum('"status": "TERMINATED"' in t[0] for t in data.get("trial_data", []))
            if finished >= n:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the saved sweep state never showed {n} finished trials")
