"""The loop's controller actor: the named detached actor (``raypipe-loop-<app>``, namespace
``raypipe``, on the head node, restartable) that ticks a :class:`~raypipe.loop.core.LoopCore`
on a thread with the real ports.  Every step is an event in the metadata store's
``loop_events`` (series = the cycle id), so ``raypipe loop status APP`` prints the timeline
and a restarted controller continues the cycle it was in.

Retraining runs are launched as driver processes of the runner's entry point
(``python -m raypipe.runner``, like ``ray job submit`` would), joined to the same cluster,
with a run id the loop chooses and the metadata store in their environment (never on their
command line, see :mod:`raypipe.loop.launch`); their stages go through raypipe's scheduler
like any other run's.  A driver that dies is resumed up to ``retrain.max_resumes`` times.  Relative paths
in the pipeline resolve against the directory the app was deployed from, which must exist
on the head node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raypipe._ray import kv
from raypipe.exceptions import ModelNotFoundError, RaypipeError, RunNotFoundError
from raypipe.failures import GATE
from raypipe.failures import parse as parse_failure
from raypipe.loop.core import LOOP_SERIES, LoopCore, Ports, cycle_notification
from raypipe.loop.cut import register_stage, retraining_pipeline
from raypipe.loop.launch import resume_args, retraining_yaml, run_args, start_driver
from raypipe.loop.reference import attach_monitor
from raypipe.monitoring.monitor import get_monitor
from raypipe.notify import Notifier
from raypipe.principal import Principal, set_process_principal
from raypipe.secrets import actor_url
from raypipe.serving import app as serve_app
from raypipe.serving.rollout.ops import platform_notify, rollout_start, rollout_status
from raypipe.serving.rollout.settings import RolloutSpec
from raypipe.serving.spec import RetrainSpec, ServeSpec
from raypipe.store.artifacts import ArtifactStore, root_of
from raypipe.store.metadata import MetadataStore, pid_alive
from raypipe.store.registry import ModelRegistry
from raypipe.store.rollouts import LOOP_FINAL, LoopStore

LOOP_PREFIX = "raypipe-loop-"


def loop_name(app: str) -> str:
    return LOOP_PREFIX + app


def _kv_key(app: str) -> bytes:
    return (LOOP_PREFIX + "config:" + app).encode()


def write_config(app: str, config: Mapping[str, Any] | None) -> None:
    kv.put_json(_kv_key(app), None if config is None else json.loads(json.dumps(dict(config), default=str)))


def read_config(app: str) -> dict[str, Any] | None:
    config: dict[str, Any] | None = kv.get_json(_kv_key(app))
    return config


class LoopController:
    """The actor (see :func:`raypipe.loop.arming.start_loop`).  Its configuration (the serve spec, the retraining
    pipeline, the metadata store, the working directory, the cluster address) is in Ray's
    internal KV, so a restarted actor finds it; the unfinished cycle is restored from the
    event log."""

    def __init__(self, app: str) -> None:
        config = read_config(app)
        if config is None:
            raise RuntimeError(f"no loop configuration for app {app!r} in Ray's KV")
        self.app = app
        self.config = config
        self.spec = ServeSpec.model_validate(config["spec"])
        assert self.spec.retrain is not None and self.spec.monitor is not None
        self.retrain: RetrainSpec = self.spec.retrain
        self.pipeline: dict[str, Any] = config["pipeline"]
        #: The stage whose ``registration`` output names the retrained version.
        self.register_stage = register_stage(
            retraining_pipeline(self.pipeline, self.retrain, app, self.spec.model), self.spec.model
        )
        self.workdir = config["workdir"]
        self.loopdir = Path(config["loopdir"])
        #: Who armed the loop: its retraining runs, rollouts and records act for them.
        self.actor: str | None = config.get("actor")
        if self.actor:
            set_process_principal(Principal(self.actor, source="delegated"))
        self.meta = MetadataStore(actor_url(config["db"], os.environ))
        self.registry = ModelRegistry(self.meta)
        self.store = LoopStore(self.meta)
        #: Who hears of its cycles and rollouts: the pipeline's ``notify``, else the platform config's.
        own = self.pipeline.get("notify")
        self.notify: list[dict[str, Any]] = list(own) if own is not None else platform_notify(self.meta)
        self.notifier = Notifier(self.notify, source=f"loop {app}: ") if self.notify else None
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.last_error: str | None = None
        self.core = LoopCore(
            app, self._ports(), max_resumes=self.retrain.max_resumes, history=self.store.all_events(app)
        )
        latest = self.store.latest(app)
        if latest is not None and latest != LOOP_SERIES:
            self.core.restore(self.store.events(app, latest), LOOP_FINAL)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"loop-{app}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ ports
    def _monitor(self) -> Any:
        handle = get_monitor(self.app)
        if handle is None:
            raise RaypipeError(f"app {self.app!r} has no drift monitor")
        return handle

    def _ports(self) -> Ports:
        import ray

        def poll(since: int) -> Mapping[str, Any]:
            return ray.get(self._monitor().poll.remote(since), timeout=60)

        def begin(event_id: int, note: str) -> Any:
            return ray.get(self._monitor().begin_retraining.remote(event_id, note), timeout=60)

        def end(ok: bool) -> Any:
            return ray.get(self._monitor().end_retraining.remote(ok), timeout=60)

        return Ports(
            poll=poll,
            begin_retraining=begin,
            end_retraining=end,
            start_run=self._start_run,
            run_state=self._run_state,
            resume_run=self._resume_run,
            registered=self._registered,
            add_candidate=self._add_candidate,
            start_rollout=self._start_rollout,
            rollout_state=self._rollout_state,
            promoted=self._promoted,
            rolled_back=self._rolled_back,
            link=lambda version, kind, value: self.registry.link(self.spec.model, version, kind, value),
            record=self._record,
        )

    def _record(self, series: str, event: str, detail: Mapping[str, Any]) -> Any:
        out = self.store.record(self.app, series, event, detail)
        note = cycle_notification(self.app, series, event, detail, LOOP_FINAL)
        if note is not None and self.notifier is not None:
            self.notifier.notify(note)
        return out

    def _launch(self, key: str, args: list[str]) -> None:
        import ray

        address = ray.get_runtime_context().gcs_address
        self.procs[key] = start_driver(
            sys.executable,
            args,
            address=address,
            db=self.meta.url,
            cwd=self.workdir,
            log_path=self.loopdir / f"{key}.log",
        )

    def _start_run(self, cycle_id: str, drift: Mapping[str, Any]) -> str:
        doc = retraining_pipeline(self.pipeline, self.retrain, self.app, self.spec.model)
        self.loopdir.mkdir(parents=True, exist_ok=True)
        path = self.loopdir / f"{cycle_id}.yaml"
        path.write_text(retraining_yaml(doc, app=self.app, cycle_id=cycle_id, drift=drift), encoding="utf-8")
        run_id = f"{doc['name']}-retrain-{cycle_id}"[:200]
        self._launch(run_id, run_args(str(path), run_id, self.actor))
        return run_id

    def _resume_run(self, run_id: str) -> None:
        self._launch(run_id, resume_args(run_id, self.actor))

    def _run_state(self, run_id: str) -> dict[str, Any]:
        proc = self.procs.get(run_id)
        alive = proc is not None and proc.poll() is None
        try:
            rec = self.meta.get_run(run_id)
        except RunNotFoundError:
            if alive:
                return {"status": "starting", "driver_alive": True}
            tail = _tail(self.loopdir / f"{run_id}.log")
            return {"status": None, "driver_alive": False, "error": f"the retraining driver exited: {tail}"}
        if proc is None and rec.status == "running":  # a driver started by a previous controller
            alive = pid_alive(rec.driver_pid)
        gate = None
        for sr in self.meta.stage_runs(run_id):
            failure = parse_failure(sr.status, sr.error)
            if failure is not None and failure.category == GATE:
                gate = f"stage {sr.stage}: {failure.message}"
        return {"status": rec.status, "error": rec.error, "driver_alive": alive, "gate": gate}

    def _registered(self, run_id: str) -> dict[str, Any] | None:
        rec = self.meta.done_stages(run_id).get(self.register_stage)
        if rec is None:
            return None
        ref = self.meta.io_of(rec.id, "out").get("registration")
        if ref is None:
            return None
        doc = ArtifactStore(root_of(ref.uri)).get_value(ref)
        found = [v for v in self.registry.versions(self.spec.model) if v.sha256 == doc.get("model_sha256")]
        if not found:
            return None
        try:
            production: int | None = self.registry.get(f"{self.spec.model}@production").version
        except ModelNotFoundError:
            production = None
        return {"version": found[0].version, "production": production, "metrics": found[0].metrics}

    def _add_candidate(self, version: int) -> str:
        mv = self.registry.get(f"{self.spec.model}:{version}")
        st = serve_app.status(self.app)
        base = max(st.variants.values(), key=lambda v: v.weight)
        c = self.retrain.candidate
        options: dict[str, Any] = {
            "ray_actor_options": c.ray_actor_options or dict(base.ray_actor_options),
            "fail_rate": c.fail_rate,
        }
        if c.replicas is not None or not base.autoscaling:
            options["replicas"] = c.replicas or base.replicas
        else:
            options["autoscaling"] = base.autoscaling
        if c.max_ongoing_requests is not None:
            options["max_ongoing_requests"] = c.max_ongoing_requests
        label = f"v{version}"
        if label not in st.variants:
            serve_app.change_variants(self.app, self.registry, add=[(mv, options)])
        return label

    def _start_rollout(self, label: str) -> str:
        spec = RolloutSpec(app=self.app, candidate=label, **self.retrain.rollout.model_dump())
        return str(rollout_start(spec, self.meta, notify=self.notify)["rollout_id"])

    def _rollout_state(self, rollout_id: str) -> dict[str, Any]:
        st = rollout_status(self.app, self.meta)
        if st["rollout_id"] != rollout_id:
            return {"state": "failed", "reason": f"rollout {rollout_id} was replaced by {st['rollout_id']}"}
        live = st.get("live") or {}
        reason = live.get("end_reason")
        if reason is None and st["events"]:
            last = st["events"][-1]["detail"]
            reason = last.get("reason") or last.get("note")
        return {"state": st["state"], "reason": reason, "weights": live.get("weights")}

    def _promoted(self, version: int, label: str, rollout: Mapping[str, Any]) -> dict[str, Any]:
        ref_id = attach_monitor(self.spec, self.registry, version=version, retrained=True)
        retired = []
        if not self.retrain.keep_previous:
            st = serve_app.status(self.app)
            retired = [k for k, v in st.variants.items() if k != label and v.weight == 0 and not v.shadow]
            if retired:
                serve_app.change_variants(self.app, self.registry, remove=retired)
        return {"variant": label, "monitor_reference": ref_id, "retired": retired}

    def _rolled_back(self, label: str) -> None:
        st = serve_app.status(self.app)
        if label in st.variants and st.variants[label].weight == 0:
            serve_app.change_variants(self.app, self.registry, remove=[label])

    # ------------------------------------------------------------------ methods
    def ping(self) -> str:
        return "ok"

    def status(self) -> dict[str, Any]:
        locked = self.lock.acquire(timeout=2.0)
        try:
            st = self.core.status()
            st["last_error"] = self.last_error
            st["retrain"] = self.retrain.model_dump(mode="json")
            return st
        finally:
            if locked:
                self.lock.release()

    def stop(self, grace_s: float = 20.0) -> None:
        """Disarm, and stop a retraining run in flight: its driver gets SIGTERM (it cancels
        its stages and records the run ``stopped``), SIGKILL after ``grace_s``."""
        self._stop.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                try:
                    self.core.tick()
                    self.last_error = None
                except Exception as e:  # noqa: BLE001 - a port failed: record once, retry next tick
                    msg = f"{type(e).__name__}: {e}"[:2000]
                    if msg != self.last_error:
                        self.last_error = msg
                        try:
                            series = self.core.cycle.cycle_id if self.core.cycle else LOOP_SERIES
                            self.store.record(self.app, series, "error", {"error": msg})
                        except Exception:  # noqa: BLE001 - the status still shows it
                            pass
            self._stop.wait(self.retrain.poll_s)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
