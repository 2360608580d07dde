"""Stage functions that start Ray work which prints (tests/integration/test_stage_logs_cluster.py)."""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
def _child(word: str) -> int:
    print(f"child task says {word}")
    return 1


@ray.remote(num_cpus=0)
class _Helper:
    def __init__(self, word: str) -> None:
        print(f"helper actor starts for {word}")

    def work(self) -> int:
        print("helper actor works")
        return 2


def _shout(batch: dict) -> dict:
    print(f"data task saw {len(batch['id'])} rows")
    return batch


def spawn(word: str = "hello") -> dict:
    """Prints, and starts a task, an actor and Ray Data tasks that print."""
    print(f"stage says {word}")
    n = ray.get(_child.remote(word))
    helper = _Helper.remote(word)
    n += ray.get(helper.work.remote())
    rows = ray.data.range(8, override_num_blocks=2).map_batches(_shout, num_cpus=0.1).count()
    return {"out": n + rows}


def spawn_then_fail(word: str = "bye") -> dict:
    """A child task prints, then the stage fails."""
    ray.get(_child.remote(word))
    raise RuntimeError(f"the stage failed after its child said {word}")
