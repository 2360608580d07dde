"""Schedules and triggers (``raypipe schedule ...``): apply a pipeline file's ``triggers:``, list,
pause, resume, delete, and the history of a schedule's fires (see docs/schedules.md).

A schedule belongs to whoever applied it first (its owner: its runs act for them); applying
it again, pausing, resuming and deleting it is for its owner or an admin of the platform config
in force."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from raypipe import identity
from raypipe.api.pipelines import load
from raypipe.config import read_config
from raypipe.config.cron import CronExpr, describe
from raypipe.config.triggers import TriggersConfig
from raypipe.exceptions import ConfigError, ModelNotFoundError
from raypipe.principal import Principal, acting_as
from raypipe.runner.driver import metadata_url
from raypipe.runner.ray_session import connect_existing
from raypipe.schedules.controller import DEFAULT_TICK_S, controller_name, live_status, start_controller
from raypipe.schedules.core import Observed, State, initial_state
from raypipe.schedules.files import snapshot
from raypipe.schedules.ticker import read_stage
from raypipe.store.metadata import MetadataStore, open_existing
from raypipe.store.platform import PlatformStore
from raypipe.store.registry import ModelRegistry
from raypipe.store.schedules import ScheduleStore, StoredSchedule


def _check_owner(who: Principal, sched: StoredSchedule, what: str) -> None:
    if who.admin or sched.owner is None or sched.owner == who.name:
        return
    raise identity.IdentityError(
        f"schedule {sched.name} belongs to {sched.owner}: only its owner or an admin may {what} it (you are {who.name})"
    )


def _model_version(meta: MetadataStore, model: str, alias: str | None) -> int | None:
    reg = ModelRegistry(meta)
    try:
        if alias is not None:
            return reg.get(f"{model}@{alias}").version
        return max((v.version for v in reg.versions(model)), default=None)
    except ModelNotFoundError:
        return None


def next_due(sched: StoredSchedule) -> float | None:
    """When the schedule's ``schedule:`` fires next (None: it has none)."""
    spec = TriggersConfig.model_validate(sched.triggers).schedule
    if spec is None:
        return None
    state = State.from_json(sched.state)
    every = spec.every_s()
    if every is None:
        assert spec.cron is not None
        return CronExpr.parse(spec.cron).next_after(state.cursor, spec.timezone)
    k = int((state.cursor - state.anchor) // every) + 1
    return state.anchor + k * every


def apply(
    file: str | os.PathLike[str],
    *,
    db: str | None = None,
    address: str | None = None,
    start: bool = True,
    tick_s: float = DEFAULT_TICK_S,
) -> dict[str, Any]:
    """Create or replace the schedule of a pipeline file's ``triggers:`` (its state starts now:
    times, files and model versions from now on fire); then make sure the store's schedules
    controller runs on the cluster (``start``; ``address``: which cluster)."""
    cfg, source = read_config(file)
    if cfg.triggers is None:
        raise ConfigError(
            f'{file}: no `triggers:` section; add one, e.g. triggers: {{schedule: {{cron: "0 3 * * *"}}}}'
        )
    text = Path(file).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    triggers = cfg.triggers
    files = snapshot(triggers.on_data.path) if triggers.on_data else None
    if triggers.on_data is None:
        load(file)  # the whole plan: stage kinds, params, inputs
    else:
        try:
            stage = read_stage(doc, triggers.on_data.stage)
        except ValueError as e:
            raise ConfigError(f"{file}: {e}") from None
        if files:  # planned with the files a run would read now (none yet: each run's are checked then)
            load(file, [f"stages.{stage}.params.path={json.dumps(sorted(files))}"])
    name = triggers.name or cfg.name
    meta = MetadataStore(metadata_url(cfg, db))
    try:
        platform = PlatformStore(meta).latest()
        who = identity.principal_of(meta)
        with acting_as(who):
            identity.check_pipeline(cfg, platform, who, source)
            store = ScheduleStore(meta)
            old = store.find(name)
            if old is not None:
                _check_owner(who, old, "apply")
            observed = Observed(
                files=files,
                model_version=(
                    _model_version(meta, triggers.on_model.model, triggers.on_model.alias)
                    if triggers.on_model
                    else None
                ),
            )
            state = initial_state(triggers, time.time(), observed)
            created = store.apply(
                name,
                pipeline=cfg.name,
                owner=old.owner if old is not None and old.owner else who.name,
                pipeline_yaml=text,
                pipeline_path=str(Path(file).resolve()),
                workdir=os.getcwd(),
                triggers=triggers.model_dump(mode="json"),
                state=state.to_json(),
            )
            sched = store.get(name)
        url = meta.url
    finally:
        meta.close()
    out = {**_summary(sched), "created": created, "db": url, "controller": None}
    if start:
        connect_existing(address)
        start_controller(url, tick_s=tick_s)
        out["controller"] = controller_name(url)
    return out


def _summary(s: StoredSchedule) -> dict[str, Any]:
    t = TriggersConfig.model_validate(s.triggers)
    what = []
    if t.schedule is not None:
        what.append(
            f"cron {t.schedule.cron} ({t.schedule.timezone})" if t.schedule.cron else f"every {t.schedule.every}"
        )
    if t.on_data is not None:
        what.append(f"on_data {t.on_data.path}")
    if t.on_model is not None:
        what.append(f"on_model {t.on_model.model}" + (f"@{t.on_model.alias}" if t.on_model.alias else ""))
    due = next_due(s)
    return {
        "name": s.name,
        "pipeline": s.pipeline,
        "owner": s.owner,
        "paused": s.paused,
        "triggers": what,
        "concurrency": t.concurrency,
        "next_due": due,
        "next_due_text": describe(due, t.schedule.timezone) if due is not None and t.schedule else None,
        "created_by": s.created_by,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "pipeline_path": s.pipeline_path,
    }


def list_schedules(db: str | None = None) -> list[dict[str, Any]]:
    """Every schedule of the store, with its next time and its last fire."""
    meta = open_existing(db)
    try:
        store = ScheduleStore(meta)
        out = []
        for s in store.all():
            last = store.fires(s.name, limit=1)
            out.append({**_summary(s), "last_fire": last[0].to_dict() if last else None})
        return out
    finally:
        meta.close()


def _change(name: str, db: str | None, what: str) -> dict[str, Any]:
    meta = open_existing(db)
    try:
        who = identity.principal_of(meta)
        with acting_as(who):
            store = ScheduleStore(meta)
            sched = store.get(name)
            _check_owner(who, sched, what)
            if what == "delete":
                store.delete(name)
                return {"name": name, "deleted": True}
            store.set_paused(name, what == "pause")
            return _summary(store.get(name))
    finally:
        meta.close()


def pause(name: str, *, db: str | None = None) -> dict[str, Any]:
    """Pause a schedule: nothing fires until it is resumed (missed times then follow ``catch_up``)."""
    return _change(name, db, "pause")


def resume(name: str, *, db: str | None = None) -> dict[str, Any]:
    """Resume a paused schedule."""
    return _change(name, db, "resume")


def delete(name: str, *, db: str | None = None) -> dict[str, Any]:
    """Delete a schedule and its fires' records (the runs it started stay)."""
    return _change(name, db, "delete")


def history(name: str, *, db: str | None = None, limit: int = 50) -> dict[str, Any]:
    """A schedule's latest fires, oldest first: when each was due, why it fired, what became of
    it, its run and that run's status, and for ``on_data`` the files it read."""
    meta = open_existing(db)
    try:
        store = ScheduleStore(meta)
        sched = store.get(name)
        return {**_summary(sched), "fires": [f.to_dict() for f in store.fires(name, limit=limit)]}
    finally:
        meta.close()


def controller_status(db: str | None = None, *, address: str | None = None) -> dict[str, Any] | None:
    """The store's schedules controller (None: not running)."""
    meta = open_existing(db)
    url = meta.url
    meta.close()
    connect_existing(address)
    return live_status(url)


__all__ = ["apply", "controller_status", "delete", "history", "list_schedules", "pause", "resume"]
