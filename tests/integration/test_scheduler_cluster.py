"""The scheduler on a multi-node fake-GPU cluster (3 nodes x 4 GPUs), through real pipelines."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import raypipe
from raypipe.store.metadata import MetadataStore
from tests.conftest import assert_cluster_free, reset_scheduler, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

F = "tests.integration.funcs"


@pytest.fixture(autouse=True)
def _fresh_scheduler(gpu_cluster: object) -> None:
    reset_scheduler()


def stage(name: str, fn: str, **kw: Any) -> raypipe.StageConfig:
    args = kw.pop("args", {})
    return raypipe.StageConfig(name=name, kind="python", params={"function": f"{F}:{fn}", "args": args}, **kw)


def pipe(tmp_path: Path, *stages: raypipe.StageConfig, scheduler: dict | None = None) -> raypipe.PipelineConfig:
    extra = {"scheduler": scheduler} if scheduler else {}
    return raypipe.PipelineConfig(name="sched", storage=str(tmp_path / "store"), stages=list(stages), **extra)


def read_then(name: str, store: Path, src: Path, stage: raypipe.StageConfig) -> raypipe.PipelineConfig:
    """A pipeline: ``read`` (data.read of ``src``), then ``stage``."""
    read = raypipe.StageConfig(name="read", kind="data.read", params={"path": str(src)})
    return raypipe.PipelineConfig(name=name, storage=str(store), stages=[read, stage])


def history(tmp_path: Path, run_id: str) -> dict[str, list[str]]:
    meta = MetadataStore(str(tmp_path / "store" / "raypipe.db"))
    out: dict[str, list[str]] = {}
    for sr in meta.stage_runs(run_id):
        out.setdefault(sr.stage, []).append(sr.status)
    return out


def no_raypipe_groups() -> bool:
    from raypipe.scheduler.ray_backend import RayBackend

    return not RayBackend().live_pgs()


def gpu(n: float, cpu: float = 0.5) -> dict[str, float]:
    return {"cpu": cpu, "gpu": n}


def test_two_8_gpu_gangs_and_a_4_gpu_job_finish_without_deadlock(tmp_path: Path) -> None:
    cfg = pipe(
        tmp_path,
        stage("gang1", "sleep", args={"seconds": 1.5}, resources=gpu(4), gang_size=2),
        stage("gang2", "sleep", args={"seconds": 1.5}, resources=gpu(4), gang_size=2),
        stage("single", "sleep", args={"seconds": 1.0}, resources=gpu(4)),
    )
    res = raypipe.run(cfg, use_cache=False)
    assert res.ok, res.errors
    wait_for(no_raypipe_groups, what="grants to be released")


def test_high_priority_stage_overtakes_the_queue(tmp_path: Path) -> None:
    cfg = pipe(
        tmp_path,
        stage("blocker", "sleep", args={"seconds": 2.0}, resources=gpu(4, cpu=0.1), gang_size=3),
        stage("low", "sleep", args={"seconds": 0.2}, resources=gpu(4, cpu=0.1), gang_size=3, priority=0),
        stage("high", "sleep", args={"seconds": 0.2}, resources=gpu(4, cpu=0.1), gang_size=3, priority=10),
        scheduler={"policy": "priority"},
    )
    res = raypipe.run(cfg, use_cache=False)
    assert res.ok, res.errors
    meta = MetadataStore(str(tmp_path / "store" / "raypipe.db"))
    started = {s.stage: s.started_at for s in meta.stage_runs(res.run_id)}
    assert started["blocker"] < started["high"] < started["low"]


def test_infeasible_stage_fails_fast_with_its_reason(tmp_path: Path) -> None:
    cfg = pipe(tmp_path, stage("huge", "make", resources=gpu(8), placement="STRICT_PACK"))
    t0 = time.time()
    res = raypipe.run(cfg)
    assert res.status == "failed" and time.time() - t0 < 30
    assert "cannot be scheduled" in res.errors["huge"] and "8 GPU" in res.errors["huge"]
    assert history(tmp_path, res.run_id) == {"huge": ["rejected"]}


def test_team_quota_holds_under_50_concurrent_submissions(tmp_path: Path) -> None:
    import ray

    from raypipe.scheduler.client import SchedulerClient, get_controller, scheduling_strategy

    client = SchedulerClient(get_controller({"policy": "fifo", "teams": {"research": {"gpu": 4}}}), owner="quota-test")
    jobs = {f"q{i}": client.submit(f"q{i}", [raypipe.Resources.of(cpu=0.1, gpu=1)], team="research") for i in range(50)}
    assert all(v["state"] in ("queued", "running") for v in jobs.values())

    @ray.remote
    def hold(seconds: float) -> tuple[float, float]:
        t = time.time()
        time.sleep(seconds)
        return t, time.time()

    versions = {j: -1 for j in jobs}
    launched: dict[str, Any] = {}
    intervals: list[tuple[float, float]] = []
    max_running = 0
    deadline = time.time() + 180
    while len(intervals) < 50 and time.time() < deadline:
        # short: while the holds run nothing changes until this loop releases a finished one
        views = ray.get(client.watch(versions, timeout_s=0.1))
        running = [j for j, v in views.items() if v["state"] == "running"]
        max_running = max(max_running, len(running))
        for j, v in views.items():
            versions[j] = v["version"]
            if v["state"] == "running" and j not in launched:
                launched[j] = hold.options(
                    num_cpus=0.1, num_gpus=1, scheduling_strategy=scheduling_strategy(v["pg_id"])
                ).remote(0.3)
        if not launched:
            continue
        done, _ = ray.wait(list(launched.values()), num_returns=len(launched), timeout=0)
        for j, ref in list(launched.items()):
            if ref in done:
                intervals.append(ray.get(ref))
                ray.get(client.release([j]))
                del versions[j], launched[j]
    assert len(intervals) == 50
    assert max_running <= 4
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak <= 4, "the quota of 4 GPUs held"
    wait_for(no_raypipe_groups, what="grants to be released")


def test_controller_killed_mid_run_restarts_and_every_stage_runs_once(tmp_path: Path, reliability: Any) -> None:
    import ray

    from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE

    stages = [stage(f"s{i}", "sleep", args={"seconds": 1.5}, resources=gpu(4)) for i in range(6)]
    stages.append(stage("last", "make", depends_on=[s.name for s in stages]))
    cfg = pipe(tmp_path, *stages)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(res=raypipe.run(cfg, use_cache=False)))
    t.start()
    handle = wait_for(lambda: _controller_with_running_jobs(), what="jobs to be running")
    reliability.fault("scheduler controller killed with jobs running")
    ray.kill(handle, no_restart=False)  # Ray restarts it; it reloads its queue and grants
    t.join(timeout=180)
    res = out["res"]
    assert res.ok, res.errors
    ran = history(tmp_path, res.run_id)
    reliability.records("stage runs", len(stages), sum(v == ["succeeded"] for v in ran.values()))
    assert ran == {s.name: ["succeeded"] for s in [*stages]}
    restarted = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    assert ray.get(restarted.stats.remote())["jobs"]["running"] == 0
    assert_cluster_free()  # and no leaked placement group


def _controller_with_running_jobs() -> Any:
    import ray

    from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE

    try:
        handle = ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
    return handle if ray.get(handle.stats.remote())["jobs"]["running"] >= 2 else None


def test_node_removed_mid_stage_requeues_it(tmp_path: Path, gpu_cluster: Any, reliability: Any) -> None:
    started = tmp_path / "started"
    cfg = pipe(tmp_path, stage("victim", "slow", args={"seconds": 4, "started": str(started)}, resources=gpu(4)))
    res, _ = remove_node_during(
        gpu_cluster, cfg, "victim", started.exists, "node removed while a stage runs on it", reliability
    )
    assert res.ok, res.errors
    victim = history(tmp_path, res.run_id)["victim"]
    assert victim[-1] == "succeeded" and "lost" in victim and "failed" not in victim, victim
    assert_cluster_free()


def test_ledger_grant_pins_a_library_group_and_outside_work_is_respected() -> None:
    """A library that makes its own group (as Ray Train does) runs on the ledger grant's
    nodes; work raypipe did not admit keeps its GPUs; nothing admitted waits."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from raypipe.scheduler.client import SchedulerClient, get_controller, ledger_label_selectors

    @ray.remote(num_cpus=0, num_gpus=4)
    class Outside:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    outside = Outside.remote()
    outside_node = ray.get(outside.node.remote())
    client = SchedulerClient(get_controller({"policy": "fifo"}), owner="ledger-test")
    wait_for(lambda: _free_gpus(client) == 8, what="the controller to see the outside actor")
    train = client.submit("train", [raypipe.Resources.of(cpu=0.5, gpu=4)] * 2, grant="ledger")
    assert train["state"] == "running" and train["pg_id"] is None
    assert outside_node not in train["nodes"], "the outside actor's node has no free GPU"
    other = client.submit("other", [raypipe.Resources.of(cpu=0.1, gpu=1)])
    assert other["state"] == "queued", "every free GPU is the ledger grant's or the outside actor's"
    lib_pg = placement_group(
        [{"CPU": 0.5, "GPU": 4}] * 2, strategy="SPREAD", bundle_label_selector=ledger_label_selectors(train)
    )
    assert lib_pg.wait(timeout_seconds=30), "the library's group fits where the ledger reserved room"
    table = ray.util.placement_group_table(lib_pg)
    assert sorted(table["bundles_to_node_id"].values()) == sorted(train["nodes"])
    remove_placement_group(lib_pg)
    ray.get(client.release(["train"]))
    view = wait_for(lambda: (v := _view(client, "other"))["state"] == "running" and v, what="other to start")
    assert view["nodes"] != [outside_node]
    ray.get(client.release(["other"]))
    ray.kill(outside)
    wait_for(no_raypipe_groups, what="grants to be released")


def _free_gpus(client: Any) -> float:
    import ray

    ray.get(client.handle.refresh.remote([], 0.0))
    return float(ray.get(client.handle.stats.remote())["free"]["gpu"])


def _view(client: Any, job_id: str) -> dict[str, Any]:
    import ray

    return ray.get(client.handle.poll.remote([job_id]))[job_id]


def test_two_pipelines_share_the_controller_and_preemption_checkpoints(tmp_path: Path, gpu_cluster: Any) -> None:
    """Two drivers on one cluster: the urgent one preempts the other's 12-GPU gang,
    which checkpoints, is requeued, and resumes where it stopped."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    log = tmp_path / "steps.log"

    def write(name: str, stage: dict[str, Any]) -> Path:
        p = tmp_path / f"{name}.yaml"
        doc = {
            "name": name,
            "storage": str(tmp_path / name),
            "ray": {"address": gpu_cluster.address},
            "scheduler": {"policy": "priority", "policy_args": {"preempt": True}},
            "stages": [{"kind": "python", **stage}],
        }
        p.write_text(yaml.safe_dump(doc))
        return p

    args = {"steps": 25, "step_s": 0.2, "log": str(log)}
    low = write(
        "low",
        {
            "name": "long",
            "priority": 0,
            "gang_size": 3,
            "resources": {"cpu": 0.5, "gpu": 4},
            "params": {"function": f"{F}:checkpointed_steps", "args": args},
        },
    )
    high = write(
        "high",
        {
            "name": "urgent",
            "priority": 10,
            "resources": {"cpu": 0.5, "gpu": 4},
            "params": {"function": f"{F}:sleep", "args": {"seconds": 1.0}},
        },
    )
    cmd = [sys.executable, "-m", "raypipe.cli", "run", "--no-cache"]
    p_low = subprocess.Popen([*cmd, str(low)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(
            lambda: p_low.poll() is not None or (log.exists() and log.read_text().count("step") >= 3),
            timeout_s=120,
            what="the long stage",
        )
        if p_low.returncode is not None:
            raise TimeoutError
    except TimeoutError:
        p_low.kill()
        pytest.fail(f"the long stage never ran:\n{p_low.communicate()[0]}")
    p_high = subprocess.run([*cmd, str(high)], cwd=REPO, capture_output=True, text=True, timeout=180)
    out_low, _ = p_low.communicate(timeout=180)
    assert p_high.returncode == 0, p_high.stdout + p_high.stderr
    assert p_low.returncode == 0, out_low
    lines = log.read_text().split("\n")
    starts = [int(line.split()[1]) for line in lines if line.startswith("start")]
    steps = [int(line.split()[1]) for line in lines if line.startswith("step")]
    assert starts[0] == 0 and len(starts) == 2 and starts[1] > 0, starts
    assert sorted(steps) == list(range(25)), "every step ran exactly once: resumed from its checkpoint"
    (low_run,) = MetadataStore(str(tmp_path / "low" / "raypipe.db")).list_runs()
    (high_run,) = MetadataStore(str(tmp_path / "high" / "raypipe.db")).list_runs()
    low_hist = [s.status for s in MetadataStore(str(tmp_path / "low" / "raypipe.db")).stage_runs(low_run.run_id)]
    assert low_hist == ["preempted", "succeeded"], low_hist
    urgent = MetadataStore(str(tmp_path / "high" / "raypipe.db")).stage_runs(high_run.run_id)[0]
    assert urgent.status == "succeeded" and urgent.ended_at < low_run.ended_at
    wait_for(no_raypipe_groups, what="grants to be released")


def test_data_stage_next_to_a_training_gang_stays_inside_its_own_grant(tmp_path: Path) -> None:
    """Ray Data work is bounded by the data stage's grant and kept on its node: it never
    lands on the training gang's nodes, never runs more tasks than its CPUs, and does
    not wait for the gang's resources (the hang of ray-project/ray #41603)."""
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        pd.DataFrame({"id": range(i * 50, (i + 1) * 50), "x": [0.5] * 50}).to_parquet(src / f"p{i}.parquet")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    gang_log = tmp_path / "gang"
    gate = tmp_path / "gate"
    gate.write_text("")
    cfg = raypipe.PipelineConfig(
        name="data-next-to-train",
        storage=str(tmp_path / "store"),
        stages=[
            stage(
                "train",
                "hold_gang",
                args={"seconds": 120, "log": str(gang_log), "gate": str(gate)},
                resources=gpu(4, cpu=4),
                gang_size=2,
            ),
            raypipe.StageConfig(name="read", kind="data.read", params={"path": str(src)}),
            raypipe.StageConfig(
                name="feat",
                kind="data.transform",
                inputs={"data": "read.data"},
                resources={"cpu": 2},
                params={"function": f"{F}:record_task", "args": {"log_dir": str(tasks), "hold_s": 0.2}},
            ),
            stage(
                "done", "remove_file", inputs={"data": "feat.data"}, args={"path": str(gate)}, resources={"cpu": 0.1}
            ),
        ],
    )
    res = raypipe.run(cfg)
    assert res.ok, res.errors
    g_start, g_end, *gang_nodes = gang_log.read_text().split()
    runs = [f.read_text().split() for f in tasks.iterdir()]
    assert len(runs) >= 8, "at least one call per file"
    nodes = {node for node, _, _ in runs}
    assert len(nodes) == 1 and not nodes & set(gang_nodes), (nodes, gang_nodes)
    spans = sorted((float(a), float(b)) for _, a, b in runs)
    assert spans[0][0] > float(g_start) and spans[-1][1] < float(g_end), "ran while the gang held its grant"
    assert float(g_end) - float(g_start) < 110, "the data stage finished while the gang held (it never waited on it)"
    peak = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert peak <= 2, f"{peak} tasks at once on a 2-CPU grant"
    wait_for(no_raypipe_groups, what="grants to be released")


def test_node_killed_during_a_data_stage_retries_it_with_the_same_output(
    tmp_path: Path, gpu_cluster: Any, reliability: Any
) -> None:
    """Fault injection: the worker node running a data.transform's Ray Data tasks is removed
    mid-stage; the stage is requeued, runs again elsewhere, and its dataset (a content
    version of the rows) equals a clean run's.  Then the cluster's resources are free again."""
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        pd.DataFrame({"id": range(i * 50, (i + 1) * 50), "x": [0.5 * i] * 50}).to_parquet(src / f"p{i}.parquet")

    def pipeline(store: Path, tasks: Path, hold_s: float) -> raypipe.PipelineConfig:
        tasks.mkdir(exist_ok=True)
        return read_then(
            "data-fault",
            store,
            src,
            raypipe.StageConfig(
                name="feat",
                kind="data.transform",
                inputs={"data": "read.data"},
                resources={"cpu": 3},  # more than the head's 2 CPUs: on a worker node
                params={"function": f"{F}:record_task", "args": {"log_dir": str(tasks), "hold_s": hold_s}},
            ),
        )

    clean = raypipe.run(pipeline(tmp_path / "clean", tmp_path / "clean-tasks", 0.0))
    assert clean.ok, clean.errors
    tasks = tmp_path / "tasks"
    cfg = pipeline(tmp_path / "store", tasks, 1.0)
    res, _ = remove_node_during(
        gpu_cluster,
        cfg,
        "feat",
        lambda: tasks.exists() and any(tasks.iterdir()),
        "worker node removed during a data stage",
        reliability,
    )
    assert res.ok, res.errors
    feat = history(tmp_path, res.run_id)["feat"]
    assert feat[-1] == "succeeded" and len(feat) >= 2 and "failed" not in feat, feat
    assert res.outputs["feat"]["data"].sha256 == clean.outputs["feat"]["data"].sha256
    assert_cluster_free()


@pytest.mark.timeout(420)
def test_node_removed_during_training_resumes_from_its_checkpoint(
    tmp_path: Path, gpu_cluster: Any, reliability: Any
) -> None:
    """Fault injection: a node holding one of two DDP workers is removed once an epoch's
    checkpoint is saved.  The training resumes from that checkpoint on the nodes left
    (the epochs continue, none runs from zero) and finishes; then every grant is free."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12000, 6))  # over a second an epoch: the node goes while epochs remain
    src = tmp_path / "src"
    src.mkdir()
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]).assign(label=(x[:, 0] + x[:, 1] > 0).astype(int))
    frame.to_parquet(src / "part.parquet")
    store = tmp_path / "store"
    cfg = read_then(
        "train-node-fault",
        store,
        src,
        raypipe.StageConfig(
            name="fit",
            kind="train",
            inputs={"train": "read.data"},
            resources={"cpu": 3},  # one worker per 4-CPU worker node (the head has 2)
            gang_size=2,
            params={"model": {"type": "mlp", "hidden": [16]}, "epochs": 5, "batch_size": 32, "max_failures": 1},
        ),
    )

    def reported_epochs() -> list[int]:
        rows = [line for h in store.glob("checkpoints/*/fit/*/history.jsonl") for line in h.read_text().splitlines()]
        return [json.loads(line)["epoch"] for line in rows if line.strip()]

    res, epochs_before = remove_node_during(
        gpu_cluster,
        cfg,
        "fit",
        lambda: max(reported_epochs(), default=-1) >= 0,  # the first epoch checkpointed
        "node removed during distributed training",
        reliability,
        started_s=180,
        join_s=240,
        before=lambda: max(reported_epochs()),
    )
    assert res.ok, res.errors
    assert epochs_before < 4, "the node was removed before the training ended"
    db = str(store / "raypipe.db")
    hist = raypipe.read_artifact(res.outputs["fit"]["history"].sha256, db=db)
    starts = [h["start_epoch"] for h in hist]
    assert starts[0] == 0 and starts[-1] > epochs_before, f"it resumed after the last checkpoint seen: {hist}"
    resumed = hist[starts.index(starts[-1]) :]
    assert [h["epoch"] for h in resumed] == list(range(starts[-1], 5)), "it continued after its checkpoint"
    attempts = history(tmp_path, res.run_id)["fit"]
    print(f"\nnode removed after epoch {epochs_before}: stage runs {attempts}, resumed at epoch {starts[-1]}")
    assert "failed" not in attempts
    assert_cluster_free()


def get_controller_handle() -> Any:
    import ray

    from raypipe.scheduler.client import CONTROLLER_NAME, NAMESPACE

    return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)


def remove_node_during(
    cluster: Any,
    cfg: raypipe.PipelineConfig,
    stage_name: str,
    started: Callable[[], object],
    fault: str,
    reliability: Any,
    started_s: float = 60.0,
    join_s: float = 180.0,
    before: Callable[[], Any] = lambda: None,
) -> tuple[Any, Any]:
    """Fault injection: runs ``cfg`` in a thread; once ``started()`` holds, removes a worker
    node holding the running job of ``stage_name``, waits for the run's result and adds a
    like node back.  Returns the result and what ``before()`` saw just before the removal."""
    import ray

    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(res=raypipe.run(cfg, use_cache=False)))
    t.start()
    wait_for(started, timeout_s=started_s, what=f"stage {stage_name} to start")
    queue = ray.get(get_controller_handle().queue.remote())
    (job,) = [j for j in queue if j["state"] == "running" and f":{stage_name}:" in j["job_id"]]
    node = next(n for n in cluster.worker_nodes if n.node_id in job["nodes"])
    seen = before()
    reliability.fault(fault)
    cluster.remove_node(node)
    t.join(timeout=join_s)
    cluster.add_node(num_cpus=4, num_gpus=4, labels={"gpu_type": "A100"})
    assert "res" in out, f"the run did not end within {join_s:g} s of the node's removal"
    return out["res"], seen
