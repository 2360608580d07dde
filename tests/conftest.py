"""Shared fixtures.  One local Ray per test session for integration and e2e tests; one
PostgreSQL server per test session for the metadata store's tests on both backends."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import REPORT, Recorder
from tools.pg_server import PostgresServer, pg_bindir

# Clusters the tests start report task events every 100 ms, as the local Ray raypipe starts
# does (raypipe.runner.ray_session): a stage collecting its Ray workers' output waits for them.
os.environ.setdefault("RAY_task_events_report_interval_ms", "100")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Recorder:
    """Records faults injected, generated inputs and lost records for the session's report."""
    return Recorder(request.node.nodeid)


#: Modules with a test that uses ``ray_local``: the others never see the shared Ray (a
#: module that starts its own cluster, or runs ``ray start`` and ``ray stop``, would stop it).
_RAY_LOCAL_MODULES: set[str] = set()


def pytest_runtest_setup(item: pytest.Item) -> None:
    module = getattr(item, "module", None)
    if _SHARED_RAY["address"] is not None and (module is None or module.__name__ not in _RAY_LOCAL_MODULES):
        import ray

        ray.shutdown()
        _SHARED_RAY["address"] = None


@pytest.hookimpl(trylast=True)  # after pytest's own ordering (by fixtures): the sort below is the last word
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Notes the modules that use ``ray_local`` and runs them first, one after another, so they
    share one Ray: in file order, each module between two of them that starts a Ray of its own
    (or needs none) stopped the shared one, and the next module started it again (seconds a
    time, 7 times in the suite).  A stable sort: each module's tests stay together and in
    their order.  A long fuzz hunt (``RAYPIPE_FUZZ_EXAMPLES``, see tests/fuzzing.py) runs its
    fuzz tests without the per-test timeout: 10,000 examples take longer than CI's 300 s."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) and getattr(item, "module", None) is not None:
            _RAY_LOCAL_MODULES.add(item.module.__name__)
    items.sort(key=lambda item: getattr(item, "module", None) is None or item.module.__name__ not in _RAY_LOCAL_MODULES)
    if os.environ.get("RAYPIPE_FUZZ_EXAMPLES", "").strip():
        for item in items:
            if item.module is not None and item.module.__name__.rsplit(".", 1)[-1].startswith("test_fuzz_"):
                item.add_marker(pytest.mark.timeout(0))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        REPORT.failed.add(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SHARED_RAY_RESTARTS:
        terminalreporter.section("shared Ray restarted")
        for line in SHARED_RAY_RESTARTS:
            terminalreporter.write_line(line)
    if REPORT.faults or REPORT.generated:
        terminalreporter.section("reliability")
        for line in REPORT.lines():
            terminalreporter.write_line(line)
        REPORT.write()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session (Debian's `postgresql` package; CI installs it)."""
    bindir = pg_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bindir)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What to open a fresh metadata store with, on each backend: a SQLite file path, or the
    URL of a new PostgreSQL database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "raypipe.db")
    return request.getfixturevalue("postgres").new_database()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (a test's Serve HTTP proxy, the PostgreSQL server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: The address of the local Ray that ``ray_local`` started and that is still up (``None``: none).
_SHARED_RAY: dict[str, str | None] = {"address": None}
#: Why the shared Ray was restarted after a module (shown in the session's summary).
SHARED_RAY_RESTARTS: list[str] = []


def _shared_ray_up() -> bool:
    import ray

    return (
        ray.is_initialized()
        and _SHARED_RAY["address"] is not None
        and ray.get_runtime_context().gcs_address == _SHARED_RAY["address"]
    )


def _clean_shared_ray(module: str, timeout_s: float = 10.0) -> bool:
    """What a module left in the shared Ray, gone: Serve and its apps, raypipe's named actors
    (scheduler controller, monitors, loops, rollouts, schedules), its placement groups and its
    keys in the GCS.  True when every resource is free again within ``timeout_s``."""
    import ray
    from ray.util.placement_group import placement_group_table

    from raypipe._ray import kv
    from raypipe._ray.actors import NAMESPACE
    from raypipe.scheduler.ray_backend import pg_from_id

    named = ray.util.list_named_actors(all_namespaces=True)
    if any(a["namespace"] == "serve" for a in named):
        from ray import serve

        serve.shutdown()
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] == NAMESPACE:
            try:
                ray.kill(ray.get_actor(a["name"], namespace=NAMESPACE), no_restart=True)
            except ValueError:
                pass
    for pg_id, t in placement_group_table().items():
        if t.get("state") != "REMOVED":
            ray.util.remove_placement_group(pg_from_id(pg_id))
    kv.delete_prefix(b"")
    total = ray.cluster_resources()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources()
        held = {k: v - free.get(k, 0.0) for k, v in total.items() if free.get(k, 0.0) < v - 1e-6}
        held = {k: v for k, v in held.items() if not k.startswith("node:") and "memory" not in k}
        if not held:
            return True
        time.sleep(0.2)
    SHARED_RAY_RESTARTS.append(f"{module}: {held} still held after it")
    return False


@pytest.fixture(scope="module")
def ray_local(request: pytest.FixtureRequest) -> Iterator[str]:
    """A local Ray with 2 CPUs for the tests of a module; yields its address.

    Modules share one Ray while they leave it clean: after each module, Serve, raypipe's
    named actors, placement groups and GCS keys are removed, and if any resource is still
    held after that the Ray is shut down, so the next module starts a fresh one (as does a
    module that starts a Ray of its own shape)."""
    import ray

    if not _shared_ray_up():
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        _SHARED_RAY["address"] = ray.get_runtime_context().gcs_address
    yield ray.get_runtime_context().gcs_address
    if not (_shared_ray_up() and _clean_shared_ray(module=request.module.__name__)):
        ray.shutdown()
        _SHARED_RAY["address"] = None


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _SHARED_RAY["address"] is not None:
        import ray

        ray.shutdown()


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[object]:
    """A 4-node Ray: a head with 2 CPUs and 3 workers with 4 CPUs and 4 (logical) GPUs each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    for i in range(3):
        cluster.add_node(num_cpus=4, num_gpus=4, labels={"gpu_type": "A100" if i < 2 else "T4"})
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def reset_scheduler() -> None:
    """Kill the controller, forget its state and remove raypipe's placement groups."""
    import ray
    from ray.util.placement_group import placement_group_table

    from raypipe.scheduler.backend import PG_PREFIX
    from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE
    from raypipe.scheduler.ray_backend import RayBackend, clear_state, pg_from_id

    try:
        ray.kill(ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE), no_restart=True)
    except ValueError:
        pass
    clear_state()
    for pid in RayBackend().live_pgs():
        ray.util.remove_placement_group(pg_from_id(pid))
    wait_for(
        lambda: (
            not any(
                str(t.get("name", "")).startswith(PG_PREFIX) and t.get("state") != "REMOVED"
                for t in placement_group_table().values()
            )
        ),
        what="raypipe placement groups to be removed",
    )


def assert_cluster_free(timeout_s: float = 60.0, cpus: float | None = None) -> None:
    """Within ``timeout_s``: ``cpus`` (default: every CPU of the cluster) available, no
    raypipe job queued or running, and no raypipe placement group left."""
    import ray

    import raypipe
    from raypipe.scheduler.ray_backend import RayBackend

    deadline = time.monotonic() + timeout_s
    while True:
        want = ray.cluster_resources().get("CPU", 0.0) if cpus is None else cpus
        free = ray.available_resources().get("CPU", 0.0)
        try:
            queue = raypipe.api.scheduler_queue()["jobs"]
        except raypipe.RaypipeError:  # no scheduler was started on this cluster
            queue = []
        jobs = [j for j in queue if j["state"] in ("queued", "running", "preempting")]
        groups = RayBackend().live_pgs()
        if free >= want - 1e-6 and not jobs and not groups:
            return
        assert time.monotonic() < deadline, (
            f"after {timeout_s:g} s: {free:g}/{want:g} CPUs free, jobs {jobs}, placement groups {groups}"
        )
        time.sleep(0.5)


def cli_json(output: str) -> Any:
    """The JSON document a ``--json`` command printed through typer's CliRunner.  In a process
    connected to Ray, Ray's log monitor thread forwards worker logs to this process's stdout
    whenever they arrive, so they can land around the document in the captured output."""
    decoder, offset = json.JSONDecoder(), 0
    for line in output.splitlines(keepends=True):
        if line[:1] in "{[":  # a document starts a line; forwarded logs start with "\x1b[" or "("
            try:
                return decoder.raw_decode(output, offset)[0]
            except json.JSONDecodeError:
                pass
        offset += len(line)
    raise AssertionError(f"no JSON document in the output: {output!r}")


def wait_for(
    cond: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.1, what: str = "condition"
) -> object:
    """Poll ``cond`` until it returns something truthy (Ray's wait_for_condition, returning the value)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
