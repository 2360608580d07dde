"""``TeamSums``: per-team demand of the running jobs, kept across decisions, equal to sums from scratch.

The running set changes as a controller's does (jobs finish anywhere, start at the end,
come back as new objects for the same job); the kept sums must equal the sums from
scratch, bit for bit, whenever they answer, and answer ``None`` (the caller sums) while
a demand is not exactly summable (a custom kind, a non-dyadic fraction).
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from sched_helpers import running

from raypipe.resources import Resources
from raypipe.scheduler import vec
from raypipe.scheduler.index import _RETRY_INEXACT, DecisionIndex, TeamSums
from raypipe.scheduler.types import JobRequest, RunningJob
from raypipe.scheduler.vec import Vec

TEAMS = ("a", "b", "c")
EXACT = (0.0, 0.5, 0.25, 1.0, 4.0, 32_000.0, 3.75)
INEXACT = (0.1, 1 / 3)


def _job(k: int, team: str, cpu: float, gpu: float, mem: float, custom: bool = False) -> RunningJob:
    res = Resources.of(cpu=cpu, gpu=gpu, memory_mb=mem, custom={"tpu": 1.0} if custom else None)
    return running(JobRequest(f"j{k}", (res,), team=team), "n1")


def _team_of(r: RunningJob) -> str | None:
    return None if r.request.team == "c" else r.request.team  # team c counts for none


def _scratch(jobs: list[RunningJob]) -> dict[str, Vec]:
    out: dict[str, Vec] = {}
    for r in jobs:
        t = _team_of(r)
        if t is not None:
            out[t] = vec.add(out.get(t, vec.ZERO), r.request.demand_vec)
    return out


def _same(kept: dict[str, Vec], scratch: dict[str, Vec]) -> bool:
    """Equal team by team; a team whose jobs all left may stay in ``kept`` with zeros."""
    return all(kept.get(t, vec.ZERO) == scratch.get(t, vec.ZERO) for t in set(kept) | set(scratch))


op_st = st.one_of(
    st.tuples(st.just("finish"), st.integers(0, 99)),
    st.tuples(st.just("start"), st.sampled_from(TEAMS), st.sampled_from(EXACT), st.sampled_from(EXACT)),
    st.tuples(st.just("renew"), st.integers(0, 99)),  # a new RunningJob object for the same job
    st.tuples(st.just("same"), st.just(0)),  # the same tuple again
)


@settings(max_examples=200, deadline=None, database=None)
@given(
    first=st.lists(st.tuples(st.sampled_from(TEAMS), st.sampled_from(EXACT), st.sampled_from(EXACT)), max_size=30),
    ops=st.lists(op_st, max_size=25),
)
def test_kept_sums_equal_sums_from_scratch_bit_for_bit(first: list[tuple[str, float, float]], ops: list) -> None:
    jobs = [_job(k, t, c, g, 1000.0 * g) for k, (t, c, g) in enumerate(first)]
    sums = TeamSums()
    k = len(jobs)
    now: tuple[RunningJob, ...] = tuple(jobs)
    for op in [("same", 0), *ops]:
        if op[0] == "finish" and now:
            i = op[1] % len(now)
            now = now[:i] + now[i + 1 :]
        elif op[0] == "start":
            k += 1
            now = (*now, _job(k, op[1], op[2], op[3], 512.0))
        elif op[0] == "renew" and now:
            i = op[1] % len(now)
            r = now[i]
            now = now[:i] + (replace(r, borrowed=not r.borrowed),) + now[i + 1 :]
        kept = sums.sync(now, _team_of)
        assert kept is not None and _same(kept, _scratch(list(now)))


def test_an_inexact_demand_leaves_the_sum_to_the_caller_until_it_is_gone() -> None:
    base = [_job(i, "a", 1.0, 2.0, 0.0) for i in range(5)]
    sums = TeamSums()
    assert sums.sync(tuple(base), _team_of) == {"a": (5.0, 10.0, 0.0, ())}
    for bad in (_job(10, "b", INEXACT[0], 1.0, 0.0), _job(11, "a", 1.0, 1.0, 0.0, custom=True)):
        with_bad = (*base, bad)
        assert sums.sync(with_bad, _team_of) is None  # 0.1 CPU: sums would depend on the order of additions
        answers = [sums.sync((*base, bad, _job(20 + i, "a", 1.0, 1.0, 0.0)), _team_of) for i in range(3)]
        assert answers == [None] * 3
        back = None
        for i in range(_RETRY_INEXACT + 1):  # once it has left, the sums are kept again
            back = sums.sync(tuple(base[: 4 - i % 2]), _team_of)
        assert back is not None and _same(back, _scratch(base[: 4 - _RETRY_INEXACT % 2]))


def test_a_team_counting_for_none_and_an_index_switched_off() -> None:
    jobs = (_job(0, "c", 1.0, 1.0, 0.0), _job(1, "b", 0.5, 0.0, 0.0))
    index = DecisionIndex()
    assert index.team_sums("x", jobs, None, _team_of) == {"b": (0.5, 0.0, 0.0, ())}
    DecisionIndex.enabled = False
    try:
        assert index.team_sums("x", jobs, None, _team_of) is None
    finally:
        DecisionIndex.enabled = True
