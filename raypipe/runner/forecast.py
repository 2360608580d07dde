"""``raypipe plan``: what a run of a planned pipeline would do, without running it or starting Ray.

The stages are walked in the executor's order and each one's cache key is computed as the
executor computes it (:func:`raypipe.runner.cache.key_document`): its inputs are the outputs
recorded by the cached stage runs upstream (as the executor would reuse them, rebased under
this storage root), plus what the kind resolves on the driver (``resolve_inputs``); a
``data.read`` stage's files enter through its ``source_fingerprint``, the function a run calls.

Per stage:

* ``cached``: a finished stage run has this key and its outputs are still in storage (the
  run reuses it: ``cached_from``, ``cached_run``);
* ``run`` with the key known: why, against the latest finished run of the stage in this
  pipeline (:func:`raypipe.runner.keydiff.key_changes`), or ``new stage`` / ``no previous
  run of pipeline P`` / the cache turned off / outputs gone;
* ``run`` with the key unknown (``key_known`` false): an upstream stage whose outputs it reads
  runs first (``upstream 'read' runs``), so its inputs are known only then.  If they come out
  as they were (the upstream's output may not change), the run reuses the cached result after
  all: the plan says so, and ``run`` reports that stage ``cached``.

A stage whose key depends on a running upstream only through ``depends_on`` has a known key
(the upstream's key, not its outputs).  Resources are what the stage asks for; whether the
cluster fits them is said only when the caller passes the cluster's nodes (:class:`ClusterNodes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.resources import Resources
from raypipe.runner.cache import hash_document, key_document
from raypipe.runner.keydiff import key_changes, source_changes
from raypipe.runner.plan import Plan, PlannedStage
from raypipe.store.artifacts import ArtifactRef, ArtifactStore
from raypipe.store.metadata import MetadataStore

CACHED = "cached"
RUN = "run"


@dataclass(frozen=True)
class ClusterNodes:
    """What a plan checks resources against: each alive node's total and free resources now."""

    total: tuple[Resources, ...]
    free: tuple[Resources, ...]
    address: str = ""


@dataclass
class StagePlan:
    """What a run would do with one stage."""

    stage: str
    kind: str
    action: str  # "cached" | "run"
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    key_known: bool = True
    #: ``cached``: the stage run (and its run) whose outputs are reused.
    cached_from: int | None = None
    cached_run: str | None = None
    #: ``run``: the stage run its key was compared with.
    compared_with: int | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    gang_size: int = 1
    cluster: str = "cluster not checked"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def place(ask: Resources, gang_size: int, nodes: list[Resources]) -> bool:
    """Whether ``gang_size`` bundles of ``ask`` fit ``nodes`` (first fit, one bundle at a time)."""
    left = list(nodes)
    for _ in range(gang_size):
        for i, cap in enumerate(left):
            if ask.fits(cap):
                left[i] = cap - ask
                break
        else:
            return False
    return True


def cluster_fit(ask: Resources, gang_size: int, nodes: ClusterNodes | None, why_unchecked: str) -> str:
    """``fits now`` | ``waits: ...`` | ``never fits: ...`` | ``cluster not checked: ...``."""
    if ask.is_zero():
        return "asks for no resources"
    if nodes is None:
        return f"cluster not checked: {why_unchecked}" if why_unchecked else "cluster not checked"
    if place(ask, gang_size, list(nodes.free)):
        return "fits now"
    if place(ask, gang_size, list(nodes.total)):
        return "waits: not free now (fits the cluster when the work holding it ends)"
    return f"never fits: {len(nodes.total)} node(s), none with room for {gang_size} x {ask.to_dict()}"


class Forecast:
    """Walks a plan against a metadata store and an artifact store (read only)."""

    def __init__(self, plan: Plan, meta: MetadataStore, artifacts: ArtifactStore, *, use_cache: bool = True) -> None:
        self.plan = plan
        self.meta = meta
        self.artifacts = artifacts
        self.use_cache = use_cache
        self.outputs: dict[str, dict[str, ArtifactRef]] = {}  # cached stages' outputs
        self.keys: dict[str, str | None] = {}

    def stages(self, nodes: ClusterNodes | None = None, why_unchecked: str = "") -> list[StagePlan]:
        out = []
        for name in self.plan.order:
            ps = self.plan.stages[name]
            sp = self._stage(ps)
            res = ps.spec.resources.to_resources()
            sp.resources, sp.gang_size = res.to_dict(), ps.spec.gang_size
            sp.cluster = (
                "not needed (cached)"
                if sp.action == CACHED
                else cluster_fit(res, ps.spec.gang_size, nodes, why_unchecked)
            )
            out.append(sp)
        return out

    def _stage(self, ps: PlannedStage) -> StagePlan:
        name, kind = ps.spec.name, ps.spec.kind
        unknown = self._unknown_upstream(ps)
        if unknown:
            self.keys[name] = None
            ups = ", ".join(repr(u) for u in unknown)
            why = (
                f"upstream {ups} {'runs' if len(unknown) == 1 else 'run'} first "
                "(its outputs as before: this stage reuses the cached result)"
            )
            own, compared = self._own_changes(ps)
            return StagePlan(name, kind, RUN, [*own, why], key=None, key_known=False, compared_with=compared)
        inputs = self._inputs(ps)
        if isinstance(inputs, str):
            self.keys[name] = None
            return StagePlan(name, kind, RUN, [inputs], key=None, key_known=False)
        doc = key_document(
            ps, {a: r.sha256 for a, r in inputs.items()}, {u: str(self.keys[u]) for u in ps.spec.depends_on}
        )
        key = self.keys[name] = hash_document(doc)
        if not (self.use_cache and ps.spec.cache):
            off = "cache: false in the stage" if not ps.spec.cache else "the cache is off (--no-cache)"
            return StagePlan(name, kind, RUN, [off], key=key)
        hit = self.meta.find_cached(key)
        if hit is not None:
            outs = {n: self.artifacts.rebased(r) for n, r in self.meta.io_of(hit.id, "out").items()}
            gone = [n for n, r in outs.items() if not self.artifacts.exists(r)]
            if not gone:
                self.outputs[name] = outs
                source = hit.cached_from or hit.id
                origin = hit.run_id if source == hit.id else self.meta.run_of(source)
                return StagePlan(name, kind, CACHED, [f"cached by stage run {source}"], key, True, source, origin)
            why = f"cached by stage run {hit.id}, but its outputs are gone from storage: {', '.join(gone)}"
            return StagePlan(name, kind, RUN, [why], key=key)
        reasons, compared = self._why(ps, doc)
        return StagePlan(name, kind, RUN, reasons, key=key, compared_with=compared)

    def _unknown_upstream(self, ps: PlannedStage) -> list[str]:
        """Upstream stages whose outputs this stage reads and that run (or whose key is unknown)."""
        readers = {ref.partition(".")[0] for ref in ps.spec.inputs.values()}
        out = {u for u in readers if u not in self.outputs}
        out |= {u for u in ps.spec.depends_on if self.keys.get(u) is None}
        return [u for u in self.plan.order if u in out]

    def _inputs(self, ps: PlannedStage) -> dict[str, ArtifactRef] | str:
        refs: dict[str, ArtifactRef] = {}
        for arg, ref in ps.spec.inputs.items():
            producer, _, output = ref.partition(".")
            produced = self.outputs[producer]
            if output not in produced:
                return (
                    f"fails: input {arg!r}: stage {producer!r} produced no output {output!r} in the run "
                    f"reused; it produced: {', '.join(sorted(produced)) or 'nothing'}"
                )
            refs[arg] = produced[output]
        try:
            return {**refs, **ps.kind.resolve_inputs(self.meta)}
        except RaypipeError as e:
            return f"its inputs are resolved when it runs ({e})"

    def _own_changes(self, ps: PlannedStage) -> tuple[list[str], int | None]:
        """A stage whose key is unknown: what of its key other than inputs and ``depends_on`` keys
        changed since its latest finished run (params, code, sources, environment)."""
        prev = self.meta.latest_key_doc(self.plan.config.name, ps.spec.name)
        if prev is None:
            return [], None
        sid, old = prev
        return key_changes({**old, "inputs": {}, "after": {}}, key_document(ps, {}, {})), sid

    def _why(self, ps: PlannedStage, doc: Mapping[str, Any]) -> tuple[list[str], int | None]:
        pipeline = self.plan.config.name
        prev = self.meta.latest_key_doc(pipeline, ps.spec.name)
        if prev is None:
            ran, stage_ran = self.meta.stage_history(pipeline, ps.spec.name)
            if not ran:
                return [f"no previous run of pipeline {pipeline!r}"], None
            if not stage_ran:
                return ["new stage"], None
            return ["no previous finished run with a recorded cache key to compare with"], None
        sid, old = prev
        lines = key_changes(old, doc) or ["cache key differs from stage run " + str(sid)]
        if old.get("sources") != doc.get("sources"):
            lines += self._files_changed(ps, sid)
        return lines, sid

    def _files_changed(self, ps: PlannedStage, sid: int) -> list[str]:
        """Which of the files a kind reads from outside the store changed since stage run ``sid``
        (its recorded ``source`` inputs against the files there now)."""
        now = ps.kind.source_files()
        if now is None:
            return []
        then = {
            r.uri: (r.size, int((r.schema or {}).get("mtime_ns", 0)))
            for r in self.meta.io_of(sid, "in").values()
            if r.format == "source"
        }
        return source_changes(then, {str(f["path"]): (int(f["size"]), int(f["mtime_ns"])) for f in now})


def would_run(stages: list[StagePlan]) -> bool:
    return any(s.action == RUN for s in stages)


def read_cluster(address: str) -> ClusterNodes:
    """Join the running cluster at ``address`` (never starts one) and read its nodes."""
    from raypipe._ray.cluster import available_per_node
    from raypipe.runner.ray_session import connect_existing

    connect_existing(address)
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    free = available_per_node()
    total = tuple(Resources.from_ray(n.get("Resources") or {}) for n in alive)
    now = tuple(Resources.from_ray(free.get(n["NodeID"], {})) for n in alive)
    return ClusterNodes(total, now, address)
