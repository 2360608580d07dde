"""The closed loop on this machine, end to end (``raypipe loop demo``): a local Ray, the
pipeline of ``configs/closed_loop.yaml`` (v1 served with a drift monitor and the loop armed),
clean then shifted traffic, drift -> retraining -> canary -> promotion, and the timeline
(``timeline.json`` and ``timeline.png``).  The data and the traffic are
:mod:`raypipe.examples.closed_loop`'s.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raypipe.config import read_config
from raypipe.examples.closed_loop import SHIFTED, Traffic, plot, print_timeline, wait_cycle, wait_windows
from raypipe.exceptions import RaypipeError
from raypipe.loop.status import loop_status
from raypipe.monitoring.monitor import get_monitor
from raypipe.serving import app as serve_app
from raypipe.store.metadata import MetadataStore, resolve_db

#: The environment variable the demo's feedback token is passed in (``auth.feedback_tokens``).
FEEDBACK_TOKEN_ENV = "RAYPIPE_DEMO_FEEDBACK_TOKEN"


def run_demo(
    config: str,
    out: Path,
    run_pipeline: Callable[[Sequence[str]], None],
    *,
    num_cpus: int = 4,
    timeout: float = 900.0,
    shift: float = 0.5,
    console: Any,
) -> int:
    """Run the demo; 0 when the cycle ended in a promotion, else 1.

    ``run_pipeline(overrides)`` runs ``config`` with these overrides on the Ray this function
    starts and raises when the run fails (the CLI passes :func:`raypipe.api.run` with its
    progress display).  ``console`` (a rich Console) shows what happens."""
    import ray

    # A store of its own, new each time: the demo starts from "no model yet" (v1 becomes production).
    store = out / "store"
    # Labels feed performance drift only from authenticated feedback: a feedback token made for
    # this run, in the environment of the Ray started below (the deploy stage's task resolves it).
    token = secrets.token_urlsafe(24)
    os.environ[FEEDBACK_TOKEN_ENV] = token
    overrides = [
        f"storage={store.resolve()}",
        f'stages.deploy.params.auth={{"feedback_tokens": ["${{env:{FEEDBACK_TOKEN_ENV}}}"]}}',
    ]
    cfg, _ = read_config(config, overrides)
    deploys = [s for s in cfg.stages if s.kind == "deploy" and (s.params.get("retrain") and s.params.get("monitor"))]
    if not deploys:
        raise RaypipeError(f"{config}: no deploy stage with `monitor` and `retrain`; the demo needs the loop armed")
    app_name = str(deploys[0].params["app"])
    shutil.rmtree(store, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # Serve's and the stages' own logs; the events below say what happens
    )
    traffic = None
    try:
        console.rule("1. train v1, register it as production, serve it with a monitor; the loop is armed")
        run_pipeline(overrides)
        url = serve_app.url(app_name)
        meta = MetadataStore(resolve_db(None, metadata=cfg.metadata, storage=cfg.storage))
        monitor = get_monitor(app_name)
        if monitor is None:
            raise RaypipeError(f"app {app_name!r} is served without its drift monitor; the demo needs one")
        t0 = time.time()
        traffic = Traffic(url, feedback_token=token).start()
        console.rule(f"2. clean traffic to {url}/predict: no drift expected")
        wait_windows(monitor, 3, console, traffic)
        clean = ray.get(monitor.status.remote())
        console.print(f"  drift events after 3 clean windows: {clean['events_total']} (expected 0)")
        console.rule(f"3. calibration fault: {', '.join(SHIFTED)} read {shift:g} sigma high")
        traffic.shift = shift
        outcome = wait_cycle(app_name, meta, console, traffic, timeout)
        console.rule("4. after the cycle: the same shifted traffic against the new reference")
        wait_windows(monitor, 3, console, traffic)
        traffic.stop()
        st = loop_status(app_name, meta)
        print_timeline(st["timeline"], t0, console)
        windows = ray.get(monitor.windows.remote(None, 0, 1000))
        mon = ray.get(monitor.status.remote())
        summary = {
            "outcome": outcome,
            "requests": traffic.sent,
            "request_errors": traffic.errors,
            "by_variant": traffic.by_variant,
            "drift_events": mon["events_total"],
            "cycles": st["cycles"],
            "production": serve_app.status(app_name).aliases.get("production"),
        }
        doc = {**summary, "timeline": st["timeline"], "windows": windows}
        (out / "timeline.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        plot(windows, st["timeline"], t0, out / "timeline.png")
        console.print(json.dumps(summary, indent=1, default=str))
        console.print(f"wrote {out / 'timeline.json'} and {out / 'timeline.png'}")
        return 0 if outcome == "promoted" else 1
    finally:
        if traffic is not None:
            traffic.stop()
        ray.shutdown()
