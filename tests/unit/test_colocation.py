"""Colocated or routed serving without Ray: ``serving.mode``'s choice, the colocated router's
replicas and resources, what the reservation books, and the in-process variant adapter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from raypipe.resources import Resources
from raypipe.serving.batching import Batcher
from raypipe.serving.colocation import COLOCATED, ROUTED, layout
from raypipe.serving.model_variant import LocalVariant, ModelVariant
from raypipe.serving.resolve import ResolvedVariant
from raypipe.serving.spec import ServeSpec

MIB = 1 << 20


def spec(variants: list[dict[str, Any]], **extra: Any) -> ServeSpec:
    return ServeSpec.model_validate({"app": "a", "model": "m", "variants": variants, **extra})


def resolved(s: ServeSpec, sizes: list[int]) -> list[ResolvedVariant]:
    return [
        ResolvedVariant(f"v{i + 1}", i + 1, f"v{i + 1}", "0" * 64, "file:///x", size, {}, v)
        for i, (v, size) in enumerate(zip(s.variants, sizes, strict=True))
    ]


def test_auto_colocates_small_cpu_models_and_books_the_router_only() -> None:
    s = spec(
        [
            {"version": 1, "weight": 90, "replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "memory": 100 * MIB}},
            {"version": 2, "weight": 10, "ray_actor_options": {"num_cpus": 1, "memory": 50 * MIB}},
        ],
        ingress={"ray_actor_options": {"num_cpus": 0.25}},
    )
    plan = layout(s, resolved(s, [10 * MIB, 10 * MIB]))
    assert plan.mode == COLOCATED and "20.0 MiB (< 256.0 MiB)" in plan.reason
    # replicas: the most any variant asked for; cpus: the router's + the largest variant's; memory: summed
    assert plan.ingress_replicas == 2
    assert plan.ingress_options == {"num_cpus": 1.25, "memory": 150.0 * MIB}
    assert plan.bundles == [Resources.of(cpu=1.25, memory_mb=150.0)] * 2


@pytest.mark.parametrize(
    ("variant", "sizes", "reason"),
    [
        ({}, [200 * MIB, 100 * MIB], "sum to 300.0 MiB (>= 256.0 MiB)"),
        ({"ray_actor_options": {"num_gpus": 1}}, [1, 1], "v2 asks for GPUs"),
        ({"ray_actor_options": {"resources": {"tpu": 1}}}, [1, 1], "resources the router does not have (tpu)"),
        ({"autoscaling": {"max_replicas": 3}}, [1, 1], "v2 autoscales"),
    ],
)
def test_auto_routes_big_models_gpus_custom_resources_and_autoscaling(
    variant: dict[str, Any], sizes: list[int], reason: str
) -> None:
    s = spec([{"version": 1, "weight": 50}, {"version": 2, "weight": 50, **variant}])
    plan = layout(s, resolved(s, sizes))
    assert plan.mode == ROUTED and reason in plan.reason, plan.reason
    # routed: the router's replica and every variant's (autoscaling: max_replicas)
    replicas = 1 + 1 + (3 if "autoscaling" in variant else 1)
    assert len(plan.bundles) == replicas and plan.ingress_replicas == 1


def test_explicit_mode_wins_and_a_lower_threshold_routes() -> None:
    variants = [{"version": 1, "weight": 100, "ray_actor_options": {"num_gpus": 1}}]
    s = spec(variants, serving={"mode": "colocated"})
    plan = layout(s, resolved(s, [1]))
    assert plan.mode == COLOCATED and plan.reason == "serving.mode: colocated"
    assert plan.ingress_options["num_gpus"] == 1.0
    s = spec([{"version": 1, "weight": 100}], serving={"mode": "routed"})
    assert layout(s, resolved(s, [1])).mode == ROUTED
    s = spec([{"version": 1, "weight": 100}], serving={"colocate_max_bytes": 1000})
    assert layout(s, resolved(s, [1000])).mode == ROUTED


def test_serving_mode_is_strict() -> None:
    with pytest.raises(ValidationError, match="colocated"):
        spec([{"version": 1, "weight": 100}], serving={"mode": "inline"})
    with pytest.raises(ValidationError, match="extra"):
        spec([{"version": 1, "weight": 100}], serving={"mode": "auto", "hops": 0})


def test_local_variant_answers_as_the_variant_replica_does(tmp_path: Path) -> None:
    from raypipe.store.artifacts import ArtifactStore
    from tests.integration.serve_funcs import FEATURES, mlp_package, sample_rows

    ref = ArtifactStore(str(tmp_path / "store")).put_value(mlp_package(tmp_path / "m", epochs=2))
    config = {"label": "v1", "uri": ref.uri, "sha256": ref.sha256, "size": ref.size, "fail_rate": 0.5}
    rows = [[r[f] for f in FEATURES] for r in sample_rows(12)]
    ids = [f"r{i}" for i in range(12)]
    want = asyncio.run(ModelVariant(config).predict_many(ids, [[r] for r in rows]))
    local = LocalVariant(config)

    async def through_the_batcher() -> list[dict[str, Any]]:
        batcher = Batcher(local, 2)
        return list(await asyncio.gather(*(batcher.submit(i, [r]) for i, r in zip(ids, rows, strict=True))))

    got = asyncio.run(through_the_batcher())
    assert got == want and {d["ok"] for d in got} == {True, False}  # injected failures: the same ids
    assert asyncio.run(local.label_schema.remote())["classes"] == list(range(10))
