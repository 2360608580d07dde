"""The schedules' controller: one named detached actor per metadata store
(``raypipe-schedules-<12 hex digits of the store's URL>``, namespace ``raypipe``, on the head
node, restarted forever) that ticks a :class:`~raypipe.schedules.ticker.Ticker` every
``tick_s`` seconds on a thread.  Its configuration (the store's URL, redacted; ``tick_s``) is in
Ray's KV and its schedules' state in the metadata store, so a restarted actor goes on where the
last one stopped.  Runs start as driver processes through the closed loop's launch path
(:func:`raypipe.loop.launch.start_driver`), acting for the schedule's owner (``--on-behalf-of``)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from raypipe._ray import kv
from raypipe._ray.actors import find_actor, get_or_create
from raypipe.exceptions import ModelNotFoundError, RunNotFoundError
from raypipe.loop.launch import run_args, start_driver
from raypipe.schedules.ticker import Ports, Ticker
from raypipe.secrets import actor_env, actor_url, redact
from raypipe.store.metadata import MetadataStore, pid_alive
from raypipe.store.registry import ModelRegistry
from raypipe.store.schedules import ScheduleStore, StoredFire

PREFIX = "raypipe-schedules-"
#: Seconds between ticks (a tick is cheap: a few queries, and a listing of each watched folder).
DEFAULT_TICK_S = 5.0


def store_id(db_url: str) -> str:
    return hashlib.sha256(redact(db_url).encode()).hexdigest()[:12]


def controller_name(db_url: str) -> str:
    return PREFIX + store_id(db_url)


def _kv_key(sid: str) -> bytes:
    return f"{PREFIX}config:{sid}".encode()


class ScheduleController:
    """The actor (see the module docstring)."""

    def __init__(self, sid: str) -> None:
        config = kv.get_json(_kv_key(sid))
        if config is None:
            raise RuntimeError(f"no schedules configuration {sid!r} in Ray's KV")
        self.tick_s: float = float(config.get("tick_s") or 0.0)
        self.meta = MetadataStore(actor_url(config["db"], os.environ))
        self.registry = ModelRegistry(self.meta)
        self.store = ScheduleStore(self.meta)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.ticker = Ticker(
            self.store,
            Ports(launch=self._launch, stop=self._stop, driver_alive=self._alive, model_version=self._model_version),
        )
        self.started_at = time.time()
        self.ticks = 0
        self._stop_event = threading.Event()
        if self.tick_s > 0:
            threading.Thread(target=self._run, name="schedules", daemon=True).start()

    # ------------------------------------------------------------------ ports
    def _launch(self, run_id: str, pipeline_file: str, owner: str | None, workdir: str, log_path: Path) -> None:
        import ray

        address = ray.get_runtime_context().gcs_address
        self.procs[run_id] = start_driver(
            sys.executable,
            run_args(pipeline_file, run_id, owner),
            address=address,
            db=self.meta.url,
            cwd=workdir,
            log_path=log_path,
        )

    def _alive(self, run_id: str) -> bool | None:
        proc = self.procs.get(run_id)
        if proc is not None:
            return proc.poll() is None
        try:
            rec = self.meta.get_run(run_id)
        except RunNotFoundError:
            return None
        return pid_alive(rec.driver_pid) if rec.status == "running" else False

    def _stop(self, run_id: str) -> None:
        proc = self.procs.get(run_id)
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            return
        try:
            rec = self.meta.get_run(run_id)
        except RunNotFoundError:
            return
        if rec.status == "running" and rec.driver_pid and pid_alive(rec.driver_pid):
            os.kill(rec.driver_pid, signal.SIGTERM)

    def _model_version(self, model: str, alias: str | None) -> int | None:
        try:
            if alias is not None:
                return self.registry.get(f"{model}@{alias}").version
            versions = self.registry.versions(model)
        except ModelNotFoundError:
            return None
        return max((v.version for v in versions), default=None)

    # ------------------------------------------------------------------ methods
    def ping(self) -> str:
        return "ok"

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """One tick at ``now`` (default: the time); the fires recorded.  Tests tick with their clock."""
        with self.lock:
            self.ticks += 1
            return [f.to_dict() for f in self.ticker.tick(time.time() if now is None else now)]

    def status(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "pid": os.getpid(),
            "tick_s": self.tick_s,
            "ticks": self.ticks,
            "errors": dict(self.ticker.last_errors),
            "drivers": {k: p.poll() is None for k, p in self.procs.items()},
        }

    def wait_runs(self, timeout_s: float = 120.0) -> dict[str, int | None]:
        """Wait for the drivers this instance started; their exit codes (None: still going)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return {k: p.poll() for k, p in self.procs.items()}

    def _run(self) -> None:
        while not self._stop_event.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the store was unreachable: the next tick tries again
                pass


def start_controller(db_url: str, *, tick_s: float = DEFAULT_TICK_S) -> Any:
    """Get or create the controller of the store at ``db_url`` (``tick_s`` 0: it ticks only when
    told; a running controller keeps its configuration)."""
    sid = store_id(db_url)
    config = {"db": redact(db_url), "tick_s": tick_s}
    if find_actor(controller_name(db_url)) is None or kv.get_json(_kv_key(sid)) is None:
        kv.put_json(_kv_key(sid), config)
    env = actor_env(db_url)
    return get_or_create(
        controller_name(db_url),
        ScheduleController,
        (sid,),
        head=True,
        max_concurrency=4,
        runtime_env={"env_vars": env} if env else None,
    )


def find_controller(db_url: str) -> Any | None:
    return find_actor(controller_name(db_url))


def live_status(db_url: str) -> dict[str, Any] | None:
    """The running controller's :meth:`ScheduleController.status` (None: none runs)."""
    import ray

    handle = find_controller(db_url)
    if handle is None:
        return None
    status: dict[str, Any] = ray.get(handle.status.remote(), timeout=30)
    return status


__all__ = ["ScheduleController", "StoredFire", "controller_name", "find_controller", "live_status", "start_controller"]
