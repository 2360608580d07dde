"""Orchestration overhead of raypipe, against plain Ray tasks, in one process and one Ray.

1. Per-stage overhead.  A pipeline of N trivial ``python`` stages (``benchmarks._trivial:inc``,
   cache off) is run with ``raypipe.api.run`` and compared with the same function submitted
   as N plain ``ray.remote`` tasks with the same dependency structure and resources:

   - chain:  stage i takes stage i-1's output (plain Ray: ``ray.get`` between tasks);
   - fan-out: N independent stages (plain Ray: N tasks, one ``ray.get`` over all).

   overhead per stage = (raypipe wall - plain Ray wall) / N, from the medians of ``--repeat`` runs.
   Goal: <= 50 ms per stage.

2. Cached rerun of the quickstart (``configs/quickstart.yaml``, storage in a temp dir): one
   uncached run fills the cache (the baseline), then ``--repeat`` fully cached reruns are
   timed in this process with Ray already up.  Goal: <= 3 s.  One cached rerun through the
   ``raypipe`` CLI in a fresh process is also timed, for information (no goal).

Run from the repository root::

    .venv/bin/python -m benchmarks.overhead --out bench-out/overhead
    .venv/bin/python benchmarks/overhead.py --out bench-out/overhead --stages 50 --repeat 5

Writes ``OUT/results.json`` and ``OUT/overhead.png``; keys are documented in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable (here and in Ray workers)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO_ROOT,
    bar_chart,
    base_parser,
    goal,
    median,
    print_table,
    ratio,
    timed,
    write_results,
)
from benchmarks._trivial import inc

FUNCTION = "benchmarks._trivial:inc"
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"
GOAL_OVERHEAD_MS = 50.0
GOAL_CACHED_RERUN_S = 3.0


# ----------------------------------------------------------------------------- pipelines


def chain_pipeline(n: int, storage: str, num_cpus: int) -> Any:
    """s000 -> s001 -> ... : each stage adds one to the previous stage's output."""
    from raypipe.config import PipelineConfig, RayConfig, StageConfig

    stages = []
    for i in range(n):
        if i == 0:
            stages.append(
                StageConfig(name="s000", kind="python", cache=False, params={"function": FUNCTION, "args": {"x": 0}})
            )
        else:
            stages.append(
                StageConfig(
                    name=f"s{i:03d}",
                    kind="python",
                    cache=False,
                    inputs={"x": f"s{i - 1:03d}.output"},
                    params={"function": FUNCTION},
                )
            )
    return PipelineConfig(name=f"overhead-chain-{n}", storage=storage, ray=RayConfig(num_cpus=num_cpus), stages=stages)


def fanout_pipeline(n: int, storage: str, num_cpus: int) -> Any:
    """N independent stages; stage i returns i + 1."""
    from raypipe.config import PipelineConfig, RayConfig, StageConfig

    stages = [
        StageConfig(name=f"s{i:03d}", kind="python", cache=False, params={"function": FUNCTION, "args": {"x": i}})
        for i in range(n)
    ]
    return PipelineConfig(name=f"overhead-fanout-{n}", storage=storage, ray=RayConfig(num_cpus=num_cpus), stages=stages)


class Runner:
    """Times raypipe runs and their plain-Ray twins; every raypipe run gets a fresh storage root."""

    def __init__(self, workdir: Path, num_cpus: int) -> None:
        import ray

        self.workdir = workdir
        self.num_cpus = num_cpus
        self._count = 0
        # Same function, same resources as a raypipe stage with the default `resources: {cpu: 1}`.
        self.task = ray.remote(inc).options(num_cpus=1, max_retries=0)

    def _storage(self, tag: str) -> str:
        self._count += 1
        return str(self.workdir / f"{tag}-{self._count:03d}")

    def raypipe(self, shape: str, n: int) -> float:
        from raypipe import api

        build = chain_pipeline if shape == "chain" else fanout_pipeline
        cfg = build(n, self._storage(shape), self.num_cpus)
        wall, result = timed(lambda: api.run(cfg))
        if not result.ok:
            raise RuntimeError(f"raypipe {shape} run failed: {result.errors}")
        expected = n if shape == "chain" else 1
        got = _output_value(result, f"s{n - 1:03d}") if shape == "chain" else _output_value(result, "s000")
        if got != expected:
            raise RuntimeError(f"raypipe {shape} run computed {got}, expected {expected}")
        return wall

    def plain(self, shape: str, n: int) -> float:
        import ray

        def chain() -> int:
            x = ray.get(self.task.remote(0))
            for _ in range(n - 1):
                x = ray.get(self.task.remote(x))
            return x

        def fanout() -> list[int]:
            return ray.get([self.task.remote(i) for i in range(n)])

        wall, value = timed(chain if shape == "chain" else fanout)
        expected = n if shape == "chain" else list(range(1, n + 1))
        if value != expected:
            raise RuntimeError(f"plain Ray {shape} computed {value!r}")
        return wall


def _output_value(result: Any, stage: str) -> Any:
    from raypipe.store.artifacts import ArtifactStore

    ref = result.outputs[stage]["output"]
    return ArtifactStore(ref.uri[: ref.uri.index("/objects/")]).get_value(ref)


# ----------------------------------------------------------------------------- measurements


def measure_stages(runner: Runner, n: int, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Walls (s) per repeat, plain and raypipe interleaved so drift hits both alike."""
    samples: dict[str, dict[str, list[float]]] = {shape: {"raypipe": [], "plain": []} for shape in ("chain", "fanout")}
    for r in range(repeat):
        for shape in ("chain", "fanout"):
            samples[shape]["plain"].append(runner.plain(shape, n))
            samples[shape]["raypipe"].append(runner.raypipe(shape, n))
            _progress(
                f"repeat {r + 1}/{repeat} {shape:6s}: raypipe {samples[shape]['raypipe'][-1]:.2f}s, "
                f"plain Ray {samples[shape]['plain'][-1]:.2f}s"
            )
    return samples


def measure_quickstart(workdir: Path, repeat: int, cli: bool) -> dict[str, Any]:
    from raypipe import api

    storage = str(workdir / "quickstart")
    overrides = [f"storage={storage}"]
    first, result = timed(lambda: api.run(QUICKSTART, overrides=overrides))
    if not result.ok:
        raise RuntimeError(f"quickstart failed: {result.errors}")
    _progress(f"quickstart uncached: {first:.2f}s")
    cached: list[float] = []
    states: dict[str, str] = {}
    for _ in range(repeat):
        wall, result = timed(lambda: api.run(QUICKSTART, overrides=overrides))
        if not result.ok:
            raise RuntimeError(f"cached quickstart failed: {result.errors}")
        cached.append(wall)
        states = result.stages
    _progress(f"quickstart cached reruns: {', '.join(f'{w:.2f}s' for w in cached)}")
    out: dict[str, Any] = {
        "uncached_s": first,
        "cached_s": cached,
        "stages": len(states),
        "stages_cached": sum(1 for s in states.values() if s == "cached"),
        "cli_cached_s": None,
    }
    if cli:
        out["cli_cached_s"] = _cli_cached_rerun(storage)
        _progress(f"quickstart cached rerun via CLI (new process): {out['cli_cached_s']:.2f}s")
    return out


def _cli_cached_rerun(storage: str) -> float | None:
    """Wall time of ``raypipe run configs/quickstart.yaml`` in a fresh process, everything cached."""
    exe = Path(sys.executable).with_name("raypipe")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "raypipe.cli"]
    cmd += ["run", str(QUICKSTART), "--set", f"storage={storage}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    wall, proc = timed(lambda: subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300))
    if proc.returncode != 0:
        _progress(f"CLI rerun failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return None
    return wall


def profile_chain(runner: Runner, n: int, out: Path) -> None:
    """cProfile of the driver during one raypipe chain run; printed and saved, not part of results.json."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        runner.raypipe("chain", n)
    finally:
        prof.disable()
    path = out / "overhead-chain.prof"
    prof.dump_stats(str(path))
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(25)
        print(f"\n--- driver profile of one {n}-stage chain run, by {key} (full profile: {path}) ---")
        print(buf.getvalue())


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("raypipe orchestration overhead per stage vs plain Ray tasks, and cached quickstart rerun time.")
    p.add_argument("--stages", type=int, default=100, help="stages per pipeline (default 100)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement; medians reported (default 5)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray started here (default 2)")
    p.add_argument("--skip-quickstart", action="store_true", help="only measure the per-stage overhead")
    p.add_argument("--skip-cli", action="store_true", help="do not time the cached quickstart rerun via the CLI")
    p.add_argument("--profile", action="store_true", help="also cProfile the driver during one extra chain run")
    args = p.parse_args(argv)
    if args.stages < 1 or args.repeat < 1:
        p.error("--stages and --repeat must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    n, repeat = args.stages, args.repeat
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="raypipe-bench-overhead-"))
    # The driver's cwd must be the repo root for workers to import `benchmarks._trivial` by name.
    os.chdir(REPO_ROOT)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        runner = Runner(workdir, args.num_cpus)
        _progress("warming up (worker start, imports)")
        for shape in ("chain", "fanout"):
            runner.plain(shape, min(n, 2 * args.num_cpus))
            runner.raypipe(shape, min(n, 2 * args.num_cpus))
        samples = measure_stages(runner, n, repeat)
        if args.profile:
            profile_chain(runner, n, out)
        qs = None if args.skip_quickstart else measure_quickstart(workdir, repeat, cli=not args.skip_cli)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)

    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    for shape in ("chain", "fanout"):
        rp, pl = median(samples[shape]["raypipe"]), median(samples[shape]["plain"])
        results[f"{shape}_wall_s"] = rp
        results[f"{shape}_per_stage_ms"] = rp / n * 1000
        results[f"{shape}_overhead_per_stage_ms"] = (rp - pl) / n * 1000
        baseline[f"{shape}_wall_s"] = pl
        baseline[f"{shape}_per_stage_ms"] = pl / n * 1000
        ratios[shape] = ratio(rp, pl)
        goals[f"{shape}_overhead_per_stage_ms"] = goal(
            results[f"{shape}_overhead_per_stage_ms"], GOAL_OVERHEAD_MS, "ms"
        )
    if qs is not None:
        cached = median(qs["cached_s"])
        results["quickstart_cached_rerun_s"] = cached
        results["quickstart_cached_rerun_cli_s"] = qs["cli_cached_s"]
        results["quickstart_stages_cached"] = qs["stages_cached"]
        results["quickstart_stages"] = qs["stages"]
        baseline["quickstart_uncached_s"] = qs["uncached_s"]
        ratios["quickstart_cached_vs_uncached"] = ratio(cached, qs["uncached_s"])
        goals["quickstart_cached_rerun_s"] = goal(cached, GOAL_CACHED_RERUN_S, "s")
    raw: dict[str, Any] = {
        f"{shape}_{who}_wall_s": samples[shape][who] for shape in samples for who in ("raypipe", "plain")
    }
    if qs is not None:
        raw["quickstart_cached_rerun_s"] = qs["cached_s"]
    path = write_results(
        out,
        "overhead",
        params={"stages": n, "repeat": repeat, "num_cpus": args.num_cpus, "function": FUNCTION},
        results=results,
        baseline=baseline,
        ratios=ratios,
        goals=goals,
        samples=raw,
    )

    rows: list[list[Any]] = []
    for shape, label in (("chain", f"chain of {n}, ms/stage"), ("fanout", f"fan-out of {n}, ms/stage")):
        g = goals[f"{shape}_overhead_per_stage_ms"]
        rows.append(
            [
                label,
                results[f"{shape}_per_stage_ms"],
                baseline[f"{shape}_per_stage_ms"],
                ratios[shape],
                f"overhead {g['value']:.1f} ms <= {GOAL_OVERHEAD_MS:g} ms",
                g["met"],
            ]
        )
    if qs is not None:
        g = goals["quickstart_cached_rerun_s"]
        rows.append(
            [
                f"quickstart cached rerun, s ({qs['stages_cached']}/{qs['stages']} cached)",
                results["quickstart_cached_rerun_s"],
                baseline["quickstart_uncached_s"],
                ratios["quickstart_cached_vs_uncached"],
                f"{g['value']:.2f} s <= {GOAL_CACHED_RERUN_S:g} s",
                g["met"],
            ]
        )
        if results["quickstart_cached_rerun_cli_s"] is not None:
            rows.append(
                ["  same via CLI, new process, s", results["quickstart_cached_rerun_cli_s"], None, None, "(info)", None]
            )
    print_table(
        f"raypipe orchestration overhead ({n} stages, median of {repeat}, {args.num_cpus} CPUs)",
        ["measurement", "raypipe", "baseline", "ratio", "goal", "met"],
        rows,
        caption="baseline: same function as plain Ray tasks; quickstart: its first, uncached run",
    )

    panels = [
        {
            "title": f"time per stage, {n} trivial stages",
            "ylabel": "ms per stage (median)",
            "groups": ["chain", "fan-out"],
            "series": {
                "raypipe": [results["chain_per_stage_ms"], results["fanout_per_stage_ms"]],
                "plain Ray tasks": [baseline["chain_per_stage_ms"], baseline["fanout_per_stage_ms"]],
            },
        }
    ]
    if qs is not None:
        groups, values = (
            ["uncached", "cached"],
            [baseline["quickstart_uncached_s"], results["quickstart_cached_rerun_s"]],
        )
        if results["quickstart_cached_rerun_cli_s"] is not None:
            groups.append("cached (CLI)")
            values.append(results["quickstart_cached_rerun_cli_s"])
        panels.append(
            {
                "title": "quickstart run",
                "ylabel": "wall time (s)",
                "groups": groups,
                "series": {"quickstart": values},
                "hline": (GOAL_CACHED_RERUN_S, f"goal for cached: {GOAL_CACHED_RERUN_S:g} s"),
            }
        )
    png = bar_chart(out / "overhead.png", panels, title="raypipe orchestration overhead")
    print(f"results: {path}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
