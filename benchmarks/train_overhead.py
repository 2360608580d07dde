"""Overhead of raypipe's ``train`` and ``tune`` stages against plain Ray Train / Ray Tune.

1. **train** (user loop).  A pipeline ``ingest -> label -> split -> fit`` on the digits data
   (as ``configs/train_digits.yaml``); ``fit`` is ``kind: train`` with
   ``function: raypipe.examples.digits_train:train_loop``, ``gang_size: 2`` and
   ``resources: {cpu: 0.5}``.  A warm-up run fills the cache with the data stages, so every
   timed run is the whole ``raypipe.run`` call with ``ingest``, ``label`` and ``split`` cache
   hits and ``fit`` (``cache: false``) training from scratch.  Baseline, in the same process
   and Ray: the same ``split`` datasets read with ``raypipe.read_artifact`` and a plain
   ``TorchTrainer`` running the same loop with the same config, workers and resources.
   Goal: raypipe / plain <= 1.1.
2. **train** (built-in model, extra row).  The same with ``params.model: {type: mlp}``;
   the baseline runs ``raypipe.models.builtin.train_loop`` with the config from
   ``raypipe.models.builtin.prepare`` (timed: it is work the baseline needs too).
3. **tune**.  One ``kind: tune`` stage: ``--trials`` trials of
   ``benchmarks._train_funcs:sleep_trial`` (sleeps ``--trial-s`` s, reports once with a tiny
   checkpoint), ``gang_size: 2`` and ``resources: {cpu: 1}``, so two trials at a time.
   Baseline: a plain ``Tuner(tune.with_resources(sleep_trial, {"cpu": 1}),
   TuneConfig(num_samples=N, max_concurrent_trials=2))``.  Goal: raypipe / plain <= 1.15.

raypipe and plain runs alternate (ABAB), ``--repeat`` times each; medians are reported.

Run from the repository root::

    .venv/bin/python -m benchmarks.train_overhead --out bench-out/train [--repeat 3]
    .venv/bin/python -m benchmarks.train_overhead --out bench-out/train-smoke --quick

Writes ``OUT/results.json`` and ``OUT/train_overhead.png``; keys are documented in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
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
    start_local_ray,
    write_results,
)

USER_LOOP = "raypipe.examples.digits_train:train_loop"
TRIAL_FUNCTION = "benchmarks._train_funcs:sleep_trial"
GOAL_TRAIN = 1.1
GOAL_TUNE = 1.15


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pipelines


def data_stages() -> list[Any]:
    """``ingest -> label -> split`` of configs/train_digits.yaml: the digits CSV bundled with scikit-learn."""
    from raypipe.config import StageConfig

    return [
        StageConfig(
            name="ingest",
            kind="data.read",
            params={"package": "sklearn.datasets", "path": "data/digits.csv.gz", "csv": {"header": False}},
        ),
        StageConfig(
            name="label",
            kind="data.transform",
            inputs={"data": "ingest.data"},
            params={"function": "raypipe.examples.quickstart:name_columns"},
        ),
        StageConfig(
            name="split",
            kind="data.split",
            inputs={"data": "label.data"},
            params={"fractions": {"train": 0.8, "test": 0.2}, "seed": 0},
        ),
    ]


def loop_config(epochs: int) -> dict[str, Any]:
    """``params.config`` of the user loop (configs/train_digits.yaml), and the plain trainer's."""
    return {"epochs": epochs, "lr": 0.002, "batch_size": 64, "hidden": 128}


def builtin_params(epochs: int) -> dict[str, Any]:
    """The built-in MLP's training params (as configs/quickstart.yaml's ``train`` stage)."""
    return {
        "model": {"type": "mlp", "hidden": [128, 128], "dropout": 0.1},
        "label": "label",
        "optimizer": {"name": "adam", "lr": 0.001},
        "schedule": {"name": "cosine"},
        "epochs": epochs,
        "batch_size": 64,
    }


def train_pipeline(storage: Path, path: str, epochs: int, workers: int, worker_cpu: float, num_cpus: int) -> Any:
    """data stages -> ``fit`` (``path`` is ``user`` or ``builtin``); ``fit`` is never cached."""
    from raypipe.config import PipelineConfig, RayConfig, StageConfig

    if path == "user":
        inputs = {"train": "split.train", "test": "split.test"}
        params: dict[str, Any] = {"function": USER_LOOP, "config": loop_config(epochs)}
    else:
        inputs = {"train": "split.train", "validation": "split.test"}
        params = builtin_params(epochs)
    fit = StageConfig(
        name="fit",
        kind="train",
        inputs=inputs,
        resources={"cpu": worker_cpu},
        gang_size=workers,
        cache=False,
        params=params,
    )
    return PipelineConfig(
        name=f"train-overhead-{path}",
        storage=str(storage),
        ray=RayConfig(num_cpus=num_cpus),
        stages=[*data_stages(), fit],
    )


def tune_pipeline(storage: Path, trials: int, trial_s: float, concurrent: int, num_cpus: int) -> Any:
    from raypipe.config import PipelineConfig, RayConfig, StageConfig

    sweep = StageConfig(
        name="sweep",
        kind="tune",
        resources={"cpu": 1},
        gang_size=concurrent,
        cache=False,
        params={
            "function": TRIAL_FUNCTION,
            "config": {"sleep_s": trial_s},
            "space": {"x": {"uniform": [0.0, 1.0]}},
            "num_samples": trials,
            "search_seed": 0,
            "metric": "score",
            "mode": "max",
        },
    )
    return PipelineConfig(name="tune-overhead", storage=str(storage), ray=RayConfig(num_cpus=num_cpus), stages=[sweep])


# ----------------------------------------------------------------------------- raypipe runs


def run_raypipe(cfg: Any, stage: str) -> dict[str, Any]:
    """One ``raypipe.run``: wall time, the stage's phases (from its events) and its record."""
    import raypipe

    marks: dict[str, float] = {}

    def on_event(ev: Any) -> None:
        if ev.stage == stage:
            marks.setdefault(ev.status, time.perf_counter())

    started = time.perf_counter()
    result = raypipe.run(cfg, on_event=on_event)
    ended = time.perf_counter()
    if not result.ok:
        raise RuntimeError(f"raypipe run {result.run_id} failed: {result.errors}")
    db = str(Path(cfg.storage) / "raypipe.db")
    detail = raypipe.show_run(result.run_id, db=db)
    rec = next(s for s in detail.stages if s.stage == stage and s.status == "succeeded")
    queued = marks.get("queued", marks.get("started", started))
    launched, done = marks.get("started", queued), marks.get("succeeded", ended)
    return {
        "wall_s": ended - started,
        # run start -> the stage asks the scheduler: planning, cache hits of the data stages, connecting.
        "before_stage_s": queued - started,
        # queued -> granted and launched: the scheduler's admission of the gang.
        "admission_s": launched - queued,
        # launched -> succeeded: the stage's task (inputs, the library's run, storing outputs, recording).
        "stage_s": done - launched,
        # succeeded -> run returns.
        "after_stage_s": ended - done,
        # the stage record in the metadata store: running -> succeeded.
        "record_s": rec.duration_s,
        "run_id": result.run_id,
        "outputs": result.outputs,
        "db": db,
    }


def stage_metrics(run: dict[str, Any], stage: str) -> dict[str, Any]:
    import raypipe

    return raypipe.read_artifact(run["outputs"][stage]["metrics"].sha256, db=run["db"])


def _final(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in ("epoch", "accuracy", "val_accuracy", "score") if k in metrics}


# ----------------------------------------------------------------------------- plain baselines


class Plain:
    """Plain Ray Train / Ray Tune runs, each with its own fresh storage folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0

    def storage(self, tag: str) -> str:
        self.count += 1
        path = self.workdir / f"plain-{tag}-{self.count:03d}"
        path.mkdir(parents=True)
        return str(path)

    def train(self, path: str, split: dict[str, Any], epochs: int, workers: int, worker_cpu: float) -> dict[str, Any]:
        """The datasets read from the store, then ``TorchTrainer(...).fit()``; all of it timed."""
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        import raypipe
        from raypipe.stages.train import ray_train_poll_interval

        started = time.perf_counter()
        train = raypipe.read_artifact(split["train"].sha256, db=split["db"])
        test = raypipe.read_artifact(split["test"].sha256, db=split["db"])
        if path == "user":
            from raypipe.examples.digits_train import train_loop

            loop: Callable[[dict[str, Any]], None] = train_loop
            datasets = {"train": train, "test": test}
            config = loop_config(epochs)
        else:
            from raypipe.models import builtin

            loop = builtin.train_loop
            datasets = {"train": train, "validation": test}
            from raypipe.stages.data.profile import describe_training_data

            params = builtin.BuiltinTraining.model_validate(builtin_params(epochs))
            config = builtin.prepare(params, datasets, describe_training_data(params, train, None))
        prepared = time.perf_counter()
        trainer = TorchTrainer(
            loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": worker_cpu}),
            run_config=RunConfig(storage_path=self.storage(path)),
            datasets=datasets,
        )
        with ray_train_poll_interval(workers):  # the train stage's setting: compare raypipe, not Ray Train configs
            result = trainer.fit()
        ended = time.perf_counter()
        if result.error is not None:
            raise RuntimeError(f"plain TorchTrainer failed: {result.error}")
        return {"wall_s": ended - started, "fit_s": ended - prepared, "metrics": dict(result.metrics or {})}

    def tune(self, trials: int, trial_s: float, concurrent: int) -> dict[str, Any]:
        """``Tuner(with_resources(sleep_trial, {"cpu": 1}), max_concurrent_trials=concurrent).fit()``."""
        from ray import tune

        from benchmarks._train_funcs import sleep_trial

        started = time.perf_counter()
        tuner = tune.Tuner(
            tune.with_resources(sleep_trial, {"cpu": 1}),
            param_space={"sleep_s": trial_s, "x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                num_samples=trials,
                max_concurrent_trials=concurrent,
                # The tune stage's default (``reuse_actors: true``); plain Tune's default is False.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(storage_path=self.storage("tune"), verbose=0),
        )
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # Tune's banner: not our table
            grid = tuner.fit()
        ended = time.perf_counter()
        errors = [r.error for r in grid if r.error is not None]
        if errors:
            raise RuntimeError(f"plain Tuner: {len(errors)} trials failed: {errors[0]}")
        return {"wall_s": ended - started, "trials": len(grid), "best": grid.get_best_result().metrics.get("score")}


# ----------------------------------------------------------------------------- measurements


def _cpu_sampler() -> Any:
    """CPU seconds (user + system) of this process and every process under it, i.e. the whole
    local Ray: sampled every 0.2 s, so processes that exit during the run (Train workers, trial
    actors) count too.  Less sensitive to other load on the machine than wall time."""
    from benchmarks.data_throughput import TreeSampler

    return TreeSampler(os.getpid(), interval=0.2, pss_every=10**9, list_every=5)


def _clear_checkpoints(storage: Path) -> None:
    """Remove the stages' checkpoint folders.  They are keyed by stage and cache key, not by run,
    so a rerun of the same ``fit`` would otherwise resume from the previous run's last checkpoint
    (and train no epochs at all)."""
    shutil.rmtree(storage / "checkpoints", ignore_errors=True)


def measure_train(args: argparse.Namespace, workdir: Path, plain: Plain) -> dict[str, Any]:
    storage = workdir / "raypipe-train"
    paths = ["user"] + ([] if args.skip_builtin else ["builtin"])
    cfgs = {p: train_pipeline(storage, p, args.epochs, args.workers, args.worker_cpu, args.num_cpus) for p in paths}
    warm = {p: train_pipeline(storage, p, 1, args.workers, args.worker_cpu, args.num_cpus) for p in paths}

    _progress("train warm-up: data stages (they are cache hits afterwards), 1-epoch fit, 1-epoch plain fit")
    split: dict[str, Any] = {}
    warmup: dict[str, Any] = {}
    for p in paths:
        _clear_checkpoints(storage)
        w = run_raypipe(warm[p], "fit")
        split = {**w["outputs"]["split"], "db": w["db"]}
        pw = plain.train(p, split, 1, args.workers, args.worker_cpu)
        warmup[p] = {"raypipe_wall_s": w["wall_s"], "plain_wall_s": pw["wall_s"]}
        _progress(f"  {p}: raypipe {w['wall_s']:.1f}s, plain {pw['wall_s']:.1f}s")

    samples: dict[str, dict[str, list[Any]]] = {p: {"raypipe": [], "plain": []} for p in paths}
    for i in range(args.repeat):
        for p in paths:
            _clear_checkpoints(storage)
            with _cpu_sampler() as cpu:
                rp = run_raypipe(cfgs[p], "fit")
            rp["cpu_s"] = cpu.cpu_s
            rp["metrics"] = stage_metrics(rp, "fit")
            with _cpu_sampler() as cpu:
                pl = plain.train(p, split, args.epochs, args.workers, args.worker_cpu)
            pl["cpu_s"] = cpu.cpu_s
            samples[p]["raypipe"].append(rp)
            samples[p]["plain"].append(pl)
            _progress(
                f"[{i + 1}/{args.repeat}] train ({p}): raypipe {rp['wall_s']:.2f}s "
                f"(before {rp['before_stage_s']:.2f} + admission {rp['admission_s']:.2f} + stage {rp['stage_s']:.2f} "
                f"+ after {rp['after_stage_s']:.2f}), plain {pl['wall_s']:.2f}s (fit {pl['fit_s']:.2f}); "
                f"ratio {rp['wall_s'] / pl['wall_s']:.3f}; CPU s {rp['cpu_s']:.1f} vs {pl['cpu_s']:.1f}"
            )
    return {"samples": samples, "warmup": warmup, "split_rows": _split_rows(split)}


def _split_rows(split: dict[str, Any]) -> dict[str, Any]:
    return {name: (split[name].schema or {}).get("num_rows") for name in ("train", "test") if name in split}


def measure_tune(args: argparse.Namespace, workdir: Path, plain: Plain) -> dict[str, Any]:
    count = 0

    def fresh(trials: int) -> Any:
        # A fresh storage root per run: a sweep's folder is keyed by the stage's cache key, and
        # a rerun would restore the finished sweep instead of running its trials.
        nonlocal count
        count += 1
        return tune_pipeline(
            workdir / f"raypipe-tune-{count:03d}", trials, args.trial_s, args.concurrent, args.num_cpus
        )

    _progress(f"tune warm-up: {args.concurrent} trials each way")
    w = run_raypipe(fresh(args.concurrent), "sweep")
    pw = plain.tune(args.concurrent, args.trial_s, args.concurrent)
    warmup = {"raypipe_wall_s": w["wall_s"], "plain_wall_s": pw["wall_s"]}
    _progress(f"  raypipe {w['wall_s']:.1f}s, plain {pw['wall_s']:.1f}s")
    samples: dict[str, list[Any]] = {"raypipe": [], "plain": []}
    for i in range(args.tune_repeat):
        with _cpu_sampler() as cpu:
            rp = run_raypipe(fresh(args.trials), "sweep")
        rp["cpu_s"] = cpu.cpu_s
        rp["metrics"] = stage_metrics(rp, "sweep")
        with _cpu_sampler() as cpu:
            pl = plain.tune(args.trials, args.trial_s, args.concurrent)
        pl["cpu_s"] = cpu.cpu_s
        samples["raypipe"].append(rp)
        samples["plain"].append(pl)
        _progress(
            f"[{i + 1}/{args.tune_repeat}] tune: raypipe {rp['wall_s']:.2f}s "
            f"(before {rp['before_stage_s']:.2f} + admission {rp['admission_s']:.2f} + stage {rp['stage_s']:.2f} "
            f"+ after {rp['after_stage_s']:.2f}), plain {pl['wall_s']:.2f}s; ratio {rp['wall_s'] / pl['wall_s']:.3f}; "
            f"CPU s {rp['cpu_s']:.1f} vs {pl['cpu_s']:.1f}"
        )
    return {"samples": samples, "warmup": warmup}


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("raypipe train/tune stages vs plain Ray Train TorchTrainer and Ray Tune Tuner.")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each; medians reported (default 3)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray started here (default 2)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15, as configs/train_digits.yaml)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers = the fit stage's gang_size (default 2)")
    p.add_argument("--worker-cpu", type=float, default=0.5, help="CPUs per worker = resources.cpu (default 0.5)")
    p.add_argument("--trials", type=int, default=8, help="tune trials (default 8)")
    p.add_argument("--trial-s", type=float, default=1.0, help="seconds each trial sleeps (default 1)")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once = the tune stage's gang_size (default 2)")
    p.add_argument("--tune-repeat", type=int, default=None, help="timed runs of tune (default: --repeat)")
    p.add_argument("--skip-train", action="store_true", help="no train measurements")
    p.add_argument("--skip-builtin", action="store_true", help="no built-in model row")
    p.add_argument("--skip-tune", action="store_true", help="no tune measurements")
    p.add_argument("--quick", action="store_true", help="smoke test: --repeat 1 --epochs 2 --trials 4 --tune-repeat 1")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.epochs, args.trials, args.tune_repeat = 1, 2, 4, 1
    if args.tune_repeat is None:
        args.tune_repeat = args.repeat
    if min(args.repeat, args.tune_repeat, args.epochs, args.workers, args.trials, args.concurrent, args.num_cpus) < 1:
        p.error("--repeat, --tune-repeat, --epochs, --workers, --trials, --concurrent and --num-cpus must be >= 1")
    if args.worker_cpu <= 0 or args.trial_s < 0:
        p.error("--worker-cpu must be > 0 and --trial-s >= 0")
    return args


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in runs if r.get(key) is not None])


def _paired(raypipe_runs: list[dict[str, Any]], plain_runs: list[dict[str, Any]], key: str = "wall_s") -> float | None:
    """Median of the per-repeat ratios raypipe / plain of ``key``.  Each pair ran back to back, so
    on a shared machine whose load drifts this is steadier than the ratio of the two medians."""
    pairs = [ratio(a[key], b[key]) for a, b in zip(raypipe_runs, plain_runs, strict=True)]
    pairs = [x for x in pairs if x is not None]
    return median(pairs) if pairs else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="raypipe-bench-train-"))
    # Ray workers import `benchmarks._train_funcs` by name from the driver's cwd.
    os.chdir(REPO_ROOT)
    load = os.getloadavg()
    # Ray Train and Tune workers' logs would bury the progress lines: they stay in Ray's files.
    _progress(f"Ray started in {start_local_ray(args.num_cpus):.1f}s; load average before: {load[0]:.2f}")
    try:
        plain = Plain(workdir)
        train = None if args.skip_train else measure_train(args, workdir, plain)
        tuned = None if args.skip_tune else measure_tune(args, workdir, plain)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    phases = ("before_stage_s", "admission_s", "stage_s", "after_stage_s", "record_s")
    if train is not None:
        for p, s in train["samples"].items():
            pre = "train" if p == "user" else "builtin"
            rp, pl = s["raypipe"], s["plain"]
            results[f"{pre}_wall_s"] = _med(rp, "wall_s")
            for ph in phases:
                results[f"{pre}_{ph}"] = _med(rp, ph)
            results[f"{pre}_cpu_s"] = _med(rp, "cpu_s")
            results[f"{pre}_final_metrics"] = _final(rp[-1]["metrics"])
            baseline[f"{pre}_wall_s"] = _med(pl, "wall_s")
            baseline[f"{pre}_cpu_s"] = _med(pl, "cpu_s")
            baseline[f"{pre}_fit_s"] = _med(pl, "fit_s")
            baseline[f"{pre}_final_metrics"] = _final(pl[-1]["metrics"])
            ratios[pre] = ratio(results[f"{pre}_wall_s"], baseline[f"{pre}_wall_s"])
            ratios[f"{pre}_stage"] = ratio(results[f"{pre}_stage_s"], baseline[f"{pre}_wall_s"])
            ratios[f"{pre}_paired"] = _paired(rp, pl)
            ratios[f"{pre}_cpu"] = _paired(rp, pl, "cpu_s")
            raw[f"{pre}_raypipe"] = [{k: r[k] for k in ("wall_s", *phases, "cpu_s")} for r in rp]
            raw[f"{pre}_plain"] = [{k: r[k] for k in ("wall_s", "fit_s", "cpu_s")} for r in pl]
            raw[f"{pre}_warmup"] = train["warmup"][p]
        results["train_split_rows"] = train["split_rows"]
        if ratios.get("train") is not None:
            goals["train_ratio"] = goal(ratios["train_paired"], GOAL_TRAIN, "x")
    if tuned is not None:
        rp, pl = tuned["samples"]["raypipe"], tuned["samples"]["plain"]
        results["tune_wall_s"] = _med(rp, "wall_s")
        results["tune_cpu_s"] = _med(rp, "cpu_s")
        for ph in phases:
            results[f"tune_{ph}"] = _med(rp, ph)
        results["tune_best_score"] = rp[-1]["metrics"].get("score")
        baseline["tune_wall_s"] = _med(pl, "wall_s")
        baseline["tune_cpu_s"] = _med(pl, "cpu_s")
        baseline["tune_best_score"] = pl[-1]["best"]
        ratios["tune"] = ratio(results["tune_wall_s"], baseline["tune_wall_s"])
        ratios["tune_stage"] = ratio(results["tune_stage_s"], baseline["tune_wall_s"])
        ratios["tune_paired"] = _paired(rp, pl)
        ratios["tune_cpu"] = _paired(rp, pl, "cpu_s")
        raw["tune_raypipe"] = [{k: r[k] for k in ("wall_s", *phases, "cpu_s")} for r in rp]
        raw["tune_plain"] = [{k: r[k] for k in ("wall_s", "cpu_s")} for r in pl]
        raw["tune_warmup"] = tuned["warmup"]
        if ratios["tune_paired"] is not None:
            goals["tune_ratio"] = goal(ratios["tune_paired"], GOAL_TUNE, "x")
    params = {
        "repeat": args.repeat,
        "tune_repeat": args.tune_repeat,
        "num_cpus": args.num_cpus,
        "epochs": args.epochs,
        "workers": args.workers,
        "worker_cpu": args.worker_cpu,
        "user_loop": USER_LOOP,
        "trials": args.trials,
        "trial_s": args.trial_s,
        "concurrent": args.concurrent,
        "trial_function": TRIAL_FUNCTION,
        "quick": args.quick,
        "skip_train": args.skip_train,
        "skip_builtin": args.skip_builtin,
        "skip_tune": args.skip_tune,
        "load_avg_1m_before": load[0],
        "load_avg_1m_after": load_after[0],
    }
    path = write_results(
        out,
        "train_overhead",
        params=params,
        results=results,
        baseline=baseline,
        ratios=ratios,
        goals=goals,
        samples=raw,
    )

    rows: list[list[Any]] = []
    groups: list[str] = []
    if train is not None:
        for pre, label in (("train", "train: user loop"), ("builtin", "train: built-in MLP")):
            if f"{pre}_wall_s" not in results:
                continue
            g = goals.get(f"{pre}_ratio")
            rows.append(
                [
                    f"{label}, {args.epochs} epochs",
                    results[f"{pre}_wall_s"],
                    results[f"{pre}_stage_s"],
                    baseline[f"{pre}_wall_s"],
                    ratios[f"{pre}_paired"],
                    f"{results[f'{pre}_cpu_s']:.0f} / {baseline[f'{pre}_cpu_s']:.0f}",
                    f"<= {GOAL_TRAIN:g}" if g else "(info)",
                    g["met"] if g else None,
                ]
            )
            groups.append(label)
    if tuned is not None:
        g = goals.get("tune_ratio")
        rows.append(
            [
                f"tune: {args.trials} x {args.trial_s:g}s trials",
                results["tune_wall_s"],
                results["tune_stage_s"],
                baseline["tune_wall_s"],
                ratios["tune_paired"],
                f"{results['tune_cpu_s']:.0f} / {baseline['tune_cpu_s']:.0f}",
                f"<= {GOAL_TUNE:g}",
                g["met"] if g else None,
            ]
        )
        groups.append("tune")
    print_table(
        f"raypipe train/tune vs plain Ray: {args.workers} workers x {args.worker_cpu:g} CPU, "
        f"{args.concurrent} trials at once; median of {args.repeat} (tune {args.tune_repeat}); {args.num_cpus} CPUs, "
        f"load {load[0]:.1f} -> {load_after[0]:.1f})",
        ["measurement", "raypipe run s", "stage s", "plain s", "ratio", "CPU s rp / plain", "goal", "met"],
        rows,
        caption="raypipe run: whole raypipe.run (train: data stages cached); stage: launched -> succeeded; "
        "ratio: median over repeats of raypipe run / plain run (each pair back to back); "
        "CPU s: medians, whole local Ray",
    )
    if groups:
        keys = [{"train: user loop": "train", "train: built-in MLP": "builtin", "tune": "tune"}[g] for g in groups]
        goal_label = {"train": f"goal <= {GOAL_TRAIN:g}", "builtin": "(no goal)", "tune": f"goal <= {GOAL_TUNE:g}"}
        panels = [
            {
                "title": "wall time (median)",
                "ylabel": "s",
                "groups": groups,
                "series": {
                    "raypipe run": [results[f"{k}_wall_s"] for k in keys],
                    "raypipe stage": [results[f"{k}_stage_s"] for k in keys],
                    "plain Ray": [baseline[f"{k}_wall_s"] for k in keys],
                },
            },
            {
                "title": "raypipe run / plain Ray",
                "ylabel": "ratio (lower is better)",
                "groups": [f"{g}\n{goal_label[k]}" for g, k in zip(groups, keys, strict=True)],
                "series": {"raypipe / plain": [ratios[f"{k}_paired"] or 0.0 for k in keys]},
                "hline": (1.0, "parity with plain Ray"),
            },
        ]
        png = bar_chart(out / "train_overhead.png", panels, title="raypipe train/tune overhead vs plain Ray")
        print(f"results: {path}\nplot:    {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
