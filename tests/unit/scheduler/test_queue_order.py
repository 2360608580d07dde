"""``identity_diff`` and ``QueueOrder``: a queue kept sorted across decisions by identity diffs."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raypipe.resources import Resources
from raypipe.scheduler.index import QueueOrder, identity_diff
from raypipe.scheduler.types import JobRequest


class Obj:
    """A distinct object (equal only to itself)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Obj({self.n})"


edits_st = st.lists(
    st.tuples(st.sampled_from(["remove", "insert", "append", "move"]), st.integers(0, 10_000)), max_size=40
)


def _apply(old: list[Obj], edits: list[tuple[str, int]]) -> list[Obj]:
    new = list(old)
    fresh = 10_000
    for op, at in edits:
        if op == "remove" and new:
            del new[at % len(new)]
        elif op in ("insert", "append"):
            fresh += 1
            new.insert(len(new) if op == "append" else at % (len(new) + 1), Obj(fresh))
        elif op == "move" and new:
            x = new.pop(at % len(new))
            new.insert((at * 7) % (len(new) + 1), x)
    return new


@settings(max_examples=300, deadline=None, database=None)
@given(n=st.integers(0, 300), edits=edits_st)
def test_the_diff_accounts_for_every_object(n: int, edits: list[tuple[str, int]]) -> None:
    old = [Obj(i) for i in range(n)]
    new = _apply(old, edits)
    diff = identity_diff(tuple(old), tuple(new))
    assert diff is not None  # a few dozen edits stay under the limit
    removed, added = diff
    old_ids, new_ids = {id(x) for x in old}, {id(x) for x in new}
    assert {id(x) for x in removed} <= old_ids and {id(x) for x in added} <= new_ids
    # old minus removed plus added (removals first) is new
    assert ((old_ids - {id(x) for x in removed}) | {id(x) for x in added}) == new_ids
    assert len(removed) == len({id(x) for x in removed}) and len(added) == len({id(x) for x in added})
    inserts = sum(op in ("insert", "append") for op, _ in edits)
    if not any(op == "move" for op, _ in edits) and inserts < 15:  # within the look-ahead, nothing moved:
        # no object is both removed and added
        assert old_ids - new_ids == {id(x) for x in removed} and new_ids - old_ids == {id(x) for x in added}


def test_many_changes_give_up_and_identical_sequences_give_nothing() -> None:
    old = tuple(Obj(i) for i in range(2000))
    assert identity_diff(old, old) == ([], [])
    assert identity_diff(old, tuple(reversed(old))) is None
    assert identity_diff((), old[:3]) == ([], list(old[:3]))


def _job(i: int, t: float, prio: int) -> JobRequest:
    return JobRequest(f"j{i}", (Resources.of(gpu=1),), submit_time=t, priority=prio)


def _key(j: JobRequest) -> tuple[float, float, str]:
    return (j.submit_time - j.priority * 100.0, j.submit_time, j.job_id)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.lists(st.integers(0, 1000), max_size=8)), min_size=1, max_size=12
    ),
    prios=st.lists(st.integers(0, 3), min_size=1, max_size=4),
)
def test_the_kept_order_is_the_sorted_queue_after_every_change(
    steps: list[tuple[int, int, list[int]]], prios: list[int]
) -> None:
    order = QueueOrder()
    queue: list[JobRequest] = []
    made = 0
    for appended, inserted, drops in steps:
        for d in drops:  # jobs leave (started, cancelled)
            if queue:
                del queue[d % len(queue)]
        for _ in range(appended + inserted):  # new jobs; some with an old submit time (requeued): not at the end
            made += 1
            t = float(made) if appended else float(made % 7)
            appended = max(0, appended - 1)
            queue.append(_job(made, t, prios[made % len(prios)]))
        queue.sort(key=lambda j: j.submit_time)  # submit order, as a snapshot has it
        snap = tuple(queue)
        order.sync(snap, _key)
        assert order.jobs == sorted(snap, key=_key)
        assert order.keys == sorted(map(_key, snap))
