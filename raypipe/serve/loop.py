"""The closed loop of a served app: drift -> retraining through the scheduler -> evaluation
gate -> canary -> promotion or rollback, with one lineage record from the drift event to the
model that replaced the old one.

Three layers, the first two without Ray:

* :func:`retraining_pipeline` (pure): the pipeline document a retraining runs: the app's
  pipeline with ``retrain.set`` applied (the fresh data source), cut to the retraining path
  (``retrain.stages`` and everything they depend on; default: what the deploy stage depends
  on), every stage at ``retrain.priority``.  It must register the app's model.
* :class:`LoopCore`: the state machine over :class:`Ports` (the monitor's events, a run
  launcher, the registry, the app's variants, the rollout controller, the event log) and
  one cycle at a time::

      idle --drift event that triggers--> retraining (a pipeline run, its own driver process)
        retraining --gate missed--> gate_failed            (production untouched)
        retraining --run failed--> retrain_failed          (a dead driver is resumed first)
        retraining --same model as production--> no_new_model
        retraining --registered vN--> canary (vN deployed at 0%, a rollout from the production variant)
        canary --passed every step--> promoted (alias production -> vN, the monitor's reference
                                      becomes vN's training profile, the old variant retired)
        canary --guardrail--> rolled_back (vN at 0%, then removed; production untouched)

  A drift event while a cycle runs is recorded and not acted on (the monitor's debouncer
  also holds "a retraining in flight"), so a retraining is never started twice.  After a
  failed cycle the drift episode stays open: the loop retrains again only when drift ends
  and comes back (no retry storm against a broken pipeline).
* :class:`LoopController`: the named detached actor (``raypipe-loop-<app>``, namespace
  ``raypipe``, on the head node, restartable) that ticks a :class:`LoopCore` on a thread
  with the real ports.  Every step is an event in the metadata store's ``loop_events``
  (series = the cycle id), so ``raypipe loop status APP`` prints the timeline and a
  restarted controller continues the cycle it was in.

Retraining runs are launched as ``raypipe run`` driver processes (like ``ray job
submit`` would), joined to the same cluster, with a run id the loop chooses; their stages
go through raypipe's scheduler like any other run's.  A driver that dies is resumed
(``raypipe resume``) up to ``retrain.max_resumes`` times.  Relative paths in the pipeline
resolve against the directory the app was deployed from, which must exist on the head node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raypipe.config import ConfigSource, apply_overrides, parse_config
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.failures import GATE
from raypipe.failures import parse as parse_failure
from raypipe.serve.actors import singleton_options
from raypipe.serve.spec import RetrainSpec, ServeSpec, ref_text

NAMESPACE = "raypipe"
LOOP_PREFIX = "raypipe-loop-"
#: The series of events that belong to no cycle (armed, stopped, drift not acted on).
LOOP_SERIES = "loop"
#: Rollout states after which the canary is over.
ROLLOUT_DONE = ("promoted", "rolled_back", "aborted", "failed")


def loop_name(app: str) -> str:
    return LOOP_PREFIX + app


# --------------------------------------------------------------------------- the pipeline


def _closure(stages: Sequence[Mapping[str, Any]], roots: Sequence[str]) -> list[str]:
    by_name = {str(s["name"]): s for s in stages}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in by_name:
            raise ConfigError(f"retrain.stages: no stage named {name!r}; stages are: {', '.join(by_name)}")
        seen.add(name)
        s = by_name[name]
        ups = list(s.get("depends_on") or []) + [str(r).split(".", 1)[0] for r in (s.get("inputs") or {}).values()]
        todo.extend(ups)
    return [n for n in by_name if n in seen]  # in the pipeline's order


def retraining_pipeline(doc: Mapping[str, Any], retrain: RetrainSpec, app: str, model: str) -> dict[str, Any]:
    """The pipeline document of a retraining run (see the module docstring).  Raises
    ConfigError naming the problem: an override that does not apply, an unknown stage, a
    path that registers no version of ``model``."""
    overrides = [f"{k}={json.dumps(v)}" for k, v in retrain.set.items()]
    try:
        data = apply_overrides(dict(doc), overrides)
    except ConfigError as e:
        raise ConfigError(f"retrain.set: {e}") from None
    stages = list(data.get("stages") or [])
    if retrain.stages is not None:
        roots = list(retrain.stages)
    else:
        deploys = [s for s in stages if s.get("kind") == "deploy" and (s.get("params") or {}).get("app") == app] or [
            s for s in stages if s.get("kind") == "deploy"
        ]
        roots = (
            [u for d in deploys for u in _closure(stages, [str(d["name"])]) if u != d["name"]]
            if deploys
            else [str(s["name"]) for s in stages]
        )
    keep = [n for n in _closure(stages, roots) if not any(s["name"] == n and s.get("kind") == "deploy" for s in stages)]
    if not keep:
        raise ConfigError("retrain: the retraining path is empty; list its stages in retrain.stages")
    out_stages = []
    for s in stages:
        if s["name"] not in keep:
            continue
        s = {**s, "priority": retrain.priority}
        if retrain.team is not None:
            s["team"] = retrain.team
        s["depends_on"] = [d for d in s.get("depends_on") or [] if d in keep]
        out_stages.append(s)
    registers = [
        s["name"] for s in out_stages if s.get("kind") == "register" and (s.get("params") or {}).get("name") == model
    ]
    if not registers:
        raise ConfigError(
            f"retrain: the retraining path ({', '.join(keep)}) has no register stage for model {model!r}; "
            "the loop needs the retrained model registered to roll it out"
        )
    reg = next(s for s in out_stages if s["name"] == registers[0])
    if "profile" not in (reg.get("inputs") or {}):
        raise ConfigError(
            f"retrain: stage {reg['name']} registers {model!r} without a `profile` input; after a promotion the "
            "drift monitor compares traffic with the new model's training profile: add "
            "inputs: {profile: <data.profile stage>.profile}"
        )
    out = {**data, "stages": out_stages}
    parse_config(out, ConfigSource(path=f"<retraining pipeline of app {app}>"))  # schema errors now, not later
    return out


def register_stage(doc: Mapping[str, Any], model: str) -> str:
    """The name of the stage that registers ``model`` in a retraining pipeline."""
    for s in doc["stages"]:
        if s.get("kind") == "register" and (s.get("params") or {}).get("name") == model:
            return str(s["name"])
    raise ConfigError(f"no register stage for model {model!r}")


# --------------------------------------------------------------------------- the core


@dataclass
class Ports:
    """What the loop does to the world (real ones in :class:`LoopController`, fakes in tests)."""

    #: Monitor events with ``event_id > since``: ``{"started_at", "events": [...]}``.
    poll: Callable[[int], Mapping[str, Any]]
    begin_retraining: Callable[[int, str], Any]
    end_retraining: Callable[[bool], Any]
    #: (cycle id, drift event) -> the run id of the retraining run it launched.
    start_run: Callable[[str, Mapping[str, Any]], str]
    #: run id -> {"status", "error", "driver_alive", "gate": message of a missed gate or None}.
    run_state: Callable[[str], Mapping[str, Any]]
    resume_run: Callable[[str], Any]
    #: run id -> {"version", "production" (version or None), "metrics"}, or None (nothing registered).
    registered: Callable[[str], Mapping[str, Any] | None]
    #: version -> the variant label it is deployed as (at weight 0).
    add_candidate: Callable[[int], str]
    #: candidate label -> rollout id.
    start_rollout: Callable[[str], str]
    #: rollout id -> {"state", "reason", "weights"}.
    rollout_state: Callable[[str], Mapping[str, Any]]
    #: (version, candidate label, rollout state) after a promotion: new reference, old variant retired.
    promoted: Callable[[int, str, Mapping[str, Any]], Mapping[str, Any]]
    #: candidate label after a rollback: the variant removed.
    rolled_back: Callable[[str], Any]
    #: (version, kind, value): a registry link.
    link: Callable[[int, str, Mapping[str, Any]], Any]
    #: (series, event, detail): the event log.
    record: Callable[[str, str, Mapping[str, Any]], Any]


def _instance(started_at: Any) -> str:
    return f"{float(started_at):.6f}" if started_at is not None else "?"


def drift_detail(ev: Mapping[str, Any]) -> dict[str, Any]:
    """What a cycle keeps of the monitor's event (also the ``drift_event`` registry link)."""
    keys = ("variant", "kind", "windows", "trigger", "note", "signals", "drifted_features", "drift_share")
    out = {"monitor_event_id": ev.get("event_id"), "detected_at": ev.get("at"), **{k: ev.get(k) for k in keys}}
    if ev.get("statistics") is not None:
        out["statistics"] = ev["statistics"]
    if ev.get("performance") is not None:
        out["performance"] = ev["performance"]
    return out


class LoopCore:
    """One app's loop (see the module docstring).  ``tick()`` does one step; the actor calls it
    every ``retrain.poll_s``."""

    def __init__(
        self,
        app: str,
        ports: Ports,
        *,
        max_resumes: int = 2,
        clock: Callable[[], float] = time.time,
        history: Sequence[Any] = (),
    ) -> None:
        self.app = app
        self.ports = ports
        self.max_resumes = max_resumes
        self.clock = clock
        self.since = 0
        self.monitor_started: float | None = None
        #: Per monitor instance (its start time), the last event id a previous controller saw
        #: (``history``: the app's stored loop events), so a new controller never acts on them again.
        self.seen: dict[str, int] = {}
        for e in history:
            if e.event == "drift" and e.detail.get("monitor_started_at") is not None:
                key = _instance(e.detail["monitor_started_at"])
                self.seen[key] = max(self.seen.get(key, 0), int(e.detail.get("monitor_event_id") or 0))
        #: The cycle in progress: cycle_id, drift, phase (retraining | canary), run_id, resumes,
        #: version, label, rollout_id.
        self.cycle: dict[str, Any] | None = None
        self.cycles = 0
        self.outcomes: dict[str, int] = {}

    @property
    def state(self) -> str:
        return "idle" if self.cycle is None else str(self.cycle["phase"])

    def tick(self) -> None:
        self._poll()
        if self.cycle is None:
            return
        try:
            if self.cycle["phase"] == "retraining":
                self._check_run()
            elif self.cycle["phase"] == "canary":
                self._check_rollout()
        except RaypipeError as e:
            self._fail("failed", f"{e}")

    # ------------------------------------------------------------------ drift
    def _poll(self) -> None:
        got = self.ports.poll(self.since)
        started = got.get("started_at")
        if started != self.monitor_started:
            # A monitor instance first seen by this controller (what an earlier controller saw of
            # it is skipped), or a restarted monitor (its event ids start again from 1).
            base = self.seen.get(_instance(started), 0) if self.monitor_started is None else 0
            self.monitor_started = started
            if base != self.since:
                self.since = base
                got = self.ports.poll(base)
        for ev in got.get("events") or []:
            self.since = max(self.since, int(ev["event_id"]))
            detail = drift_detail(ev)
            detail["monitor_started_at"] = started
            if ev.get("trigger") and self.cycle is None:
                self._start_cycle(detail)
            else:
                if self.cycle is not None:
                    detail["note"] = f"not acted on: cycle {self.cycle['cycle_id']} is {self.cycle['phase']}"
                self.ports.record(LOOP_SERIES, "drift", detail)

    def _start_cycle(self, drift: dict[str, Any]) -> None:
        self.cycles += 1
        cycle_id = f"{self.app}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(self.clock()))}-{uuid.uuid4().hex[:4]}"
        self.cycle = {"cycle_id": cycle_id, "drift": drift, "phase": "retraining", "run_id": None, "resumes": 0}
        self.ports.record(cycle_id, "drift", drift)
        self.ports.begin_retraining(int(drift["monitor_event_id"] or 0), f"cycle {cycle_id}")
        try:
            run_id = self.ports.start_run(cycle_id, drift)
        except (RaypipeError, OSError) as e:
            self._fail("retrain_failed", f"could not start the retraining run: {e}")
            return
        self.cycle["run_id"] = run_id
        self.ports.record(cycle_id, "retrain_started", {"run_id": run_id})

    # ------------------------------------------------------------------ retraining
    def _check_run(self) -> None:
        c = self.cycle
        assert c is not None
        st = self.ports.run_state(c["run_id"])
        status = st.get("status")
        if status == "succeeded":
            self._after_run()
            return
        if st.get("gate"):
            self._fail("gate_failed", str(st["gate"]), run_id=c["run_id"])
            return
        if st.get("driver_alive"):
            return  # starting or running
        if status in ("running", "interrupted", "starting", None) and c["resumes"] < self.max_resumes:
            c["resumes"] += 1
            self.ports.resume_run(c["run_id"])
            self.ports.record(
                c["cycle_id"],
                "retrain_resumed",
                {"run_id": c["run_id"], "resume": c["resumes"], "why": f"its driver is gone (run {status})"},
            )
            return
        self._fail("retrain_failed", st.get("error") or f"run {c['run_id']} is {status}", run_id=c["run_id"])

    def _after_run(self) -> None:
        c = self.cycle
        assert c is not None
        reg = self.ports.registered(c["run_id"])
        if reg is None:
            self._fail("retrain_failed", f"run {c['run_id']} succeeded but registered no model", run_id=c["run_id"])
            return
        version = int(reg["version"])
        c["version"] = version
        if reg.get("production") == version:
            self._fail(
                "no_new_model",
                f"the retraining produced v{version}, the version already in production (same data, same model)",
                run_id=c["run_id"],
            )
            return
        self.ports.link(version, "drift_event", {"app": self.app, "cycle_id": c["cycle_id"], **c["drift"]})
        self.ports.link(version, "retraining", {"app": self.app, "cycle_id": c["cycle_id"], "run_id": c["run_id"]})
        self.ports.record(
            c["cycle_id"],
            "retrain_finished",
            {"run_id": c["run_id"], "version": version, "metrics": reg.get("metrics") or {}},
        )
        label = self.ports.add_candidate(version)
        c["label"] = label
        rollout_id = self.ports.start_rollout(label)
        c["rollout_id"] = rollout_id
        c["phase"] = "canary"
        self.ports.record(
            c["cycle_id"], "canary_started", {"version": version, "variant": label, "rollout_id": rollout_id}
        )

    # ------------------------------------------------------------------ canary
    def _check_rollout(self) -> None:
        c = self.cycle
        assert c is not None
        st = self.ports.rollout_state(c["rollout_id"])
        state = st.get("state")
        if state not in ROLLOUT_DONE:
            return
        if state == "promoted":
            try:
                detail = dict(self.ports.promoted(int(c["version"]), c["label"], st) or {})
            except Exception as e:  # noqa: BLE001 - the promotion stands; what failed after it is recorded
                self.ports.end_retraining(True)
                detail = {"error": f"after the promotion: {type(e).__name__}: {e}"}
            self._end("promoted", {"version": c["version"], "rollout_id": c["rollout_id"], **detail})
            return
        self.ports.rolled_back(c["label"])
        self.ports.end_retraining(False)
        self._end(
            "rolled_back",
            {
                "version": c["version"],
                "rollout_id": c["rollout_id"],
                "rollout_state": state,
                "reason": st.get("reason"),
                "production": "untouched",
            },
        )

    # ------------------------------------------------------------------ endings
    def _fail(self, event: str, reason: str, **detail: Any) -> None:
        c = self.cycle
        if c is None:
            return
        if c.get("label"):  # deployed at 0% for a canary that did not finish
            try:
                self.ports.rolled_back(c["label"])
            except Exception as e:  # noqa: BLE001 - the failure is what gets recorded
                detail["cleanup_error"] = str(e)
        self.ports.end_retraining(False)
        self._end(event, {"reason": reason, **detail})

    def _end(self, event: str, detail: Mapping[str, Any]) -> None:
        c = self.cycle
        assert c is not None
        self.ports.record(c["cycle_id"], event, dict(detail))
        self.outcomes[event] = self.outcomes.get(event, 0) + 1
        self.cycle = None

    # ------------------------------------------------------------------ restart
    def restore(self, events: Sequence[Any], final: Sequence[str]) -> None:
        """Continue the unfinished cycle of a previous controller (``events``: the latest
        cycle's stored events, oldest first)."""
        if not events or events[-1].event in final or events[0].series == LOOP_SERIES:
            return
        c: dict[str, Any] = {"cycle_id": events[0].series, "phase": "retraining", "run_id": None, "resumes": 0}
        for e in events:
            if e.event == "drift":
                c["drift"] = dict(e.detail)
            elif e.event == "retrain_started":
                c["run_id"] = e.detail.get("run_id")
            elif e.event == "retrain_resumed":
                c["resumes"] = int(e.detail.get("resume") or 0)
            elif e.event == "retrain_finished":
                c["version"] = e.detail.get("version")
            elif e.event == "canary_started":
                c.update(phase="canary", label=e.detail.get("variant"), rollout_id=e.detail.get("rollout_id"))
        self.cycle = c
        if c["run_id"] is None:
            self._fail("retrain_failed", "the loop controller restarted before the retraining run started")
            return
        if "drift" in c:
            self.ports.begin_retraining(int(c["drift"].get("monitor_event_id") or 0), f"cycle {c['cycle_id']}")

    def status(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "state": self.state,
            "cycle": dict(self.cycle) if self.cycle else None,
            "cycles": self.cycles,
            "outcomes": dict(self.outcomes),
            "monitor_events_seen": self.since,
        }


# --------------------------------------------------------------------------- the actor


def _kv_key(app: str) -> bytes:
    return (LOOP_PREFIX + "config:" + app).encode()


def write_config(app: str, config: Mapping[str, Any] | None) -> None:
    from ray.experimental import internal_kv

    if config is None:
        internal_kv._internal_kv_del(_kv_key(app), namespace=NAMESPACE)
    else:
        blob = json.dumps(dict(config), default=str).encode()
        internal_kv._internal_kv_put(_kv_key(app), blob, overwrite=True, namespace=NAMESPACE)


def read_config(app: str) -> dict[str, Any] | None:
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get(_kv_key(app), namespace=NAMESPACE)
    return json.loads(blob) if blob else None


class LoopController:
    """The actor (see :func:`start_loop`).  Its configuration (the serve spec, the retraining
    pipeline, the metadata store, the working directory, the cluster address) is in Ray's
    internal KV, so a restarted actor finds it; the unfinished cycle is restored from the
    event log."""

    def __init__(self, app: str) -> None:
        from raypipe.store.metadata import MetadataStore
        from raypipe.store.registry import ModelRegistry
        from raypipe.store.rollouts import LOOP_FINAL, LoopStore

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
        self.meta = MetadataStore(config["db"])
        self.registry = ModelRegistry(self.meta)
        self.store = LoopStore(self.meta)
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
        from raypipe.serve.monitor import get_monitor

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
            record=lambda series, event, detail: self.store.record(self.app, series, event, detail),
        )

    def _launch(self, key: str, args: list[str]) -> None:
        import ray

        self.loopdir.mkdir(parents=True, exist_ok=True)
        address = ray.get_runtime_context().gcs_address
        log = open(self.loopdir / f"{key}.log", "ab")  # noqa: SIM115 - the child keeps it open
        env = {**os.environ, "RAY_ADDRESS": address, "RAYPIPE_DB": self.meta.url}
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "raypipe.cli", *args, "--address", address],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

    def _start_run(self, cycle_id: str, drift: Mapping[str, Any]) -> str:
        import yaml

        doc = retraining_pipeline(self.pipeline, self.retrain, self.app, self.spec.model)
        self.loopdir.mkdir(parents=True, exist_ok=True)
        path = self.loopdir / f"{cycle_id}.yaml"
        header = (
            f"# The retraining run of cycle {cycle_id} of app {self.app} (raypipe's closed loop),\n"
            f"# triggered by drift event {drift.get('monitor_event_id')} on {drift.get('variant')}: "
            f"{', '.join(drift.get('drifted_features') or []) or drift.get('kind')}\n"
        )
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        run_id = f"{doc['name']}-retrain-{cycle_id}"[:200]
        self._launch(run_id, ["run", str(path), "--run-id", run_id])
        return run_id

    def _resume_run(self, run_id: str) -> None:
        self._launch(run_id, ["resume", run_id, "--db", self.meta.url])

    def _run_state(self, run_id: str) -> dict[str, Any]:
        from raypipe.exceptions import RunNotFoundError
        from raypipe.store.metadata import pid_alive

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
        from raypipe.exceptions import ModelNotFoundError
        from raypipe.store.artifacts import ArtifactStore, root_of

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
        from raypipe.serve import app as serve_app

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
        from raypipe.serve.ops import rollout_start
        from raypipe.serve.rollout import RolloutSpec

        spec = RolloutSpec(app=self.app, candidate=label, **self.retrain.rollout.model_dump())
        return str(rollout_start(spec, self.meta)["rollout_id"])

    def _rollout_state(self, rollout_id: str) -> dict[str, Any]:
        from raypipe.serve.ops import rollout_status

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
        from raypipe.serve import app as serve_app

        ref_id = attach_monitor(self.spec, self.registry, version=version, retrained=True)
        retired = []
        if not self.retrain.keep_previous:
            st = serve_app.status(self.app)
            retired = [k for k, v in st.variants.items() if k != label and v.weight == 0 and not v.shadow]
            if retired:
                serve_app.change_variants(self.app, self.registry, remove=retired)
        return {"variant": label, "monitor_reference": ref_id, "retired": retired}

    def _rolled_back(self, label: str) -> None:
        from raypipe.serve import app as serve_app

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
                            series = self.core.cycle["cycle_id"] if self.core.cycle else LOOP_SERIES
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


# --------------------------------------------------------------------------- entry points


def reference_variant(spec: ServeSpec, registry: Any) -> int:
    """The version whose model and profile the monitor compares traffic with: ``monitor.variant``,
    else the variant serving ``@production``, else the one with the most traffic."""
    from raypipe.exceptions import ModelNotFoundError
    from raypipe.serve.spec import resolve

    resolved = resolve(spec, registry)
    if spec.monitor is not None and spec.monitor.variant is not None:
        want = ref_text(spec.monitor.variant)
        return next(r.version for r in resolved if want in (r.ref, r.label))
    try:
        prod = registry.get(f"{spec.model}@production").version
    except ModelNotFoundError:
        prod = None
    if prod is not None and any(r.version == prod for r in resolved):
        return int(prod)
    return max(resolved, key=lambda r: r.spec.weight).version


def attach_monitor(spec: ServeSpec, registry: Any, *, version: int | None = None, retrained: bool = False) -> str:
    """Start the app's drift monitor (or switch it to a new reference): the model of
    ``version`` (default: :func:`reference_variant`) and its training profile
    (``monitor.profile``, else the version's ``reference_profile`` link).  Returns the
    reference id ``MODEL:VERSION/<profile sha256[:12]>``."""
    import ray

    from raypipe.serve.monitor import get_monitor, start_monitor
    from raypipe.store.artifacts import ArtifactStore, root_of

    assert spec.monitor is not None
    version = reference_variant(spec, registry) if version is None else version
    mv = registry.get(f"{spec.model}:{version}")
    if spec.monitor.profile is not None and not retrained:
        ref = registry.meta.artifact(spec.monitor.profile)
    else:
        ref = registry.reference_profile(spec.model, version)
    if ref is None:
        raise RaypipeError(
            f"monitor: {spec.model} v{version} has no reference profile; register it with one (a register stage's "
            "input `profile: <data.profile stage>.profile`) or give monitor.profile (an artifact sha256 or URI)"
        )
    profile = ArtifactStore(root_of(ref.uri)).get_value(ref)
    if not isinstance(profile, Mapping) or not isinstance(profile.get("columns"), Mapping):
        raise RaypipeError(f"monitor: artifact {ref.sha256[:12]} is not a data profile (no 'columns')")
    ref_id = f"{spec.model}:{version}/{ref.sha256[:12]}"
    metrics = {k: v for k, v in (mv.metrics or {}).items() if isinstance(v, (int, float))}
    handle = get_monitor(spec.app)
    if handle is not None and retrained:
        ray.get(handle.set_reference.remote(dict(profile), dict(mv.model), None, metrics, True, ref_id), timeout=120)
        return ref_id
    start_monitor(
        spec.app,
        profile,
        mv.model,
        spec.monitor.monitor_spec(),
        reference_metrics=metrics,
        reference_id=ref_id,
    )
    return ref_id


def start_loop(
    spec: ServeSpec, pipeline: Mapping[str, Any], *, db: str, storage: str, workdir: str | None = None
) -> Any:
    """Arm the closed loop of a deployed app (get or create its controller; a new spec or
    pipeline replaces the old controller's configuration, its recorded cycles stay)."""
    import ray

    from raypipe.store.metadata import MetadataStore
    from raypipe.store.rollouts import LoopStore

    if spec.retrain is None or spec.monitor is None:
        raise RaypipeError(f"app {spec.app!r}: the loop needs `monitor` and `retrain` in its spec")
    doc = retraining_pipeline(pipeline, spec.retrain, spec.app, spec.model)  # errors here, on the caller
    config = {
        "spec": spec.model_dump(mode="json"),
        "pipeline": dict(pipeline),
        "db": db,
        "workdir": os.path.abspath(workdir or os.getcwd()),
        "loopdir": os.path.join(storage, "loops", spec.app),
    }
    old = find_loop(spec.app)
    if old is not None and read_config(spec.app) != json.loads(json.dumps(config, default=str)):
        stop_loop(spec.app, forget=False)
        old = None
    write_config(spec.app, config)
    if old is not None:
        return old
    meta = MetadataStore(db)
    try:
        LoopStore(meta).record(
            spec.app,
            LOOP_SERIES,
            "armed",
            {"retraining_stages": [s["name"] for s in doc["stages"]], "priority": spec.retrain.priority},
        )
    finally:
        meta.close()
    return (
        ray.remote(LoopController)
        .options(**singleton_options(loop_name(spec.app), head=True, max_concurrency=4))
        .remote(spec.app)
    )


def after_deploy(
    spec: ServeSpec, meta: Any, *, pipeline: Mapping[str, Any] | None = None, storage: str | None = None
) -> list[str]:
    """After the app serves: start its drift monitor (``monitor``) and arm its loop
    (``retrain``); the pipeline is ``retrain.pipeline`` or the one that deployed.  Returns
    what was done, for the run's log."""
    from raypipe.config import parse_yaml
    from raypipe.store.artifacts import resolve_root
    from raypipe.store.registry import ModelRegistry

    notes = []
    if spec.monitor is not None:
        notes.append(f"drift monitor against {attach_monitor(spec, ModelRegistry(meta))}")
    if spec.retrain is not None:
        if spec.retrain.pipeline is not None:
            path = Path(spec.retrain.pipeline)
            if not path.is_file():
                raise ConfigError(f"retrain.pipeline: {spec.retrain.pipeline}: no such file")
            data, _ = parse_yaml(path.read_text(encoding="utf-8"), str(path))
            storage = resolve_root(str(data.get("storage") or ".raypipe"))
            pipeline = {**data, "storage": storage}
        if pipeline is None:
            raise ConfigError("retrain.pipeline: give the pipeline YAML whose stages retrain the model")
        storage = storage or resolve_root(str(pipeline.get("storage") or ".raypipe"))
        start_loop(spec, pipeline, db=meta.url, storage=storage)
        notes.append(f"closed loop armed ({loop_name(spec.app)}; raypipe loop status {spec.app})")
    return notes


def find_loop(app: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(loop_name(app), namespace=NAMESPACE)
    except ValueError:
        return None


def stop_loop(app: str, *, forget: bool = True) -> bool:
    """Stop the app's loop controller and a retraining run in flight (its driver records it
    ``stopped``); ``forget``: also drop its configuration.  False if it had none."""
    import ray

    handle = find_loop(app)
    if handle is not None:
        try:
            ray.get(handle.stop.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - it is killed next anyway
            pass
        ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + 30
        while find_loop(app) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    had = read_config(app) is not None
    if forget:
        write_config(app, None)
    return handle is not None or had


def loop_status(app: str, meta: Any) -> dict[str, Any]:
    """The loop's live state (if its controller runs) and its timeline: loop events with the
    events of each cycle's rollout, oldest first."""
    import ray

    from raypipe.store.rollouts import LoopStore, RolloutStore

    store = LoopStore(meta)
    events = [e.to_dict() for e in store.all_events(app)]
    if not events:
        raise RaypipeError(f"app {app!r} has no closed loop recorded in {meta.location}; deploy it with `retrain:`")
    live = None
    note = None
    handle = find_loop(app) if ray.is_initialized() else None
    if handle is not None:
        try:
            live = ray.get(handle.status.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 - the record still answers
            note = f"the loop controller did not answer: {e}"
    rollouts = RolloutStore(meta)
    timeline = [{"source": "loop", **e} for e in events]
    for e in events:
        if e["event"] == "canary_started":
            rid = e["detail"].get("rollout_id")
            timeline += [
                {"source": "rollout", "cycle_id": e["cycle_id"], **r.to_dict()} for r in rollouts.events(app, rid)
            ]
    timeline.sort(key=lambda e: (e["at"], e["source"] != "loop"))
    return {
        "app": app,
        "live": live,
        "note": note,
        "cycles": store.series(app),
        "timeline": timeline,
    }


__all__ = [
    "LoopController",
    "after_deploy",
    "LoopCore",
    "Ports",
    "attach_monitor",
    "find_loop",
    "loop_status",
    "retraining_pipeline",
    "start_loop",
    "stop_loop",
]
