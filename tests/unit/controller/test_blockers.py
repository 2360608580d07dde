"""Reasons named with who holds the capacity (``Blockers``): the same text as naming each
reason from scratch (every job scanned for every node), on random clusters, and one index
per scheduling step however many jobs wait."""

from __future__ import annotations

import random

from test_controller_core import Clock, FakeBackend, req

from raypipe.resources import Resources
from raypipe.scheduler.backend import NodeInfo
from raypipe.scheduler.blockers import Blockers, node_label
from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.scheduler.jobs import JobState, job_label


def _reference(core: ControllerCore, why: str) -> str:
    """What a reason reads, from scratch: every job scanned for every node it names."""
    nodes_by_id = {}
    for n in core._nodes:
        nodes_by_id.setdefault(n.node_id, n)

    def holders(node_id: str) -> list[tuple[str, Resources]]:
        held: dict[str, Resources] = {}
        for job in core.jobs.values():
            if job.state.holds_grant and job.placement:
                mine = [b for b, nid in zip(job.request.bundles, job.placement, strict=True) if nid == node_id]
                if mine:
                    held[job_label(job)] = held.get(job_label(job), Resources()) + sum(mine, Resources())
        ext = core._external.get(node_id)
        if ext is not None and not ext.is_zero():
            held["work raypipe did not admit"] = ext
        return sorted(held.items(), key=lambda kv: (-kv[1].gpu, -kv[1].cpu, kv[0]))

    named = [n.node_id for n in core._nodes if n.node_id in why]
    for nid in named:
        label = node_label(nid, nodes_by_id.get(nid))
        why = why.replace(f"({nid})", f"({label})").replace(nid, label)
    nodes = named or [n.node_id for n in core._nodes if n.alive]
    parts = [
        f"{name} {res}" + (f" on {node_label(nid, nodes_by_id.get(nid))}" if len(nodes) > 1 else "")
        for nid in nodes
        for name, res in holders(nid)
    ]
    if parts:
        why += "; held by " + ", ".join(parts[:6] + ([f"{len(parts) - 6} more"] if len(parts) > 6 else []))
    return why


def test_named_reasons_equal_naming_each_from_scratch_on_random_clusters() -> None:
    rng = random.Random(7)
    for trial in range(25):
        nodes = [
            NodeInfo(
                f"node-{i}",
                Resources.of(cpu=8, gpu=4),
                alive=rng.random() > 0.1 or i == 0,
                address=rng.choice([None, f"10.0.0.{i}"]),
                name=rng.choice([None, f"w{i}"]),
                head=i == 0,
                available=rng.choice([None, Resources.of(cpu=rng.choice([2, 4, 8]), gpu=rng.choice([0, 2, 4]))]),
            )
            for i in range(rng.randint(1, 12))
        ]
        be, clock = FakeBackend(nodes), Clock()
        core = ControllerCore(be, SchedulerSettings(policy=rng.choice(["fifo", "las", "backfill"])), clock)
        core.refresh_nodes()
        for k in range(rng.randint(0, 40)):
            owner = rng.choice(["o@1", "serve:digits", "o@2"])
            job_id = rng.choice([f"j{k}", f"run-20261207-000000-abc{k % 3}:train:1:{k:04x}"])
            core.submit(req(job_id, gpu=rng.choice([1, 2, 4]), bundles=rng.choice([1, 1, 2])), owner)
        core.schedule()
        core.refresh_nodes()  # work raypipe did not admit: what Ray reports beyond the grants
        blockers = core.blockers()
        reasons = [j.reason or "" for j in core.jobs.values() if j.state is JobState.QUEUED]
        reasons += ["needs 4 GPU on one node; largest free block is 2 GPU (node-1)", "node-3 and node-10 are full", ""]
        for why in reasons:
            assert blockers.name(why) == _reference(core, why), (trial, why)
            assert core.name_blockers(why) == _reference(core, why)


def test_a_reason_names_its_node_and_its_holders_once_per_step() -> None:
    nodes = [
        NodeInfo("node-a", Resources.of(cpu=8, gpu=4), address="10.0.0.1"),
        NodeInfo("node-b", Resources.of(cpu=8, gpu=4)),
    ]
    core = ControllerCore(FakeBackend(nodes), SchedulerSettings(policy="fifo"), Clock())
    core.refresh_nodes()
    for i in range(9):
        core.submit(req(f"r{i}", gpu=1, cpu=1), "o@1")
    core.schedule()
    blockers = Blockers(core._nodes, core.jobs.values(), core._external)
    text = blockers.name("needs 2 GPU (node-a)")
    assert text.startswith("needs 2 GPU (node 10.0.0.1); held by ")
    assert text.count(" 1 CPU, 1 GPU") == 4 and "more" not in text  # node-a's four jobs, not node-b's
    everywhere = blockers.name("behind head-of-line job x (fifo)")
    assert everywhere.endswith("2 more") and " on node 10.0.0.1" in everywhere  # 8 holders on two nodes
    assert blockers.name("behind head-of-line job x (fifo)") is everywhere  # named once, then reused


def test_the_free_capacity_view_equals_resources_arithmetic_with_and_without_custom_kinds() -> None:
    """``_cluster`` sums grants as vectors unless something has a custom kind; either way every
    node's free capacity equals total minus grants minus work raypipe did not admit, clipped."""
    rng = random.Random(3)
    for trial in range(20):
        custom = trial % 2 == 1
        nodes = [
            NodeInfo(
                f"node-{i}",
                Resources.of(cpu=8, gpu=4, custom={"tpu": 2.0} if custom else None),
                available=rng.choice([None, Resources.of(cpu=rng.choice([0.5, 3, 8]), gpu=rng.choice([0, 1, 4]))]),
            )
            for i in range(rng.randint(1, 6))
        ]
        core = ControllerCore(FakeBackend(nodes), SchedulerSettings(policy="fifo"), Clock())
        core.refresh_nodes()
        for k in range(rng.randint(1, 20)):
            bundle = {"gpu": rng.choice([1, 2]), "cpu": rng.choice([0.5, 1, 1.5])}
            if custom and rng.random() < 0.5:
                bundle["custom"] = {"tpu": 1.0}
            core.submit({"job_id": f"j{k}", "bundles": [bundle] * rng.choice([1, 2])}, "o@1")
        core.schedule()
        core.refresh_nodes()
        held: dict[str, Resources] = {}
        for job in core.jobs.values():
            if job.state.holds_grant and job.placement:
                for b, nid in zip(job.request.bundles, job.placement, strict=True):
                    held[nid] = held.get(nid, Resources()) + b
        view = core._cluster()
        for n in core._nodes:
            free = n.total - held.get(n.node_id, Resources()) - core._external.get(n.node_id, Resources())
            expected = Resources.of(
                max(0.0, free.cpu),
                max(0.0, free.gpu),
                max(0.0, free.memory_mb),
                {k: x for k, x in free.custom if x > 1e-9},
            )
            assert view.node(n.node_id).free == expected, (trial, n.node_id)
