"""The pipeline config's pydantic models (all refusing unknown keys): stages, scheduler, Ray, the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from raypipe.config.errors import Loc, error_issues, format_loc
from raypipe.config.notify import NotifySink
from raypipe.config.strict import StrictModel
from raypipe.config.tracking import TrackingConfig, with_pipeline_tracking
from raypipe.config.triggers import TriggersConfig
from raypipe.resources import Resources
from raypipe.secrets import has_literal_secret

_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
NonNegative = Annotated[float, Field(ge=0)]


class ResourcesConfig(StrictModel):
    """What one stage needs.  ``custom`` are Ray custom resources (``{"TPU": 1}``)."""

    cpu: NonNegative = 1.0
    gpu: NonNegative = 0.0
    memory_mb: NonNegative = 0.0
    custom: dict[str, NonNegative] = Field(default_factory=dict)

    def to_resources(self) -> Resources:
        return Resources.from_dict(self.model_dump())


class RetryConfig(StrictModel):
    """``max`` extra attempts after the first; the wait doubles from ``backoff_s``."""

    max: Annotated[int, Field(ge=0, le=100)] = 0
    backoff_s: NonNegative = 1.0


class StageConfig(StrictModel):
    """One stage.  ``inputs`` maps an argument name to ``other_stage.output_name``.

    ``resources`` is one bundle; ``gang_size`` bundles are admitted all-or-nothing
    (placed by ``placement``).  The stage's function runs in bundle 0 and the Ray
    tasks and actors it starts are kept inside the gang.  ``params`` may hold secret
    references, resolved in the stage's task (see :mod:`raypipe.secrets`)."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"params"})

    name: Annotated[str, Field(pattern=_NAME_RE, max_length=128)]
    kind: str
    depends_on: list[str] = Field(default_factory=list)
    inputs: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*\.[A-Za-z_][A-Za-z0-9_\-]*$")]] = Field(
        default_factory=dict
    )
    outputs: list[Annotated[str, Field(pattern=_NAME_RE)]] | None = None
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    gang_size: Annotated[int, Field(ge=1, le=1024)] = 1
    placement: Literal["PACK", "SPREAD", "STRICT_PACK"] = "PACK"
    preemptible: bool = True
    #: Seconds a preempted stage gets to checkpoint and stop before it is cancelled.
    #: Default: 30 if the stage watches for preemption (a python function taking
    #: ``ctx``), else 0 (cancelled at once).
    preempt_grace_s: Annotated[float, Field(ge=0, le=3600)] | None = None
    retries: RetryConfig = Field(default_factory=RetryConfig)
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    #: Give up (status ``timeout``, not retried) when the stage waited this long for its
    #: grant; default: the pipeline's ``wait_timeout_s``, else wait (saying why every minute).
    wait_timeout_s: Annotated[float, Field(gt=0)] | None = None
    cache: bool = True
    priority: int = 0
    team: str = "default"
    #: Store outputs of types raypipe has no format for with pickle, and read inputs that
    #: are pickles (or torch files that need pickle).  Off: such an output or input is an
    #: error.  Unpickling runs code from the file: only for artifacts you trust (their
    #: SHA-256 is checked before they are read).  Not part of the cache key.
    pickle: bool = False
    params: dict[str, Any] = Field(default_factory=dict)

    def upstream(self) -> list[str]:
        """Stages this one waits for: ``depends_on`` plus the producers of its inputs."""
        ups = list(self.depends_on)
        for ref in self.inputs.values():
            producer = ref.split(".", 1)[0]
            if producer not in ups:
                ups.append(producer)
        return ups


class TeamConfig(StrictModel):
    """A team's quota (unset kinds are unlimited), priority bonus and fair-share weight."""

    cpu: NonNegative | None = None
    gpu: NonNegative | None = None
    memory_mb: NonNegative | None = None
    custom: dict[str, NonNegative] = Field(default_factory=dict)
    priority: int = 0
    weight: Annotated[float, Field(gt=0)] = 1.0


class NodeTypeConfig(StrictModel):
    """A node type an autoscaler can launch, as in a cluster launcher's ``available_node_types``.

    ``resources`` use Ray's names (``CPU``, ``GPU``, ``memory`` in bytes, custom
    resources); ``max_workers`` defaults to the autoscaler's global one."""

    resources: dict[str, NonNegative]
    labels: dict[str, str] = Field(default_factory=dict)
    max_workers: Annotated[int, Field(ge=0)] | None = None

    @field_validator("resources")
    @classmethod
    def _ray_names(cls, v: dict[str, float]) -> dict[str, float]:
        lower = [k for k in v if k in ("cpu", "gpu", "memory_mb")]
        if lower:
            raise ValueError(f"use Ray's resource names (CPU, GPU, memory in bytes), not {', '.join(lower)}")
        if "CPU" not in v:
            raise ValueError("must declare CPU (Ray's resource names: CPU, GPU, memory in bytes, custom resources)")
        return v


class AutoscalerConfig(StrictModel):
    """The cluster's maximum shape, when an autoscaler can add nodes.

    Either ``node_types`` (+ the global ``max_workers``) here, or ``cluster_config``:
    the path of a Ray cluster launcher YAML (``ray up``; on its head node
    ``~/ray_bootstrap_config.yaml``), read when the config is loaded.  A stage that
    does not fit the cluster as it is but fits this shape waits for the autoscaler
    instead of being rejected."""

    node_types: dict[str, NodeTypeConfig] = Field(default_factory=dict)
    max_workers: Annotated[int, Field(ge=0)] | None = None
    cluster_config: str | None = None

    @field_validator("cluster_config")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None:
            read_cluster_config(v)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> AutoscalerConfig:
        if self.cluster_config is not None and (self.node_types or self.max_workers is not None):
            raise ValueError("give node_types (and max_workers) or cluster_config, not both")
        if self.cluster_config is None and not self.node_types:
            raise ValueError("give node_types or cluster_config (a Ray cluster launcher YAML)")
        for name, t in self.node_types.items():
            if t.max_workers is None and self.max_workers is None:
                raise ValueError(f"node type {name!r} has no max_workers, and there is no global max_workers")
        return self

    def shape(self) -> dict[str, Any]:
        """The controller's ``autoscaler`` setting (see ``raypipe.scheduler.autoscale.MaxShape``)."""
        if self.cluster_config is not None:
            return read_cluster_config(self.cluster_config)
        types = {
            name: {
                "resources": dict(t.resources),
                "labels": dict(t.labels),
                "max_workers": self.max_workers if t.max_workers is None else t.max_workers,
            }
            for name, t in self.node_types.items()
        }
        return {"node_types": types, "max_workers": self.max_workers}


def read_cluster_config(path: str) -> dict[str, Any]:
    """The maximum shape in a Ray cluster launcher YAML, as :meth:`AutoscalerConfig.shape` returns it.

    Reads ``available_node_types`` (``resources``, ``labels``, ``max_workers``; as in
    Ray, a type's ``max_workers`` defaults to the top-level one, the head type's to
    0) and the top-level ``max_workers`` (Ray's default on AWS, GCP and Azure, 2,
    when absent).  Types that can never be launched as workers are left out.
    Raises ``ValueError`` with the problem (the path is relative to the working
    directory; ``~`` is expanded)."""
    where = f"cluster config {path}"
    try:
        text = Path(path).expanduser().read_text()
    except OSError as e:
        raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: invalid YAML: {e}") from None
    types_in = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types_in, dict) or not types_in:
        raise ValueError(f"{where}: no available_node_types (where a cluster launcher YAML lists its node types)")
    cap = data.get("max_workers", 2)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        raise ValueError(f"{where}: max_workers: got {cap!r}; expected an integer >= 0")
    head = data.get("head_node_type")
    types: dict[str, Any] = {}
    for name, t in types_in.items():
        if not isinstance(t, dict):
            raise ValueError(f"{where}: available_node_types.{name}: expected a mapping")
        max_workers = t.get("max_workers", 0 if name == head else cap)
        if max_workers == 0:
            continue  # never launched as a worker
        raw = {"resources": t.get("resources") or {}, "labels": t.get("labels") or {}, "max_workers": max_workers}
        try:
            nt = NodeTypeConfig.model_validate(raw)
        except ValidationError as e:
            msg = "; ".join(f"{format_loc(loc)}: {m}" for loc, m in validation_issues(e))
            if "must declare CPU" in msg:
                msg += " (Ray fills in resources at launch for some providers: declare them in the file, or use ~/ray_bootstrap_config.yaml on the head node)"
            raise ValueError(f"{where}: available_node_types.{name}.{msg}") from None
        types[str(name)] = {"resources": dict(nt.resources), "labels": dict(nt.labels), "max_workers": nt.max_workers}
    if not types:
        raise ValueError(f"{where}: no node type can be launched as a worker (max_workers is 0 for every type)")
    return {"node_types": types, "max_workers": cap}


class SchedulerConfig(StrictModel):
    """raypipe's scheduler: every stage with resources is admitted through it.

    ``enabled: false`` leaves placement to Ray alone (no queue, quotas or
    preemption).  ``team``: the team of the stages that name none (default: ``default``).

    The controller is shared by every pipeline on a cluster.  Without a platform config in
    the metadata store (a single user), the settings of the last pipeline that sets
    ``policy``, ``policy_args``, ``teams``, ``lease_s``, ``autoscaler``, ``consolidation`` or
    ``node_choice`` apply.  With one
    (``raypipe admin apply``), those belong to its admins: a pipeline setting any of them is
    refused, and may choose only ``enabled``, ``team`` and its stages' ``team`` and ``priority``.
    """

    enabled: bool = True
    #: The team of every stage that names none (default: `default`). With a platform config, a
    #: team you belong to.
    team: Annotated[str, Field(pattern=_NAME_RE, max_length=128)] | None = None
    policy: str = "fifo"
    policy_args: dict[str, Any] = Field(default_factory=dict)
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    lease_s: Annotated[float, Field(gt=0)] = 30.0
    autoscaler: AutoscalerConfig | None = None
    #: strict: a gang that fits one node runs on one node, a bigger one on whole nodes; prefer: strict
    #: when it places the gang now, else spread; none: spread over any free capacity (see Scheduling).
    consolidation: Literal["strict", "prefer", "none"] = "none"
    #: Which node among those that fit: first_fit, best_fit, least_fragmenting or fgd (see Scheduling).
    node_choice: Literal["first_fit", "best_fit", "least_fragmenting", "fgd"] = "best_fit"

    def settings(self) -> dict[str, Any]:
        """The controller's settings (see ``raypipe.scheduler.controller.SchedulerSettings``)."""
        teams = {name: t.model_dump(exclude_none=True) for name, t in self.teams.items()}
        return {
            "policy": self.policy,
            "policy_args": dict(self.policy_args),
            "teams": teams,
            "lease_s": self.lease_s,
            "autoscaler": self.autoscaler.shape() if self.autoscaler is not None else None,
            "consolidation": self.consolidation,
            "node_choice": self.node_choice,
        }


class RayConfig(StrictModel):
    """How to reach Ray.  No ``address`` starts an embedded local Ray.  ``runtime_env`` may hold
    secret references (``env_vars: {TOKEN: ${env:TOKEN}}``): resolved when Ray starts."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"runtime_env"})

    address: str | None = None
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    num_gpus: NonNegative | None = None
    runtime_env: dict[str, Any] | None = None


class PipelineConfig(StrictModel):
    """A whole pipeline, as written in YAML or built in Python.  ``metadata`` may hold secret
    references (``postgresql://ml:${env:PG_PASSWORD}@host/db``): resolved when the store
    connects; a password written as it is is redacted in every stored copy of the config."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"metadata", "tracking"})

    name: Annotated[str, Field(pattern=_NAME_RE, max_length=128)]
    description: str = ""
    storage: str = ".raypipe"
    metadata: str | None = None
    #: The default ``wait_timeout_s`` of every stage (None: wait as long as it takes).
    wait_timeout_s: Annotated[float, Field(gt=0)] | None = None
    ray: RayConfig = Field(default_factory=RayConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    stages: Annotated[list[StageConfig], Field(min_length=1)]
    #: When the pipeline runs by itself: a schedule, new data, a model's alias (``raypipe schedule
    #: apply FILE``; a run ignores it). See docs/schedules.md.
    triggers: TriggersConfig | None = None
    #: Where to tell people what happened: webhooks and mail, and which events each gets
    #: (see Notifications). None: the platform config's `notify`, if any.
    notify: list[NotifySink] | None = None
    #: Experiment tracking of every ``train`` and ``tune`` stage that sets no ``params.tracking``.
    tracking: TrackingConfig | None = None

    @model_validator(mode="after")
    def _default_tracking(self) -> PipelineConfig:
        """``tracking`` goes to the params of every train and tune stage without their own."""
        for st in self.stages:
            st.params = with_pipeline_tracking(st.kind, st.params, self.tracking)
        return self

    @model_validator(mode="after")
    def _default_team(self) -> PipelineConfig:
        """``scheduler.team`` is the team of every stage that names none."""
        if self.scheduler.team is not None:
            for st in self.stages:
                if "team" not in st.model_fields_set:
                    st.team = self.scheduler.team
                    st.model_fields_set.add("team")
        return self

    @field_validator("storage")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        if has_literal_secret(v):
            raise ValueError(
                "credentials in a storage URI would be written into every artifact's URI in the metadata store: "
                "give them to the object store through its environment on every node (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...)"
            )
        return v

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise KeyError(name)


def validation_issues(
    exc: ValidationError, prefix: Loc = (), model: type[BaseModel] | None = None
) -> list[tuple[Loc, str]]:
    """Turn a pydantic error into ``(loc, message)`` pairs rooted at ``prefix``; an unknown
    key lists the keys allowed at its place in ``model``, else in :class:`PipelineConfig`."""
    return error_issues(exc, prefix, [m for m in (model, PipelineConfig) if m is not None])
