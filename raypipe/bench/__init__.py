"""Benchmarks raypipe runs for its users: ``raypipe bench scheduling`` replays job traces
through the scheduler's own policies, simulated (:mod:`raypipe.scheduler.simulator`) or
live on Ray (:mod:`raypipe.bench.live`)."""

from __future__ import annotations

from raypipe.bench.scheduling import BenchError, SchedulingBenchConfig, run_scheduling_benchmark

__all__ = ["BenchError", "SchedulingBenchConfig", "run_scheduling_benchmark"]
