"""ControllerCore's placement settings (consolidation, node choice) with a fake backend: no Ray."""

from __future__ import annotations

import json

import pytest
from test_controller_core import Clock, FakeBackend, gpu_nodes, req, states

from raypipe.scheduler.controller import ControllerCore, SchedulerSettings
from raypipe.scheduler.errors import PolicyConfigError


def make(**settings: object) -> tuple[ControllerCore, FakeBackend]:
    be = FakeBackend(gpu_nodes(3, 4))
    core = ControllerCore(be, SchedulerSettings(**settings), Clock())  # type: ignore[arg-type]
    core.refresh_nodes()
    return core, be


def test_default_placement_spreads_as_before_and_strict_keeps_gangs_on_one_node() -> None:
    for consolidation, expect in (("none", "running"), ("strict", "queued")):
        core, be = make(consolidation=consolidation)
        core.submit(req("a", gpu=3), "o@1")  # node-0: 1 GPU left
        core.submit(req("b", gpu=3), "o@1")  # node-1: 1 GPU left
        core.submit(req("c", gpu=3), "o@1")  # node-2: 1 GPU left
        core.schedule()
        core.submit(req("gang", gpu=1, bundles=2), "o@1")  # 2 GPUs: fits one 4-GPU node, none has 2 free
        core.schedule()
        assert states(core)["gang"] == expect, consolidation
        if expect == "queued":
            assert "needs 2 CPU, 2 GPU on one node (consolidation strict)" in core.jobs["gang"].reason
        else:
            assert len({n for v in be.pgs.values() if "gang" in v[0] for n in v[2]}) == 2


def test_strict_gives_big_gangs_whole_nodes_and_first_fit_takes_the_first_node() -> None:
    core, be = make(consolidation="strict", node_choice="first_fit")
    core.submit(req("small", gpu=1), "o@1")  # first_fit: node-0
    core.schedule()
    core.submit(req("big", gpu=4, bundles=2), "o@1")  # 8 GPUs: two whole 4-GPU nodes
    core.schedule()
    assert states(core) == {"small": "running", "big": "running"}
    ((_, _, nodes),) = [v for v in be.pgs.values() if "big" in v[0]]
    assert sorted(set(nodes)) == ["node-1", "node-2"]
    assert core.jobs["small"].placement == ("node-0",)


def test_placement_settings_are_validated_and_persisted() -> None:
    core, be = make()
    with pytest.raises(PolicyConfigError, match="consolidation"):
        core.configure(SchedulerSettings(consolidation="loose"))
    with pytest.raises(PolicyConfigError, match="node_choice"):
        ControllerCore(be, SchedulerSettings(node_choice="worst_fit"), Clock())
    core.configure(SchedulerSettings(consolidation="prefer", node_choice="fgd"))
    assert json.loads(be.settings or b"{}")["consolidation"] == "prefer"
    again = ControllerCore(be, None, Clock())  # a restarted controller reads them back
    assert again.settings.placement().consolidation == "prefer"
    assert again.settings.placement().node_choice == "fgd"


def test_the_pipeline_yamls_scheduler_section_sets_the_placement() -> None:
    from pydantic import ValidationError

    from raypipe.config.schema import SchedulerConfig
    from raypipe.scheduler.placement_settings import CONSOLIDATIONS, NODE_CHOICES

    s = SchedulerConfig(consolidation="strict", node_choice="first_fit").settings()
    assert SchedulerSettings(**s).placement().describe() == "consolidation=strict, node_choice=first_fit"
    assert SchedulerSettings(**SchedulerConfig().settings()).placement() == SchedulerSettings().placement()
    with pytest.raises(ValidationError, match="consolidation"):
        SchedulerConfig(consolidation="loose")  # type: ignore[arg-type]
    # the config layer spells the scheduler's choices out (it may not import the scheduler): the same lists
    fields = SchedulerConfig.model_fields
    assert fields["consolidation"].annotation.__args__ == CONSOLIDATIONS  # type: ignore[union-attr]
    assert fields["node_choice"].annotation.__args__ == NODE_CHOICES  # type: ignore[union-attr]
