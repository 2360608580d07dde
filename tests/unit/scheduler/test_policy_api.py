"""The policy-facing API: registry derivations, ``Vec``, ``Blocked`` kinds, ``DecisionContext`` and its memos."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sched_helpers import gpu, job, node, running, snapshot

import raypipe.scheduler.policies as policies_pkg
from raypipe.resources import Resources
from raypipe.scheduler import (
    Blocked,
    BlockKind,
    ClusterView,
    Decision,
    DecisionContext,
    JobRequest,
    Placement,
    Policy,
    Snapshot,
    TeamConfig,
    admission_block,
    feasible_ever,
    get_policy,
    policy_names,
)
from raypipe.scheduler import vec as V
from raypipe.scheduler.lifecycle import borrowing_allowed
from raypipe.scheduler.policies import registry

SCHEDULER = Path(__file__).resolve().parents[3] / "raypipe" / "scheduler"

# ---------------------------------------------------------------------- registry


def test_policy_names_follow_the_registry() -> None:
    assert policy_names() == tuple(name for name, _ in registry.POLICIES)
    assert policy_names() == ("fifo", "priority", "backfill", "fair_share", "las")


def test_class_names_and_borrowing_come_from_the_registry_and_the_classes() -> None:
    assert registry.class_names() == {
        "FifoPolicy": "fifo",
        "PriorityPolicy": "priority",
        "BackfillPolicy": "backfill",
        "FairSharePolicy": "fair_share",
        "LasPolicy": "las",
    }
    assert registry.borrowing_policies() == ("fair_share",)
    assert borrowing_allowed("fair_share") and not borrowing_allowed("fifo")
    assert not borrowing_allowed("no-such-policy")
    assert borrowing_allowed(get_policy("fair_share")) and not borrowing_allowed(get_policy("las"))
    for cls_name, name in registry.class_names().items():
        cls = getattr(policies_pkg, cls_name)
        assert cls.name == name and cls is registry.get_policy_class(name)
        assert cls_name in policies_pkg.__all__


class GreedyBorrowerPolicy(Policy):
    """Starts every queued job that fits, above quota as borrowed."""

    name = "greedy_borrower"
    borrows_idle_quota = True

    def decide(self, snapshot: Snapshot) -> Decision:
        ctx = DecisionContext(snapshot, borrowed_counts_to_quota=False)
        for j in snapshot.queue:
            placement = ctx.ledger.place(j)
            if placement is None:
                ctx.wait(j, ctx.explain(j))
            else:
                ctx.start(j, placement, borrowed=ctx.quota_block(j) is not None)
        return ctx.build()


def test_one_registry_line_adds_a_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    line = ("greedy_borrower", f"{__name__}:GreedyBorrowerPolicy")
    monkeypatch.setattr(registry, "POLICIES", (*registry.POLICIES, line))
    assert policy_names()[-1] == "greedy_borrower"
    assert policies_pkg.GreedyBorrowerPolicy is GreedyBorrowerPolicy
    assert "greedy_borrower" in registry.borrowing_policies() and borrowing_allowed("greedy_borrower")
    snap = snapshot([node("n1", 8)], queue=[job("a", 4, team="t")], teams={"t": TeamConfig(quota=gpu(2))})
    d = get_policy("greedy_borrower").decide(snap)
    assert d.started_ids == ("a",) and d.borrowed == ("a",)


# ---------------------------------------------------------------------- vec


def test_vec_functions() -> None:
    r = Resources.of(cpu=2, gpu=1, memory_mb=100, custom={"tpu": 4})
    v = V.of(r)
    assert type(v) is tuple and v == (2.0, 1.0, 100.0, (("tpu", 4.0),)) == V.make(2.0, 1.0, 100.0, (("tpu", 4.0),))
    assert (v[V.CPU], v[V.GPU], v[V.MEMORY], v[V.CUSTOM]) == (2.0, 1.0, 100.0, (("tpu", 4.0),))
    assert V.to_resources(v) == r
    s = V.add(v, v)
    assert s[V.GPU] == 2.0 and s[V.CUSTOM] == (("tpu", 8.0),)
    assert V.sub(s, v) == v and V.is_zero(V.sub(v, v))
    assert V.fits(v, s) and not V.fits(s, v)
    assert V.clamp(s, v) == v
    assert V.clip(V.sub(V.ZERO, v)) == V.ZERO
    assert V.total([v, v, v])[V.CPU] == 6.0 and V.total([]) == V.ZERO
    assert V.dominant_index(v) == V.GPU and V.component(v, V.CUSTOM) == 4.0
    assert V.component_name(V.CUSTOM, v) == "tpu" and V.component_name(V.GPU, v) == "GPU"


def test_requests_expose_their_vectors_and_shape() -> None:
    a = JobRequest("a", (gpu(1), gpu(2)), strategy="SPREAD")
    b = JobRequest("b", (gpu(1), gpu(2)), strategy="SPREAD", submit_time=5)
    assert a.bundle_vecs == (V.of(gpu(1)), V.of(gpu(2))) and a.demand_vec == V.of(gpu(3))
    assert a.shape_key == b.shape_key != JobRequest("c", (gpu(1), gpu(2))).shape_key


# ---------------------------------------------------------------------- Blocked


def test_quota_blocks_say_their_kind() -> None:
    teams = {"t": TeamConfig(quota=gpu(4))}
    snap = snapshot(
        [node("n1", 8)],
        queue=[job("small", 2, team="t"), job("huge", 8, team="t")],
        run=[running(job("r", 3, team="t"), "n1")],
        teams=teams,
    )
    ctx = DecisionContext(snap)
    at_quota = ctx.quota_block(snap.queue[0])
    assert at_quota is not None and at_quota.kind is BlockKind.AT_QUOTA and not at_quota.never
    assert at_quota.text == "team t at quota 3/4 GPU (needs 2 more)"
    never = ctx.quota_block(snap.queue[1])
    assert never == (BlockKind.EXCEEDS_QUOTA, "never schedulable: demand exceeds team t's quota (8 GPU > 4 GPU)")
    kind, text = never  # a (kind, text) pair
    assert kind.never and str(never) == text
    assert ctx.quota_block(job("other", 8)) is None


def test_admission_block_tells_quota_from_capacity() -> None:
    cluster = ClusterView((node("n1", 8),))
    teams = {"t": TeamConfig(quota=gpu(4))}
    over = admission_block(job("q", 6, team="t"), cluster, teams)
    assert over is not None and over.kind is BlockKind.EXCEEDS_QUOTA
    assert admission_block(job("q", 6, team="t"), cluster, teams, allow_borrowing=True) is None
    big = admission_block(job("big", 16), cluster, teams)
    assert big is not None and big.kind is BlockKind.NEVER_FITS and big.never
    assert big.text == feasible_ever(job("big", 16), cluster, teams)
    assert admission_block(job("ok", 8), cluster, teams) is None


# ---------------------------------------------------------------------- DecisionContext


def test_context_records_starts_waits_preemptions_and_builds_a_decision() -> None:
    victim = running(job("v", 8), "n1", start=0)
    snap = snapshot([node("n1", 8)], queue=[job("a", 4, t=1), job("b", 8, t=2)], run=[victim], now=10)
    ctx = DecisionContext(snap, max_preemptions=1)
    assert ctx.now == 10 and ctx.preempt_room() == 1
    placement = ctx.try_preempt_for(snap.queue[0], [victim])
    assert placement is not None and list(ctx.preempted) == ["v"] and ctx.preempt_room() == 0
    ctx.start(snap.queue[0], placement)
    ctx.wait(snap.queue[0], "ignored once started")
    ctx.wait(snap.queue[1], ctx.explain(snap.queue[1]))
    assert [r.job_id for r, _, _ in ctx.started_now()] == ["a"]
    assert {r.job_id for r, _, _ in ctx.running_now()} == {"a"}
    d = ctx.build()
    assert d.started_ids == ("a",) and d.preemptions == ("v",) and set(d.reasons) == {"b"}


def test_a_memo_is_forgotten_when_its_team_starts_a_job() -> None:
    snap = snapshot([node("n1", 8)], queue=[job("a", 4, team="x"), job("b", 4, team="x")])
    ctx = DecisionContext(snap)
    memo = ctx.memo()
    why = Blocked(BlockKind.NO_CAPACITY, "full")
    memo.remember(snap.queue[0], why)
    assert memo.recall(snap.queue[1]) == why
    assert ctx.recall(memo, snap.queue[1]) == why and ctx.build().reasons["b"] == "full"
    other = job("c", 4, team="y")
    ctx.start(other, _place(ctx, other))
    assert memo.recall(snap.queue[1]) == why, "another team's start keeps the memo"
    ctx.start(snap.queue[0], _place(ctx, snap.queue[0]))
    assert memo.recall(snap.queue[1]) is None


def test_answer_run_answers_a_teams_jobs_up_to_the_first_the_memo_does_not_know() -> None:
    queue = [job("a1", 4, team="x"), job("a2", 2, team="x"), job("a3", 4, team="x"), job("a4", 8, team="x")]
    ctx = DecisionContext(snapshot([node("n1", 8)], queue=queue))
    memo = ctx.memo()
    assert ctx.answer_run(memo, "x", queue, 0, BlockKind.AT_QUOTA, [], BlockKind.NO_CAPACITY) == (0, False)
    memo.remember(queue[0], Blocked(BlockKind.AT_QUOTA, "at quota"))  # shape 4
    memo.remember(queue[1], Blocked(BlockKind.NO_CAPACITY, "full"))  # shape 2
    kept: list[tuple[JobRequest, str]] = []
    assert ctx.answer_run(memo, "x", queue, 1, BlockKind.AT_QUOTA, kept, BlockKind.NO_CAPACITY) == (3, True)
    assert kept == [(queue[2], "at quota")]  # a1 was before the start
    assert ctx.answer_run(memo, "x", queue, 2, BlockKind.AT_QUOTA, [], BlockKind.NO_CAPACITY) == (3, False)
    assert ctx.build().reasons == {"a2": "full", "a3": "at quota"}
    assert ctx.answer_run(memo, "x", queue[:3], 1, BlockKind.AT_QUOTA, [], BlockKind.NO_CAPACITY) == (3, True)
    assert ctx.answer_run(memo, "y", queue, 0, BlockKind.AT_QUOTA, [], BlockKind.NO_CAPACITY) == (0, False)


def _place(ctx: DecisionContext, j: JobRequest) -> Placement:
    p = ctx.ledger.place(j)
    assert p is not None
    return p


# ---------------------------------------------------------------------- structure


def _policy_modules() -> list[Path]:
    return sorted(p for p in (SCHEDULER / "policies").glob("*.py") if p.name not in ("__init__.py", "registry.py"))


@pytest.mark.parametrize("path", _policy_modules(), ids=lambda p: p.stem)
def test_policies_use_only_public_names_of_other_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bad = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ""
            if mod == "__future__":
                continue
            bad += [f"import {mod}" for part in mod.split(".") if part.startswith("_")]
            bad += [f"from {mod} import {a.name}" for a in n.names if a.name.startswith("_")]
        elif isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__"):
            base = n.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls", *own):
                continue
            bad.append(f"line {n.lineno}: .{n.attr}")
    assert not bad, f"{path.name} reads private names: {bad}"


def test_no_scheduler_module_is_over_600_lines() -> None:
    long = {
        p.relative_to(SCHEDULER).as_posix(): n
        for p in SCHEDULER.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long
