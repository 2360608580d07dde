"""The Ray side of the ``tune`` kind without a cluster: the grant's resource manager and
how a sweep's results become outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from raypipe.exceptions import StageError
from raypipe.resources import Resources
from raypipe.stages.base import StageContext
from raypipe.stages.tune import TuneParams

ts = pytest.importorskip("raypipe.stages.tune_support")


def ctx(tmp_path: Path, **kw: Any) -> StageContext:
    args = {"resources": Resources.of(cpu=0.5), "gang_size": 2, "grant_nodes": ["n1", "n2"], **kw}
    return StageContext(run_id="r1", stage="sweep", attempt=1, storage=str(tmp_path), **args)


class Entity:
    """Stands in for a Ray actor class: records ``.options``."""

    def __init__(self) -> None:
        self.opts: dict[str, Any] = {}

    def options(self, **opts: Any) -> Entity:
        self.opts = opts
        return self


N1, N2 = "a1" * 28, "b2" * 28  # node ids are hex


def test_trials_take_booked_bundles_pinned_to_their_nodes(tmp_path: Path) -> None:
    from ray.tune import PlacementGroupFactory

    c = ctx(tmp_path, resources=Resources.of(cpu=0.5, memory_mb=64, custom={"slot": 1}))
    bundle = ts.trial_bundle(c)
    assert bundle == {"CPU": 0.5, "memory": 64 * 1024 * 1024, "slot": 1.0}
    grant = ts.GrantResources(bundle, [N1, N2])
    req = PlacementGroupFactory([bundle])
    for _ in range(3):
        grant.request_resources(req)
    first, second = grant.acquire_resources(req), grant.acquire_resources(req)
    assert (first.node, second.node) == (N1, N2)
    assert grant.acquire_resources(req) is None and not grant.has_resources_ready(req), "two bundles, two trials"
    [actor] = first.annotate_remote_entities([Entity()])
    assert actor.opts["num_cpus"] == 0.5 and actor.opts["resources"] == {"slot": 1.0}
    assert actor.opts["scheduling_strategy"].node_id == N1 and actor.opts["scheduling_strategy"].soft is False
    grant.free_resources(first)
    assert grant.acquire_resources(req).node == N1, "a freed bundle goes to the next trial"
    with pytest.raises(StageError, match="more than one bundle"):
        grant.request_resources(PlacementGroupFactory([{"CPU": 1}]))


def test_a_grant_shape_names_the_sweep_and_empty_resources_are_an_error(tmp_path: Path) -> None:
    a = ts.grant_shape(ctx(tmp_path))
    assert a == ts.grant_shape(ctx(tmp_path, grant_nodes=["n3", "n3"])), "nodes do not matter, the shape does"
    assert a != ts.grant_shape(ctx(tmp_path, gang_size=3))
    with pytest.raises(StageError, match="needs resources for its trials"):
        ts.trial_bundle(ctx(tmp_path, resources=Resources.of()))


@dataclass
class FakeResult:
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[float] = field(default_factory=list)
    error: Exception | None = None
    checkpoint: Any = None
    best_checkpoints: list[Any] = field(default_factory=list)
    path: str = ""

    @property
    def metrics_dataframe(self) -> pd.DataFrame | None:
        return pd.DataFrame({"loss": self.history}) if self.history else None


class FakeCheckpoint:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def as_directory(self) -> Any:
        from contextlib import nullcontext

        return nullcontext(str(self.folder))


def sweep(tmp_path: Path) -> Any:
    p = TuneParams.model_validate(
        {
            "function": "tests.integration.tune_funcs:quality_curve",
            "space": {"q": {"choice": [1, 2]}, "h": {"choice": [[8], [8, 4]]}},
            "metric": "loss",
            "mode": "min",
            "scheduler": {"asha": {"max_t": 8}},
        }
    )
    return ts.Sweep(ctx(tmp_path), p, function=p.function, code="c0de")


def test_outputs_pick_the_best_report_and_tabulate_every_trial(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "w.txt").write_text("w")
    ckpt = FakeCheckpoint(folder)
    results = [
        # The best report of all (0.2) is earlier than its last (0.5): it still wins.
        FakeResult(
            {"q": 2, "h": [8, 4]},
            {"trial_id": "t1", "loss": 0.5, "training_iteration": 8, "pid": 7},
            [0.9, 0.2, 0.5],
            best_checkpoints=[(ckpt, {"loss": 0.2, "training_iteration": 2}), (None, {"loss": 0.5})],
        ),
        FakeResult({"q": 1, "h": [8]}, {"trial_id": "t0", "loss": 0.3, "training_iteration": 2}, [0.4, 0.3]),
        FakeResult(
            {"q": 1, "h": [8]},
            {"trial_id": "t2", "loss": 0.8, "training_iteration": 1, ts.STOPPED_EARLY: True},
            [0.8],
        ),
        FakeResult({"q": 2, "h": [8]}, {"trial_id": "t3"}, error=RuntimeError("boom\nValueError: bad q")),
    ]
    out = sweep(tmp_path).outputs(results, {"log": "/x"}, dotted=False)
    assert out["best_config"] == {"log": "/x", "q": 2, "h": [8, 4]}
    assert out["metrics"] == {"loss": 0.2, "training_iteration": 2}
    table = out["trials"]
    assert list(table["trial_id"]) == ["t0", "t1", "t2", "t3"]
    assert list(table.columns) == [
        "trial_id",
        "config/q",
        "config/h",
        "status",
        "iterations",
        "loss_last",
        "loss_best",
        "stopped_early",
        "error",
    ]
    assert list(table["config/h"]) == ["[8]", "[8, 4]", "[8]", "[8]"], "lists become JSON text (parquet-safe)"
    assert list(table["stopped_early"]) == [False, False, True, False]
    assert list(table["status"]) == ["TERMINATED", "TERMINATED", "TERMINATED", "ERROR"]
    assert table["error"].iloc[3] == "ValueError: bad q"
    assert table.set_index("trial_id").loc["t1", "loss_best"] == 0.2
    model = out["model"]
    assert (model.root / "w.txt").read_text() == "w"
    assert model.meta["trained_by"] == {
        "kind": "tune",
        "function": sweep(tmp_path).function,
        "stage": "sweep",
        "run_id": "r1",
    }
    assert model.meta["params"] == out["best_config"] and model.meta["code"] == "c0de"


def test_a_sweep_with_no_usable_trial_is_an_error_naming_why(tmp_path: Path) -> None:
    failed = [FakeResult({"q": 1}, {"trial_id": f"t{i}"}, error=ValueError(f"bad {i}")) for i in range(2)]
    with pytest.raises(
        StageError, match=r"every trial of the sweep failed \(2\); first errors: trial t0: bad 0; trial t1"
    ):
        sweep(tmp_path).outputs(failed, {}, dotted=False)
    silent = [FakeResult({"q": 1}, {"trial_id": "t0", "acc": 0.3, "pid": 1})]
    with pytest.raises(StageError, match="no trial reported the metric 'loss'; reported: acc"):
        sweep(tmp_path).outputs(silent, {}, dotted=False)
    no_ckpt = [FakeResult({"q": 1}, {"trial_id": "t0", "loss": 0.3}, [0.3])]
    with pytest.raises(StageError, match=r"the best trial \(t0\) reported no checkpoint"):
        sweep(tmp_path).outputs(no_ckpt, {}, dotted=False)
