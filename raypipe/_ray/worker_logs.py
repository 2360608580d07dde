"""What Ray records of a job's tasks and actors, and their output in Ray's worker log files.

Ray writes each worker process's stdout and stderr to ``worker-<worker id>-<job id>-<pid>.out``
and ``.err`` in the session's ``logs`` folder of its node, and records in the GCS, for every
task, its parent task, the worker and node that ran it and the byte range of those files its
output took (``task_log_info``).  That needs neither the dashboard nor ``log_to_driver``
(raypipe starts local Ray without the dashboard).  These functions read the GCS and the files
and return plain data; :mod:`raypipe.runner.worker_output` decides what belongs to a stage.
"""

from __future__ import annotations

import glob
import os
from typing import Any

#: Ray's marker lines in a worker's files (the log monitor uses them to prefix lines).
MARKERS = (":actor_name:", ":task_name:", ":job_id:")
#: The name of the tasks :func:`read_on_node` starts on other nodes.
READER_TASK = "raypipe:read-worker-logs"

_STUBS: dict[str, Any] = {}


def _task_info_stub() -> Any:
    import ray
    from ray._private.gcs_utils import create_gcs_channel
    from ray.core.generated import gcs_service_pb2_grpc

    address = ray.get_runtime_context().gcs_address
    stub = _STUBS.get(address)
    if stub is None:  # the channel carries Ray's token when the cluster uses one
        stub = _STUBS[address] = gcs_service_pb2_grpc.TaskInfoGcsServiceStub(create_gcs_channel(address))
    return stub


def task_events(job_id: str, timeout_s: float = 10.0) -> tuple[list[dict[str, Any]], int]:
    """The task events the GCS holds for the job ``job_id`` (hex): one dict per task attempt,
    and how many events Ray dropped (its buffers are bounded)."""
    from ray.core.generated import common_pb2, gcs_service_pb2

    common: Any = common_pb2  # generated modules: no types for mypy
    gcs: Any = gcs_service_pb2
    req = gcs.GetTaskEventsRequest()
    flt = gcs.GetTaskEventsRequest.Filters.JobIdFilter()
    flt.job_id = bytes.fromhex(job_id)
    flt.predicate = gcs.FilterPredicate.Value("EQUAL")
    req.filters.job_filters.append(flt)
    reply = _task_info_stub().GetTaskEvents(req, timeout=timeout_s)
    finished, failed = common.TaskStatus.Value("FINISHED"), common.TaskStatus.Value("FAILED")
    running = common.TaskStatus.Value("RUNNING")
    out = []
    for e in reply.events_by_task:
        ti, su = e.task_info, e.state_updates
        states = dict(su.state_ts_ns)
        li = su.task_log_info

        def span(file: str, start: str, end: str) -> tuple[str, int, int | None] | None:
            if not li.HasField(file) or not li.HasField(start):  # noqa: B023 - used at once
                return None
            return getattr(li, file), getattr(li, start), getattr(li, end) if li.HasField(end) else None  # noqa: B023

        out.append(
            {
                "task_id": e.task_id.hex(),
                "attempt": e.attempt_number,
                "parent": ti.parent_task_id.hex(),
                "type": common.TaskType.Name(ti.type),
                "name": ti.name or ti.func_or_class_name,
                "actor_id": ti.actor_id.hex() or None,
                "detached": bool(ti.is_detached_actor),
                "node_id": su.node_id.hex() or ti.node_id.hex() or None,
                "worker_id": su.worker_id.hex() or None,
                "pid": int(su.worker_pid) or None,
                "finished": finished in states or failed in states,
                # FINISHED, or FAILED and why (TASK_EXECUTION_EXCEPTION: it ran; TASK_CANCELLED...)
                "outcome": "FINISHED"
                if finished in states
                else (common.ErrorType.Name(su.error_info.error_type) if failed in states else None),
                "started_ns": states.get(running),
                "out": span("stdout_file", "stdout_start", "stdout_end"),
                "err": span("stderr_file", "stderr_start", "stderr_end"),
            }
        )
    dropped = int(reply.num_status_task_events_dropped) + int(reply.num_truncated)
    return out, dropped


def job_actors(job_id: str) -> list[dict[str, Any]]:
    """The actors of the job ``job_id`` (hex) in the GCS's actor table, as dicts."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    pb: Any = gcs_pb2  # a generated module: no types for mypy
    accessor = state._connect_and_get_accessor()
    out = []
    for blob in accessor.get_actor_table(ray.JobID(bytes.fromhex(job_id)), None):
        a = pb.ActorTableData.FromString(blob)
        out.append(
            {
                "actor_id": a.actor_id.hex(),
                "parent": a.parent_id.hex(),
                "class_name": a.class_name,
                "name": a.name,
                "detached": bool(a.is_detached),
                "state": pb.ActorTableData.ActorState.Name(a.state),
                "node_id": a.address.node_id.hex() or a.node_id.hex() or None,
                "ip": a.address.ip_address or None,
                "worker_id": a.address.worker_id.hex() or None,
                "pid": int(a.pid) or None,
            }
        )
    return out


def node_ips() -> dict[str, str]:
    """Node id (hex) -> its IP address, for every node Ray knows (dead ones too)."""
    import ray

    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}


def current_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


def logs_dir() -> str | None:
    """The ``logs`` folder of this node's Ray session (from this process's own Ray files)."""
    import ray

    node = getattr(ray._private.worker.global_worker, "node", None) or ray._private.worker._global_node
    if node is not None:
        return str(node.get_logs_dir_path())
    for fd in (1, 2):  # a worker's stdout and stderr are its files in that folder
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target).startswith("worker-"):
            return os.path.dirname(target)
    return None


def read_spans(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read parts of this node's worker files.  A spec: ``path`` (or ``worker_id`` + ``pid`` +
    ``stream`` ``out``/``err``: that worker's file), ``start``, ``end`` (None: to the end of the
    file), ``max`` bytes (the last ones are kept).  Returns per spec ``{"data", "end", "cut",
    "missing"}`` (``end``: the offset read to; ``cut``: bytes left out before the kept ones)."""
    folder = logs_dir()
    out = []
    for spec in specs:
        path = spec.get("path")
        if not path and folder and spec.get("worker_id") and spec.get("pid"):
            found = glob.glob(os.path.join(folder, f"worker-{spec['worker_id']}-*-{spec['pid']}.{spec['stream']}"))
            path = max(found, key=os.path.getmtime) if found else None
        if not path:
            out.append({"data": b"", "end": spec.get("start", 0), "cut": 0, "missing": True})
            continue
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = min(int(spec.get("start") or 0), size)
                end = size if spec.get("end") is None else min(int(spec["end"]), size)
                limit = int(spec.get("max") or (1 << 20))
                cut = max(0, end - start - limit)
                f.seek(start + cut)
                data = f.read(max(0, end - start - cut))
        except OSError:
            out.append({"data": b"", "end": spec.get("start", 0), "cut": 0, "missing": True})
            continue
        out.append({"data": data, "end": end, "cut": cut, "missing": False})
    return out


def read_on_node(node_id: str, specs: list[dict[str, Any]], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """:func:`read_spans` on the node ``node_id``: here, or in a task pinned to it (no CPU).
    A node that is gone or does not answer in time: every spec ``missing``."""
    if not specs:
        return []
    if node_id == current_node_id():
        return read_spans(specs)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reader = ray.remote(num_cpus=0, max_retries=0)(read_spans)
    try:
        ref: Any = reader.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False), name=READER_TASK
        ).remote(specs)
        return list(ray.get(ref, timeout=timeout_s))
    except Exception:  # noqa: BLE001 - a dead or unreachable node: its logs are gone with it
        return [{"data": b"", "end": s.get("start", 0), "cut": 0, "missing": True} for s in specs]


#: The name of the marker task :func:`submit_marker` starts.
MARKER_TASK = "raypipe:log-marker"
_MARKERS: list[Any] = []


def _marker() -> None:
    return None


def submit_marker() -> str:
    """Start a task that does nothing, as a child of the current task; its id (hex).  Ray reports
    a worker's task events in order, so once the GCS knows the marker it knows every task this
    task started before it."""
    import ray

    if not ray.is_initialized():  # never start a Ray for it
        raise RuntimeError("Ray is not connected")
    ref = ray.remote(num_cpus=0, max_retries=0)(_marker).options(name=MARKER_TASK).remote()
    _MARKERS[:] = [*_MARKERS[-7:], ref]  # kept until it ran (its result is never read)
    return str(ref.task_id().hex())
