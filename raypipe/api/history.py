"""``raypipe diff RUN_A RUN_B`` and ``raypipe model diff NAME:VA NAME:VB``: two runs (or two
model versions) side by side: params, code fingerprints, inputs and dataset versions, the
environment, metrics.  Rows are ``(section, name, a, b)``; ``differs`` marks the changed ones."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import StorageError
from raypipe.runner.keydiff import flatten
from raypipe.store.artifacts import ArtifactRef, ArtifactStore, root_of
from raypipe.store.metadata import MetadataStore, StageRunRecord, open_existing
from raypipe.store.registry import ModelRegistry, ModelVersion

#: Sections in the order they are shown.
SECTIONS = ("run", "model", "params", "config", "code", "inputs", "outputs", "datasets", "env", "packages", "metrics")
#: A JSON output up to this size is read for its numbers (the ``metrics`` section).
METRICS_MAX_BYTES = 65536


@dataclass(frozen=True)
class DiffRow:
    section: str
    name: str
    a: Any
    b: Any

    @property
    def differs(self) -> bool:
        return bool(self.a != self.b)

    def to_dict(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "a": self.a, "b": self.b, "differs": self.differs}


@dataclass(frozen=True)
class Diff:
    """Two records side by side."""

    what: str  # "runs" | "models"
    a: str
    b: str
    rows: tuple[DiffRow, ...]

    @property
    def differing(self) -> list[DiffRow]:
        return [r for r in self.rows if r.differs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "a": self.a,
            "b": self.b,
            "differences": len(self.differing),
            "rows": [r.to_dict() for r in self.rows],
        }


def side_by_side(section: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[DiffRow]:
    """One row per name in either mapping (None where one lacks it), names sorted."""
    return [DiffRow(section, n, a.get(n), b.get(n)) for n in sorted(a.keys() | b.keys())]


def _ordered(rows: Iterable[DiffRow]) -> tuple[DiffRow, ...]:
    rank = {s: i for i, s in enumerate(SECTIONS)}
    return tuple(sorted(rows, key=lambda r: rank.get(r.section, len(rank))))


def _numbers(value: Any, prefix: str) -> dict[str, Any]:
    """The numeric leaves of a JSON value (metrics), by dotted path."""
    if isinstance(value, Mapping):
        return {
            k: v for k, v in flatten(value, prefix).items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix: value}
    return {}


def _metrics(refs: Mapping[str, ArtifactRef], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ref in refs.items():
        if ref.format != "json" or ref.size > METRICS_MAX_BYTES:
            continue
        try:
            out.update(_numbers(ArtifactStore(root_of(ref.uri)).get_value(ref), f"{prefix}.{name}"))
        except (StorageError, OSError, ValueError):
            continue  # gone or unreadable: shown as missing
    return out


def _env_rows(meta: MetadataStore, run_id: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(git and Python of the run, its packages) from ``run_environments``."""
    env = meta.environment_of(run_id) if run_id else None
    if env is None:
        return {"recorded": "no (a run from before schema version 6)"}, {}
    head = {"git_commit": env["git_commit"], "git_dirty": env["git_dirty"], "python": env["python"]}
    return head, dict(env["packages"])


class _RunSide:
    """What one run contributes to a diff, per section."""

    def __init__(self, meta: MetadataStore, run_id: str) -> None:
        rec = meta.get_run(run_id)
        self.run_id = rec.run_id
        cfg = json.loads(rec.config_json)
        self.sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        self.sections["run"] = {
            "pipeline": rec.pipeline,
            "status": rec.status,
            "actor": rec.actor,
            "config_path": rec.config_path,
            "started_at": rec.created_at,
        }
        stages = cfg.pop("stages", [])
        self.sections["config"].update(flatten({k: v for k, v in cfg.items() if k != "metadata"}, "pipeline"))
        for st in stages:
            name = st.get("name")
            self.sections["params"].update(flatten(st.get("params") or {}, str(name)))
            rest = {k: v for k, v in st.items() if k not in ("name", "params")}
            self.sections["config"].update(flatten(rest, f"stages.{name}"))
        done = meta.done_stages(rec.run_id)
        self.sections["run"].update({f"stage {s}": _state(sr) for s, sr in done.items()})
        env_union: dict[str, Any] = {}
        for stage, sr in done.items():
            doc = meta.key_doc(sr.id)
            if doc is not None:
                self.sections["code"][stage] = str(doc.get("code"))[:12]
                if doc.get("sources") is not None:
                    self.sections["inputs"][f"{stage} (source files)"] = str(doc["sources"])[:12]
                env_union.update({f"key.{k}": v for k, v in (doc.get("env") or {}).items()})
            for arg, ref in meta.io_of(sr.id, "in").items():
                if ref.format == "source":  # a file read from outside the store: by its path
                    self.sections["inputs"][f"{stage} file {ref.uri}"] = f"{ref.size} B {ref.sha256[:12]}"
                else:
                    self.sections["inputs"][f"{stage}.{arg}"] = ref.sha256[:12]
            outs = meta.io_of(sr.id, "out")
            for name, ref in outs.items():
                self.sections["outputs"][f"{stage}.{name}"] = f"{ref.format} {ref.sha256[:12]}"
            self.sections["metrics"].update(_metrics(outs, stage))
        head, packages = _env_rows(meta, rec.run_id)
        self.sections["env"] = {**head, **env_union}
        self.sections["packages"] = packages


def _state(sr: StageRunRecord) -> str:
    return sr.status + (f" (from stage run {sr.cached_from})" if sr.cached_from else "")


def diff_runs(run_a: str, run_b: str, db: str | None = None) -> Diff:
    """Two runs side by side: stage states, params and the rest of the config, each stage's code
    fingerprint, input and output versions, the environment (git, Python, the versions in the
    cache keys, every package) and the numbers in small JSON outputs (metrics)."""
    meta = open_existing(db)
    try:
        a, b = _RunSide(meta, run_a), _RunSide(meta, run_b)
    finally:
        meta.close()
    rows = [r for s in SECTIONS for r in side_by_side(s, a.sections[s], b.sections[s])]
    return Diff("runs", a.run_id, b.run_id, _ordered(rows))


def _model_sections(meta: MetadataStore, mv: ModelVersion) -> dict[str, dict[str, Any]]:
    datasets: dict[str, Any] = {}
    for d in mv.datasets:
        name = str(d.get("stage"))
        while name in datasets:
            name += "'"
        rows = d.get("rows")
        datasets[name] = str(d.get("sha256", ""))[:12] + (f" ({rows} rows)" if rows is not None else "")
    head, packages = _env_rows(meta, mv.run_id)
    doc = meta.key_doc(mv.stage_run_id) if mv.stage_run_id is not None else None
    env = {**head, **{f"key.{k}": v for k, v in ((doc or {}).get("env") or {}).items()}}
    return {
        "model": {
            "version": mv.version,
            "sha256": mv.sha256[:12],
            "run_id": mv.run_id,
            "stage": mv.stage,
            "aliases": ", ".join(mv.aliases),
            "created_at": mv.created_at,
        },
        "params": flatten(mv.params, "params") if mv.params else {},
        "code": {"model code": mv.code, **({"stage code": str(doc.get("code"))[:12]} if doc else {})},
        "datasets": datasets,
        "env": env,
        "packages": packages,
        "metrics": _numbers(mv.metrics, "metrics"),
    }


def diff_models(ref_a: str, ref_b: str, db: str | None = None) -> Diff:
    """Two model versions (``NAME:VA``, ``NAME@ALIAS``, ``NAME``) side by side: params, code,
    the dataset versions in their lineage, the environment of their runs, metrics."""
    meta = open_existing(db)
    try:
        reg = ModelRegistry(meta)
        va, vb = reg.get(ref_a), reg.get(ref_b)
        sa, sb = _model_sections(meta, va), _model_sections(meta, vb)
    finally:
        meta.close()
    rows = [r for s in SECTIONS for r in side_by_side(s, sa.get(s, {}), sb.get(s, {}))]
    return Diff("models", f"{va.name}:{va.version}", f"{vb.name}:{vb.version}", _ordered(rows))
