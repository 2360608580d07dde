"""The output of the Ray tasks and actors a stage task started, for the attempt's log.

A stage's own task tees what it prints into its log (:mod:`raypipe.runner.stage_log`); the
work it hands to Ray (Ray Data's tasks, Ray Train's controller and workers, the tasks and
actors a ``python`` stage starts) prints in other processes, often on other nodes, into
Ray's worker log files.  :class:`WorkerOutput` finds that work from Ray's task events (every
task records its parent task, worker, node and the byte range of the worker's files it
wrote) and reads the files (:mod:`raypipe._ray.worker_logs`):

* the descendants of the stage task: its child tasks and actors, their children, and so on
  (an actor's method calls are tasks too, so the workers Ray Train's controller starts are
  found through its ``run`` call);
* a task's output is its byte range of its worker's ``.out``/``.err`` files, read once the
  task finished and its worker reported where its output ends (a pooled worker runs other
  tasks before and after it);
* an actor's process is its own: its files are read whole, from where the last read ended;
* detached actors (Ray Data's shared statistics actor, Serve's) outlive the stage and are
  left out, as is the stage task itself (its console is already in the log).

Nothing here needs Ray's dashboard or ``log_to_driver``.  Ray keeps a bounded number of task
events; what it dropped is said in the log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from raypipe._ray import worker_logs

#: How a finished task ended when it surely ran (its output is worth waiting for).
RAN_OUTCOMES = frozenset({"FINISHED", "TASK_EXECUTION_EXCEPTION"})
#: Most bytes kept of one task's or actor's output in one collection (the last ones).
MAX_SPAN_BYTES = 1 << 20
#: Tasks raypipe starts to read other nodes' files or to mark a point in the task events:
#: never part of a stage's output.
READER_TASK = worker_logs.READER_TASK
OWN_TASKS = frozenset({READER_TASK, worker_logs.MARKER_TASK})


class RaySource(Protocol):
    """Where :class:`WorkerOutput` reads Ray's records and files (tests give a fake)."""

    def task_events(self, job_id: str) -> tuple[list[dict[str, Any]], int]: ...

    def actors(self, job_id: str) -> list[dict[str, Any]]: ...

    def node_ips(self) -> dict[str, str]: ...

    def read(self, node_id: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def marker(self) -> str | None: ...


class LiveRay:
    """The running cluster (:mod:`raypipe._ray.worker_logs`)."""

    def task_events(self, job_id: str) -> tuple[list[dict[str, Any]], int]:
        return worker_logs.task_events(job_id)

    def actors(self, job_id: str) -> list[dict[str, Any]]:
        return worker_logs.job_actors(job_id)

    def node_ips(self) -> dict[str, str]:
        return worker_logs.node_ips()

    def read(self, node_id: str, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return worker_logs.read_on_node(node_id, specs)

    def marker(self) -> str | None:
        return worker_logs.submit_marker()


def descendants(
    root: str, events: list[dict[str, Any]], actors: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The normal tasks (events) and the actors (actor table rows) started, directly or not,
    by the task ``root``: detached actors, their calls and raypipe's reader tasks left out."""
    children: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        children.setdefault(e["parent"], []).append(e)
    by_actor = {a["actor_id"]: a for a in actors}
    for a in actors:  # an actor whose creation event Ray dropped is still found by its creator
        if a.get("parent"):
            children.setdefault(a["parent"], []).append({"type": "ACTOR_ROW", "actor_id": a["actor_id"]})
    tasks: dict[tuple[str, int], dict[str, Any]] = {}
    found: dict[str, dict[str, Any]] = {}
    seen = {root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for e in children.get(parent, ()):
            kind = e.get("type")
            if kind in ("ACTOR_CREATION_TASK", "ACTOR_ROW"):
                actor = by_actor.get(e.get("actor_id") or "")
                if e.get("detached") or (actor is not None and actor.get("detached")):
                    continue
                if actor is not None:
                    found[actor["actor_id"]] = actor
            elif kind == "NORMAL_TASK" and e.get("name") not in OWN_TASKS:
                tasks[(e["task_id"], int(e.get("attempt") or 0))] = e
            task_id = e.get("task_id")
            if task_id and task_id not in seen:
                seen.add(task_id)
                frontier.append(task_id)
    return list(tasks.values()), list(found.values())


#: In the lines Ray's tqdm stand-in prints for a driver to draw as progress bars.
RAY_TQDM_TOKEN = '"__magic_token__": "__ray_tqdm_magic_token__"'


def _clean(data: bytes) -> str:
    """The text of a worker file's bytes without Ray's marker lines and progress-bar messages."""
    text = data.decode("utf-8", errors="replace")
    return "".join(
        line
        for line in text.splitlines(keepends=True)
        if not line.startswith(worker_logs.MARKERS) and RAY_TQDM_TOKEN not in line
    )


@dataclass
class WorkerOutput:
    """Collects, a piece at a time, the output of the work the task ``task_id`` started."""

    task_id: str
    job_id: str
    source: RaySource = field(default_factory=LiveRay)
    #: Normal tasks (id, attempt) already copied, and bytes of each actor's files copied.
    copied: set[tuple[str, int]] = field(default_factory=set)
    offsets: dict[tuple[str, str], int] = field(default_factory=dict)
    #: After a collection: descendant tasks that have not finished (their output comes later).
    pending: int = 0
    dropped_said: bool = False
    #: Task ids the last collection saw in Ray's task events.
    seen: set[str] = field(default_factory=set)

    def collect(self) -> str:
        """The output written since the last call, as sections for the log ("" when none)."""
        events, dropped = self.source.task_events(self.job_id)
        self.seen = {e["task_id"] for e in events}
        actors = self.source.actors(self.job_id)
        tasks, found = descendants(self.task_id, events, actors)
        by_node: dict[str, list[tuple[dict[str, Any], str]]] = {}
        self.pending = 0
        for t in sorted(tasks, key=lambda t: t.get("started_ns") or 0):
            key = (t["task_id"], int(t.get("attempt") or 0))
            if key in self.copied:
                continue
            if not t.get("finished"):
                self.pending += 1
                continue
            # The owner reports a task finished when it has its result; the worker that ran it
            # reports where its output went (the end of its span) on its own schedule.  A task
            # that never ran (cancelled, its worker or node lost first) has nothing to wait for.
            ended = any(span and span[2] is not None for span in (t.get("out"), t.get("err")))
            ran = t.get("started_ns") is not None or t.get("outcome") in RAN_OUTCOMES
            if not ended and ran:
                self.pending += 1
                continue
            self.copied.add(key)
            for stream in ("out", "err"):
                span = t.get(stream)
                if span and span[2] is not None and span[2] > span[1] and t.get("node_id"):
                    spec = {"path": span[0], "start": span[1], "end": span[2], "max": MAX_SPAN_BYTES}
                    by_node.setdefault(t["node_id"], []).append((spec, self._title_task(t, stream)))
        for a in found:
            if not (a.get("node_id") and a.get("worker_id") and a.get("pid")):
                continue
            for stream in ("out", "err"):
                spec = {
                    "worker_id": a["worker_id"],
                    "pid": a["pid"],
                    "stream": stream,
                    "start": self.offsets.get((a["actor_id"], stream), 0),
                    "end": None,
                    "max": MAX_SPAN_BYTES,
                    "actor": (a["actor_id"], stream),
                }
                by_node.setdefault(a["node_id"], []).append((spec, self._title_actor(a, stream)))
        ips = self.source.node_ips() if by_node else {}
        parts: list[str] = []
        for node, items in by_node.items():
            results = self.source.read(node, [{k: v for k, v in s.items() if k != "actor"} for s, _ in items])
            for (spec, title), got in zip(items, results, strict=True):
                if "actor" in spec and not got.get("missing"):
                    self.offsets[spec["actor"]] = int(got["end"])
                text = _clean(got.get("data") or b"")
                if not text.strip():
                    continue
                cut = f"[... {got['cut']:,} bytes left out ...]\n" if got.get("cut") else ""
                where = ips.get(node, node[:8])
                parts.append(f"----- {title} on {where}\n{cut}{text}{'' if text.endswith(chr(10)) else chr(10)}")
        if dropped and not self.dropped_said:
            self.dropped_said = True
            parts.append(f"----- Ray dropped {dropped:,} task events: some workers' output may be missing here\n")
        return "".join(parts)

    @staticmethod
    def _title_task(t: dict[str, Any], stream: str) -> str:
        what = "stdout" if stream == "out" else "stderr"
        return f"Ray task {t.get('name') or '?'} ({what}, pid {t.get('pid')}, task {t['task_id'][:12]})"

    @staticmethod
    def _title_actor(a: dict[str, Any], stream: str) -> str:
        what = "stdout" if stream == "out" else "stderr"
        return f"Ray actor {a.get('class_name') or '?'} ({what}, pid {a.get('pid')}, actor {a['actor_id'][:12]})"

    def finish(
        self, write: Callable[[str], None], wait_s: float = 3.0, every_s: float = 0.1, clock: Any = time
    ) -> None:
        """Collect until Ray reported every task the stage started and they finished, at most
        ``wait_s``; each piece goes to ``write``.  Ray reports task events every so often
        (``RAY_task_events_report_interval_ms``, 1 s by default): a marker task started now
        tells when the stage's last tasks are known (:func:`raypipe._ray.worker_logs.submit_marker`)."""
        deadline = clock.monotonic() + wait_s
        marker = self.source.marker()
        while True:
            text = self.collect()
            if text:
                write(text)
            known = marker is None or marker in self.seen
            if (known and not self.pending) or clock.monotonic() >= deadline:
                break
            clock.sleep(every_s)
        if self.pending:
            write(f"----- {self.pending} Ray task(s) had not reported their output after {wait_s:g}s: not shown\n")
