"""Planning: the stage DAG, cross-stage checks and each stage's kind, before Ray starts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from raypipe.config import ConfigSource, Loc, PipelineConfig, StageConfig, validation_issues
from raypipe.exceptions import ConfigError, RaypipeError
from raypipe.scheduler.policies.registry import get_policy
from raypipe.stages.base import StageKind
from raypipe.stages.registry import get_stage_kind, stage_kind_names


@dataclass(frozen=True)
class PlannedStage:
    spec: StageConfig
    kind: StageKind
    upstream: tuple[str, ...]
    #: The outputs the stage must produce: ``outputs:`` if given, else the kind's own
    #: (None: whatever the code returns).
    outputs: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Plan:
    """A validated pipeline: stages in a topological order with their kinds."""

    config: PipelineConfig
    stages: dict[str, PlannedStage]
    order: tuple[str, ...]
    #: Where the config came from (its errors name ``file:line``); None: built in Python.
    source: ConfigSource | None = None

    def downstream(self, name: str) -> set[str]:
        """Every stage that depends, directly or not, on ``name``."""
        children: dict[str, list[str]] = {s: [] for s in self.stages}
        for s, ps in self.stages.items():
            for u in ps.upstream:
                children[u].append(s)
        out: set[str] = set()
        todo = list(children[name])
        while todo:
            s = todo.pop()
            if s not in out:
                out.add(s)
                todo.extend(children[s])
        return out


def find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``node -> upstream nodes`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in edges.get(n, []):
            if m not in edges:
                continue
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in edges:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def topo_order(edges: dict[str, list[str]], declared: Iterable[str]) -> tuple[str, ...]:
    """Kahn's algorithm, ties broken by declaration order (stable, readable)."""
    declared = list(declared)
    rank = {n: i for i, n in enumerate(declared)}
    indeg = {n: len(set(edges[n])) for n in declared}
    children: dict[str, list[str]] = {n: [] for n in declared}
    for n in declared:
        for u in set(edges[n]):
            children[u].append(n)
    ready = sorted((n for n in declared if indeg[n] == 0), key=rank.__getitem__)
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for c in children[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
                ready.sort(key=rank.__getitem__)
    return tuple(order)


def build_plan(config: PipelineConfig, source: ConfigSource | None = None) -> Plan:
    """Check the graph and every stage's kind and params; raise one ConfigError listing all issues."""
    source = source or ConfigSource(path=None)
    issues: list[tuple[Loc, str]] = []
    index: dict[str, int] = {}
    for i, st in enumerate(config.stages):
        if st.name in index:
            issues.append((("stages", i, "name"), f"duplicate stage name {st.name!r} (also stages[{index[st.name]}])"))
        else:
            index[st.name] = i
    for i, st in enumerate(config.stages):
        for j, dep in enumerate(st.depends_on):
            if dep == st.name:
                issues.append((("stages", i, "depends_on", j), f"stage {st.name!r} depends on itself"))
            elif dep not in index:
                issues.append(
                    (("stages", i, "depends_on", j), f"unknown stage {dep!r}; stages are: {', '.join(index)}")
                )
        for arg, ref in st.inputs.items():
            producer, _, output = ref.partition(".")
            if producer == st.name:
                issues.append((("stages", i, "inputs", arg), f"stage {st.name!r} cannot read its own output"))
            elif producer not in index:
                issues.append(
                    (
                        ("stages", i, "inputs", arg),
                        f"{ref!r} names unknown stage {producer!r}; stages are: {', '.join(index)}",
                    )
                )
    edges = {st.name: [u for u in st.upstream() if u in index and u != st.name] for st in config.stages}
    if not issues:
        cycle = find_cycle(edges)
        if cycle:
            first = index[cycle[0]]
            issues.append((("stages", first, "depends_on"), "dependency cycle: " + " -> ".join(cycle)))

    sched = config.scheduler
    try:
        get_policy(sched.policy, **sched.policy_args)
    except RaypipeError as e:
        where = ("scheduler", "policy_args") if "argument" in str(e) else ("scheduler", "policy")
        issues.append((where, str(e)))
    for team, tc in sched.teams.items():
        if not (tc.model_fields_set & {"cpu", "gpu", "memory_mb", "custom", "priority", "weight"}):
            issues.append(
                (
                    ("scheduler", "teams", team),
                    "a team needs a quota (cpu, gpu, memory_mb, custom), a priority or a weight",
                )
            )

    planned: dict[str, PlannedStage] = {}
    for i, st in enumerate(config.stages):
        try:
            cls = get_stage_kind(st.kind)
        except ConfigError:
            issues.append((("stages", i, "kind"), f"got {st.kind!r}; expected one of: {', '.join(stage_kind_names())}"))
            continue
        try:
            params = cls.Params.model_validate(st.params)
        except ValidationError as e:
            issues.extend(validation_issues(e, prefix=("stages", i, "params"), model=cls.Params))
            continue
        kind = cls(params)
        for loc, msg in kind.check(list(st.inputs)):
            issues.append((("stages", i, "params") + tuple(loc), msg))
        own = kind.outputs()
        if own is not None and st.outputs is not None and sorted(own) != sorted(st.outputs):
            issues.append(
                (("stages", i, "outputs"), f"got {st.outputs}; a {st.kind} stage with these params outputs {own}")
            )
        outputs = st.outputs if st.outputs is not None else own
        planned[st.name] = PlannedStage(
            spec=st,
            kind=kind,
            upstream=tuple(edges.get(st.name, ())),
            outputs=None if outputs is None else tuple(outputs),
        )
    for i, st in enumerate(config.stages):
        for arg, ref in st.inputs.items():
            producer, _, output = ref.partition(".")
            declared = planned[producer].outputs if producer in planned and producer != st.name else None
            if declared is not None and output not in declared:
                issues.append(
                    (
                        ("stages", i, "inputs", arg),
                        f"stage {producer!r} has no output {output!r}; it outputs: {', '.join(declared) or 'nothing'}",
                    )
                )
    if issues:
        raise source.error(issues)
    return Plan(config=config, stages=planned, order=topo_order(edges, [s.name for s in config.stages]), source=source)
