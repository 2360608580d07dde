"""A seeded, Philly-like synthetic workload (the distributions of Gavel's Philly-derived generator)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from raypipe.scheduler.errors import TraceError
from raypipe.scheduler.traces.model import Trace, TraceJob, TraceMeta, TraceOptions

#: (GPUs, probability) of Gavel's Philly-derived generator.
PHILLY_GPU_MIX: tuple[tuple[int, float], ...] = ((1, 0.70), (2, 0.10), (4, 0.15), (8, 0.05))
#: Teams (Philly "virtual clusters") and their share of jobs.
SYNTHETIC_TEAMS: tuple[tuple[str, float], ...] = (("vc0", 0.4), ("vc1", 0.3), ("vc2", 0.2), ("vc3", 0.1))


def _philly_duration(rng: random.Random) -> float:
    """Heavy tail: 80% of jobs 10^U(1.5, 3) minutes, 20% 10^U(3, 4) minutes (Gavel)."""
    if rng.random() < 0.8:
        return 60.0 * 10 ** rng.uniform(1.5, 3.0)
    return 60.0 * 10 ** rng.uniform(3.0, 4.0)


def _pick(rng: random.Random, mix: Sequence[tuple[Any, float]]) -> Any:
    r = rng.random() * math.fsum(w for _, w in mix)
    acc = 0.0
    for v, w in mix:
        acc += w
        if r < acc:
            return v
    return mix[-1][0]


def synthetic_philly(
    *,
    jobs: int = 1000,
    total_gpus: float = 64,
    load: float = 0.85,
    seed: int = 0,
    max_duration_s: float | None = None,
    gpu_mix: Sequence[tuple[int, float]] = PHILLY_GPU_MIX,
    teams: Sequence[tuple[str, float]] = SYNTHETIC_TEAMS,
    cpus_per_gpu: float = 0.0,
    memory_mb_per_gpu: float = 0.0,
    durations_known: bool = False,
    window_h: float | None = None,
) -> Trace:
    """A seeded Philly-like trace: Poisson arrivals at ``load`` on ``total_gpus``.

    GPU counts and durations are drawn first (capped at ``max_duration_s``);
    the arrival rate is then ``load * total_gpus / mean(gpus * duration)``, so
    the offered load is ``load`` in expectation.  Same arguments, same trace.
    """
    try:
        TraceOptions(max_jobs=jobs, seed=seed, max_duration_s=max_duration_s, window_h=window_h)
    except ValidationError as e:
        raise TraceError(
            "synthetic trace: " + "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in e.errors())
        ) from None
    if not load > 0:
        raise TraceError(f"synthetic trace: load must be > 0, got {load}")
    if not total_gpus > 0:
        raise TraceError(f"synthetic trace: total_gpus must be > 0, got {total_gpus}")
    if not gpu_mix or any(g <= 0 or w < 0 for g, w in gpu_mix):
        raise TraceError("synthetic trace: gpu_mix needs (gpus > 0, weight >= 0) pairs")
    rng = random.Random(seed)
    draws: list[tuple[int, float, str]] = []
    capped = 0
    for _ in range(jobs):
        g = int(_pick(rng, gpu_mix))
        d = _philly_duration(rng)
        if max_duration_s is not None and d > max_duration_s:
            d, capped = max_duration_s, capped + 1
        draws.append((g, d, str(_pick(rng, teams))))
    mean_work = math.fsum(g * d for g, d, _ in draws) / jobs
    rate = load * total_gpus / mean_work
    t = 0.0
    out: list[TraceJob] = []
    width = len(str(jobs - 1))
    for i, (g, d, team) in enumerate(draws):
        if i:
            t += rng.expovariate(rate)
        out.append(
            TraceJob(
                job_id=f"job-{i:0{width}d}",
                submit_s=round(t, 3),
                duration_s=round(d, 3),
                gpus=float(g),
                cpus=cpus_per_gpu * g,
                memory_mb=memory_mb_per_gpu * g,
                team=team,
            )
        )
    filtered: dict[str, int] = {}
    if window_h is not None:
        kept = [j for j in out if j.submit_s < window_h * 3600.0]
        filtered["outside_window"] = len(out) - len(kept)
        out = kept
    if not out:
        raise TraceError("synthetic trace: no jobs")
    params = {
        "generator": "philly-like (Gavel's distributions)",
        "jobs": jobs,
        "total_gpus": total_gpus,
        "load": load,
        "arrival_rate_per_s": rate,
        "gpu_mix": [list(x) for x in gpu_mix],
        "teams": [list(x) for x in teams],
    }
    meta = TraceMeta(
        source="synthetic",
        format="synthetic",
        rows_read=jobs,
        rows_filtered={k: v for k, v in filtered.items() if v},
        window_h=window_h,
        max_jobs=jobs,
        seed=seed,
        max_duration_s=max_duration_s,
        durations_capped=capped,
        durations_known=durations_known,
        params=params,
    )
    return Trace(tuple(out), meta)
