"""Pipeline configuration: pydantic models, YAML loading with line numbers, ``--set`` overrides.

Every model forbids unknown keys.  Errors are collected and raised as one
:class:`~raypipe.exceptions.ConfigError` whose lines read
``configs/x.yaml:14 stages[2].resources.gpu: got -1; expected a number >= 0``.
Cross-stage checks (dependencies, cycles, stage kinds) live in ``raypipe.runner.plan``
and report through the same :class:`ConfigSource`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raypipe.exceptions import ConfigError
from raypipe.resources import Resources

Loc = tuple[Union[str, int], ...]

_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
NonNegative = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ResourcesConfig(_Strict):
    """What one stage needs.  ``custom`` are Ray custom resources (``{"TPU": 1}``)."""

    cpu: NonNegative = 1.0
    gpu: NonNegative = 0.0
    memory_mb: NonNegative = 0.0
    custom: dict[str, NonNegative] = Field(default_factory=dict)

    def to_resources(self) -> Resources:
        return Resources.of(self.cpu, self.gpu, self.memory_mb, self.custom)


class RetryConfig(_Strict):
    """``max`` extra attempts after the first; the wait doubles from ``backoff_s``."""

    max: Annotated[int, Field(ge=0, le=100)] = 0
    backoff_s: NonNegative = 1.0


class StageConfig(_Strict):
    """One stage.  ``inputs`` maps an argument name to ``other_stage.output_name``.

    ``resources`` is one bundle; ``gang_size`` bundles are admitted all-or-nothing
    (placed by ``placement``).  The stage's function runs in bundle 0 and the Ray
    tasks and actors it starts are kept inside the gang."""

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
    params: dict[str, Any] = Field(default_factory=dict)

    def upstream(self) -> list[str]:
        """Stages this one waits for: ``depends_on`` plus the producers of its inputs."""
        ups = list(self.depends_on)
        for ref in self.inputs.values():
            producer = ref.split(".", 1)[0]
            if producer not in ups:
                ups.append(producer)
        return ups


class TeamConfig(_Strict):
    """A team's quota (unset kinds are unlimited), priority bonus and fair-share weight."""

    cpu: NonNegative | None = None
    gpu: NonNegative | None = None
    memory_mb: NonNegative | None = None
    custom: dict[str, NonNegative] = Field(default_factory=dict)
    priority: int = 0
    weight: Annotated[float, Field(gt=0)] = 1.0


class NodeTypeConfig(_Strict):
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


class AutoscalerConfig(_Strict):
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


class SchedulerConfig(_Strict):
    """raypipe's scheduler: every stage with resources is admitted through it.

    ``enabled: false`` leaves placement to Ray alone (no queue, quotas or
    preemption).  The controller is shared by every pipeline on a cluster; the
    settings of the last pipeline that sets this section apply.
    """

    enabled: bool = True
    policy: str = "fifo"
    policy_args: dict[str, Any] = Field(default_factory=dict)
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    lease_s: Annotated[float, Field(gt=0)] = 30.0
    autoscaler: AutoscalerConfig | None = None

    def settings(self) -> dict[str, Any]:
        """The controller's settings (see ``raypipe.scheduler.controller.SchedulerSettings``)."""
        teams = {name: t.model_dump(exclude_none=True) for name, t in self.teams.items()}
        return {
            "policy": self.policy,
            "policy_args": dict(self.policy_args),
            "teams": teams,
            "lease_s": self.lease_s,
            "autoscaler": self.autoscaler.shape() if self.autoscaler is not None else None,
        }


class RayConfig(_Strict):
    """How to reach Ray.  No ``address`` starts an embedded local Ray."""

    address: str | None = None
    num_cpus: Annotated[int, Field(ge=1)] | None = None
    num_gpus: NonNegative | None = None
    runtime_env: dict[str, Any] | None = None


class PipelineConfig(_Strict):
    """A whole pipeline, as written in YAML or built in Python."""

    name: Annotated[str, Field(pattern=_NAME_RE, max_length=128)]
    description: str = ""
    storage: str = ".raypipe"
    metadata: str | None = None
    #: The default ``wait_timeout_s`` of every stage (None: wait as long as it takes).
    wait_timeout_s: Annotated[float, Field(gt=0)] | None = None
    ray: RayConfig = Field(default_factory=RayConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    stages: Annotated[list[StageConfig], Field(min_length=1)]

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


# --------------------------------------------------------------------------- locations


def format_loc(loc: Loc) -> str:
    """``("stages", 2, "resources", "gpu")`` -> ``stages[2].resources.gpu``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass
class ConfigSource:
    """Where a config came from, able to turn a field path into ``file:line``."""

    path: str | None
    root: yaml.Node | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def where(self, loc: Loc) -> str:
        path = self.path or "<config>"
        line = self.line(loc)
        return f"{path}:{line}" if line is not None else path

    def error(self, issues: Iterable[tuple[Loc, str]]) -> ConfigError:
        rows = sorted(((self.line(loc) or 0, format_loc(loc), msg, loc) for loc, msg in issues), key=lambda r: r[:2])
        lines = []
        for _, path, msg, loc in rows:
            lines.append(f"{self.where(loc)} {path}: {msg}")
        return ConfigError("\n".join(lines))


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == part:
                return v
        # A stage referred to by name.
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


# --------------------------------------------------------------------------- error text


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pipeline model class whose field set applies at ``loc`` (for listing allowed keys)."""
    return _model_at_from(PipelineConfig, loc)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or (origin is not None and str(origin) == "types.UnionType"):
            args = [a for a in get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _expected(err: Mapping[str, Any], model_root: type[BaseModel] | None = None) -> str:
    t = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    got = f"got {_describe(err.get('input'))}; "
    if t == "missing":
        return "missing required field"
    if t == "extra_forbidden":
        model = _model_at(loc[:-1]) if model_root is None else model_root
        allowed = ", ".join(model.model_fields) if model else ""
        return f"unknown key {loc[-1]!r}" + (f"; expected one of: {allowed}" if allowed else "")
    if t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[t]
        bound = next(iter(ctx.values())) if ctx else "?"
        bound_text = f"{bound:g}" if isinstance(bound, (int, float)) else str(bound)
        return f"{got}expected a number {op} {bound_text}"
    if t in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        kind = "an integer" if t.startswith("int") else "a number"
        return f"{got}expected {kind}"
    if t in ("bool_parsing", "bool_type"):
        return f"{got}expected true or false"
    if t == "string_type":
        return f"{got}expected a string"
    if t == "string_pattern_mismatch":
        return f"{got}expected a name of letters, digits, '_' or '-' (pattern {ctx.get('pattern')})"
    if t in ("list_type", "tuple_type"):
        return f"{got}expected a list"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"{got}expected a mapping"
    if t == "too_short":
        return f"{got}expected at least {ctx.get('min_length')} item(s)"
    if t == "literal_error":
        return f"{got}expected one of {ctx.get('expected')}"
    if t == "value_error":  # a model's own check: its message says what is wrong
        return str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{got}{err.get('msg', 'invalid')}"


def validation_issues(
    exc: ValidationError, prefix: Loc = (), model: type[BaseModel] | None = None
) -> list[tuple[Loc, str]]:
    """Turn a pydantic error into ``(loc, message)`` pairs rooted at ``prefix``."""
    issues = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        root = None
        if model is not None and err["type"] == "extra_forbidden":
            root = _model_at_from(model, loc[:-1])
        issues.append((prefix + loc, _expected({**err, "loc": loc}, root)))
    return issues


def _model_at_from(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) in (list, dict, Sequence, Mapping):
            tp = get_args(tp)[-1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


# --------------------------------------------------------------------------- loading


class _DupCheck:
    """Finds duplicate keys, which PyYAML silently merges."""

    @staticmethod
    def issues(node: yaml.Node | None, loc: Loc = ()) -> list[tuple[Loc, str, int]]:
        out: list[tuple[Loc, str, int]] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                key = k.value
                if key in seen:
                    out.append(
                        (loc + (key,), f"duplicate key {key!r} (first at line {seen[key]})", k.start_mark.line + 1)
                    )
                else:
                    seen[key] = k.start_mark.line + 1
                out += _DupCheck.issues(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out += _DupCheck.issues(v, loc + (i,))
        return out


#: The most values a document may hold once its aliases are expanded (an alias bomb
#: would otherwise expand into billions of values in validation).
MAX_EXPANDED = 1_000_000


def _check_aliases(root: yaml.Node | None, where: str) -> None:
    """Refuse an anchor used inside itself (a recursive alias: the data would be an
    infinite structure) and aliases expanding into more than ``MAX_EXPANDED`` values."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(
                f"{where}:{node.start_mark.line + 1}: invalid YAML: recursive alias (an anchor used inside itself)"
            )
        open_.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(v) for v in node.value)
        open_.discard(key)
        sizes[key] = n
        if n > MAX_EXPANDED:
            raise ConfigError(
                f"{where}:{node.start_mark.line + 1}: invalid YAML: aliases expand to more than {MAX_EXPANDED:,} values"
            )
        return n

    if root is not None:
        size(root)


def parse_yaml(text: str, path: str | None) -> tuple[Any, ConfigSource]:
    """Parse YAML text, keeping the node tree for line numbers."""
    where = path or "<config>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_aliases(root, where)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    source = ConfigSource(path=path, root=root)
    dups = _DupCheck.issues(root)
    if dups:
        raise ConfigError("\n".join(f"{where}:{line} {format_loc(loc)}: {msg}" for loc, msg, line in dups))
    if data is None:
        raise ConfigError(f"{where}: the file is empty; expected a mapping with `name` and `stages`")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: expected a mapping with `name` and `stages`; got a {type(data).__name__}")
    return data, source


_SET_RE = re.compile(r"^(?P<path>[^=]+)=(?P<value>.*)$", re.S)


def parse_override_path(path: str, data: Mapping[str, Any]) -> Loc:
    """``stages.train.params.lr`` or ``stages[1].params.lr`` -> a loc into ``data``."""
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    if not parts:
        raise ConfigError(f"--set {path!r}: empty field path")
    # A stage may be named instead of indexed: stages.train.params...
    if parts[0] == "stages" and len(parts) > 1 and isinstance(parts[1], str):
        stages = data.get("stages")
        names = [s.get("name") for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
        if parts[1] not in names:
            raise ConfigError(f"--set {path}: no stage named {parts[1]!r}; stages are: {', '.join(map(str, names))}")
        parts[1] = names.index(parts[1])
    return tuple(parts)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``path=value`` overrides (value parsed as YAML) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        m = _SET_RE.match(item)
        if not m:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. stages.train.params.args.epochs=3")
        loc = parse_override_path(m["path"].strip(), data)
        try:
            value = yaml.safe_load(m["value"])
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or too long a number): the text
            value = m["value"]
        node: Any = data
        for i, part in enumerate(loc[:-1]):
            nxt = loc[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError(f"--set {m['path']}: index {part} is out of range")
                node = node[part]
            elif isinstance(node, dict):
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                raise ConfigError(f"--set {m['path']}: {format_loc(loc[: i + 1])} is not a mapping")
        last = loc[-1]
        if isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {m['path']}: cannot set {format_loc(loc)}")
    return data


def parse_config(data: Any, source: ConfigSource) -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig` (schema only, no graph checks)."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise source.error(validation_issues(e)) from None


def read_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[PipelineConfig, ConfigSource]:
    """Read and schema-validate one YAML file."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise ConfigError(f"{shown}: no such file")
    if p.is_dir():
        raise ConfigError(f"{shown}: is a directory; expected a pipeline YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: cannot read: {e}") from None
    data, source = parse_yaml(text, shown)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_config(data, source), source
