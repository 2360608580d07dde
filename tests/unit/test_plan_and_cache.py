"""DAG order, cycles, downstream sets and cache keys (no Ray)."""

from __future__ import annotations

import pytest

import raypipe
from raypipe.runner.cache import cache_key
from raypipe.runner.plan import find_cycle, topo_order


def pipeline(**overrides: object) -> raypipe.PipelineConfig:
    b_args = {"k": 2, **overrides.get("b_args", {})}  # type: ignore[dict-item]
    return raypipe.PipelineConfig(
        name="demo",
        stages=[
            raypipe.StageConfig(name="a", kind="python", params={"function": "tests.unit.funcs:make"}),
            raypipe.StageConfig(
                name="b",
                kind="python",
                inputs={"x": "a.out"},
                resources=overrides.get("b_resources", {"cpu": 1}),
                params={"function": "tests.unit.funcs:use", "args": b_args},
            ),
            raypipe.StageConfig(
                name="c", kind="python", depends_on=["b"], params={"function": "tests.unit.funcs:make"}
            ),
            raypipe.StageConfig(
                name="d", kind="python", depends_on=["a"], params={"function": "tests.unit.funcs:make"}
            ),
        ],
    )


def test_topological_order_is_stable_and_downstream_is_transitive() -> None:
    plan = raypipe.load(pipeline())
    assert plan.order == ("a", "b", "c", "d")
    assert plan.downstream("a") == {"b", "c", "d"}
    assert plan.downstream("b") == {"c"}
    assert plan.downstream("c") == set()


def test_topo_order_respects_edges_not_declaration() -> None:
    edges = {"z": ["y"], "y": [], "x": ["z"]}
    assert topo_order(edges, ["x", "z", "y"]) == ("y", "z", "x")


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}, ["a", "b", "c", "a"]),
        ({"a": [], "b": ["a"]}, None),
    ],
)
def test_find_cycle(edges: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(edges) == cycle


def key(
    plan: raypipe.runner.plan.Plan,
    stage: str,
    inputs: dict[str, str] | None = None,
    after: dict[str, str] | None = None,
) -> str:  # type: ignore[name-defined]
    return cache_key(plan.stages[stage], inputs or {}, after or {})


def test_cache_key_depends_on_params_and_inputs_only() -> None:
    base = raypipe.load(pipeline())
    k = key(base, "b", {"x": "aaa"})
    assert k == key(raypipe.load(pipeline()), "b", {"x": "aaa"}), "deterministic"
    assert k != key(raypipe.load(pipeline(b_args={"k": 3})), "b", {"x": "aaa"}), "params change the key"
    assert k != key(base, "b", {"x": "bbb"}), "input content changes the key"
    assert k == key(raypipe.load(pipeline(b_resources={"cpu": 2})), "b", {"x": "aaa"}), "resources do not"
    assert key(base, "c", after={"b": "k1"}) != key(base, "c", after={"b": "k2"}), "depends_on keys do"


def test_cache_key_follows_user_code(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mod = tmp_path / "userfuncs_for_key.py"
    mod.write_text("def f():\n    return {'a': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = raypipe.PipelineConfig(
        name="c", stages=[raypipe.StageConfig(name="s", kind="python", params={"function": "userfuncs_for_key:f"})]
    )
    k1 = key(raypipe.load(cfg), "s")
    mod.write_text("def f():\n    return {'a': 2}\n")
    k2 = key(raypipe.load(cfg), "s")
    assert k1 != k2
