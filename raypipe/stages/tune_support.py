"""The Ray side of the ``tune`` kind (imported only in the stage's task): the sweep,
Tune's trials on the scheduler's grant, dataset inputs for trials, and the outputs.

See :mod:`raypipe.stages.tune` for what the kind does and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from ray.air.execution.resources.request import AcquiredResources, ResourceRequest
from ray.air.execution.resources.resource_manager import ResourceManager
from ray.tune import Callback

from raypipe._json import json_safe, json_scalars
from raypipe.exceptions import StageError
from raypipe.models.builtin import merge_trial_config, tune_trainable
from raypipe.scheduler.backend import NODE_ID_LABEL
from raypipe.stages.base import StageContext, progress
from raypipe.stages.python import import_function
from raypipe.store.datasets import is_ray_dataset
from raypipe.store.models import META_FILE, ModelPackage

log = logging.getLogger(__name__)

#: How often the Tune driver saves the sweep's state (what a restore continues from).
SNAPSHOT_S = 2
#: Set by :class:`SweepProgress` in the result on which ASHA stopped a trial before ``max_t``.
STOPPED_EARLY = "raypipe_stopped_early"
#: Metrics Tune adds to every report; not part of the ``metrics`` output.
TUNE_AUTO_METRICS = frozenset(
    {
        "timestamp",
        "date",
        "hostname",
        "node_ip",
        "pid",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "checkpoint_dir_name",
        "done",
        "trial_id",
        "should_checkpoint",
        "experiment_tag",
        STOPPED_EARLY,
    }
)


# ----------------------------------------------------------------------- the grant
def trial_bundle(ctx: StageContext) -> dict[str, float]:
    """One bundle of the grant in Ray's terms (what each trial takes)."""
    res = ctx.resources
    bundle = {"CPU": res.cpu, "GPU": res.gpu, **res.custom_dict}
    if res.memory_mb > 0:
        bundle["memory"] = res.memory_mb * 1024 * 1024
    bundle = {k: float(v) for k, v in bundle.items() if v > 0}
    if not bundle:
        raise StageError("a tune stage needs resources for its trials (one bundle each); `resources` is empty")
    return bundle


def grant_shape(ctx: StageContext) -> str:
    """A short name of the grant's shape (bundles x resources): sweeps are kept per shape."""
    text = json.dumps([ctx.gang_size, trial_bundle(ctx)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class _Granted(AcquiredResources):
    """One booked bundle: the trial's actor gets its resources, pinned to its node."""

    def __init__(self, bundles: list[dict[str, float]], resource_request: ResourceRequest, slot: int, node: str | None):
        self.bundles = bundles
        self.resource_request = resource_request
        self.slot = slot
        self.node = node

    def _annotate_remote_entity(self, entity: Any, bundle: dict[str, float], bundle_index: int) -> Any:
        bundle = dict(bundle)
        opts: dict[str, Any] = {
            "num_cpus": bundle.pop("CPU", 0),
            "num_gpus": bundle.pop("GPU", 0),
            "memory": bundle.pop("memory", 0.0),
            "resources": bundle,
        }
        if self.node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self.node, soft=False)
        return entity.options(**opts)


class GrantResources(ResourceManager):
    """Tune's resource manager over the bundles the scheduler booked: a trial takes a free
    bundle (its actor pinned to that bundle's node) and returns it when it ends.  Like
    Tune's ``FixedResourceManager``, with one budget per booked bundle instead of one
    pooled budget, so the per-node booking holds too."""

    def __init__(self, bundle: Mapping[str, float], nodes: list[str | None]):
        self._bundle = dict(bundle)
        self._nodes = list(nodes)
        self._free = list(range(len(nodes)))
        self._requested: list[ResourceRequest] = []

    def _fits(self, request: ResourceRequest) -> bool:
        need = request.required_resources
        return all(self._bundle.get(k, 0.0) + 1e-9 >= v for k, v in need.items())

    def request_resources(self, resource_request: ResourceRequest) -> None:
        if not self._fits(resource_request):
            raise StageError(
                f"a trial asks for {resource_request.required_resources}, more than one bundle of the "
                f"grant ({self._bundle})"
            )
        self._requested.append(resource_request)

    def cancel_resource_request(self, resource_request: ResourceRequest) -> None:
        self._requested.remove(resource_request)

    def has_resources_ready(self, resource_request: ResourceRequest) -> bool:
        return bool(self._free) and resource_request in self._requested

    def acquire_resources(self, resource_request: ResourceRequest) -> AcquiredResources | None:
        if not self.has_resources_ready(resource_request):
            return None
        self._requested.remove(resource_request)
        slot = self._free.pop(0)
        return _Granted(resource_request.bundles, resource_request, slot, self._nodes[slot])

    def free_resources(self, acquired_resource: AcquiredResources) -> None:
        slot = getattr(acquired_resource, "slot", None)
        if slot is not None and slot not in self._free:
            self._free.append(slot)
            self._free.sort()

    def clear(self) -> None:
        self._requested = []
        self._free = list(range(len(self._nodes)))


@contextmanager
def trials_on_grant(ctx: StageContext, bundle: Mapping[str, float]) -> Iterator[bool]:
    """Make Tune controllers created inside use :class:`GrantResources`; yields False when
    this Ray's Tune has no such seam (then trials use placement groups: see the kind's doc)."""
    import ray.tune.execution.tune_controller as tc

    nodes: list[str | None] = list(ctx.grant_nodes) if ctx.grant_nodes else [None] * ctx.gang_size
    if len(nodes) != ctx.gang_size:
        nodes = (nodes * ctx.gang_size)[: ctx.gang_size]
    saved = getattr(tc, "PlacementGroupResourceManager", None)
    saved_state = getattr(tc, "_ExperimentCheckpointManager", None)
    if saved_state is not None:
        tc._ExperimentCheckpointManager = _save_on_trial_end(saved_state)  # type: ignore[misc]
    try:
        if saved is None:
            log.warning(
                "this Ray's Tune has no PlacementGroupResourceManager seam: trials use one placement group "
                "each, on the granted nodes, at most %d at once",
                ctx.gang_size,
            )
            yield False
            return
        tc.PlacementGroupResourceManager = lambda: GrantResources(bundle, nodes)  # type: ignore[misc,assignment]
        try:
            yield True
        finally:
            tc.PlacementGroupResourceManager = saved  # type: ignore[misc]
    finally:
        if saved_state is not None:
            tc._ExperimentCheckpointManager = saved_state  # type: ignore[misc]


_T = TypeVar("_T")


def _save_on_trial_end(base: type[_T]) -> type[_T]:
    """Tune's experiment-state saver, also saving (and syncing) as soon as a trial has
    ended: what a restore reads then never misses a finished trial.  (Tune calls it every
    step with the controller's ``save_to_dir``; its own rule saves on a timer.)"""

    class SaveOnTrialEnd(base):  # type: ignore[misc,valid-type]
        _ended: int | None = None

        def sync_up_experiment_state(self, save_fn: Any, force: bool = False, wait: bool = False) -> Any:
            controller: Any = getattr(save_fn, "__self__", None)  # Tune's TuneController, or None
            trials = controller.get_trials() if hasattr(controller, "get_trials") else None
            if trials is not None:
                ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
                if ended != self._ended:
                    self._ended, force = ended, True
            return super().sync_up_experiment_state(save_fn, force=force, wait=wait)

    return SaveOnTrialEnd


def fallback_resources(ctx: StageContext, bundle: Mapping[str, float]) -> Any:
    """One placement group per trial, kept on the granted nodes by a label selector."""
    from ray.tune import PlacementGroupFactory

    nodes = sorted(set(ctx.grant_nodes or []))
    if not nodes:
        return PlacementGroupFactory([dict(bundle)])
    selector = {NODE_ID_LABEL: nodes[0] if len(nodes) == 1 else f"in({','.join(nodes)})"}
    return PlacementGroupFactory([dict(bundle)], bundle_label_selector=[selector])


# ----------------------------------------------------------------------- datasets
def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    return (pafs.LocalFileSystem(), uri) if "://" not in uri else pafs.FileSystem.from_uri(uri)


def write_tables(folder: str, tables: Mapping[str, Any]) -> dict[str, str]:
    """Each table input (Ray Dataset, DataFrame, Arrow table) as one parquet file in
    ``folder`` (read in row order); ``{input name: file}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data import DataContext

    fs, base = _fs(folder)
    fs.create_dir(base, recursive=True)
    out = {}
    for name, value in tables.items():
        if is_ray_dataset(value):
            opts = DataContext.get_current().execution_options
            saved, opts.preserve_order = opts.preserve_order, True
            try:
                value = value.to_pandas()
            finally:
                opts.preserve_order = saved
        table = value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)
        path = f"{base}/{name}.parquet"
        pq.write_table(table, path, filesystem=fs)
        out[name] = f"{folder}/{name}.parquet"
    return out


def read_tables(files: Mapping[str, str]) -> dict[str, Any]:
    """The frames :func:`write_tables` wrote, as pandas DataFrames (in a trial)."""
    import pyarrow.parquet as pq

    frames = {}
    for name, uri in files.items():
        fs, path = _fs(uri)
        frames[name] = pq.read_table(path, filesystem=fs).to_pandas()
    return frames


def function_trial(target: str, files: Mapping[str, str]) -> Callable[[dict[str, Any]], Any]:
    """A Tune function trainable: the user's ``fn(config, **datasets)`` with the dataset
    inputs read from ``files`` when the trial starts."""

    fn = import_function(target)
    files = dict(files)

    def trial(config: dict[str, Any]) -> Any:
        quiet_ray_logs()
        return fn(config, **read_tables(files))

    trial.__name__ = target.rpartition(":")[2].rpartition(".")[2]
    trial.__qualname__ = trial.__name__
    return trial


def builtin_trial(base: Mapping[str, Any], files: Mapping[str, str]) -> Callable[[dict[str, Any]], Any]:
    """A Tune function trainable for built-in models: ``base`` is the built-in loop's
    config (:func:`raypipe.models.builtin.prepare`); a trial's values override it."""
    base, files = dict(base), dict(files)

    def builtin(config: dict[str, Any]) -> Any:
        quiet_ray_logs()
        return tune_trainable(base, read_tables(files))(config)

    return builtin


# ----------------------------------------------------------------------- progress
def quiet_ray_logs() -> dict[str, int]:
    """Tune's and Train's INFO lines (a line per checkpoint) off; the previous levels."""
    saved = {}
    for name in ("ray.tune", "ray.train"):
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    return saved


@contextmanager
def quiet_tune() -> Iterator[None]:
    """The Tune driver's settings for one fit: quiet logs; the sweep's state saved every
    ``SNAPSHOT_S`` seconds (Tune's default is at least 10 s) unless the environment says."""
    import os

    env = {
        "TUNE_GLOBAL_CHECKPOINT_S": str(SNAPSHOT_S),
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no tables, no banner
    }
    saved_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.setdefault(k, v)
    levels = quiet_ray_logs()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)


class SweepProgress(Callback):
    """Marks results on which ASHA stopped a trial before ``max_t`` (Tune sets ``done``
    on the result a scheduler stops; a trial that ends by itself never shows one) and
    prints one line per finished trial."""

    def __init__(self, stage: str, metric: str, max_t: int | None) -> None:
        self.stage, self.metric, self.max_t = stage, metric, max_t

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any):
        if self.max_t is not None and result.get("done") and result.get("training_iteration", 0) < self.max_t:
            result[STOPPED_EARLY] = True

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any):
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, float) else value
        how = ", stopped early by ASHA" if last.get(STOPPED_EARLY) else ""
        progress(
            f"[{self.stage}] trial {trial.trial_id} finished: "
            f"{last.get('training_iteration', 0)} iterations, {self.metric}={shown}{how}"
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any):
        progress(f"[{self.stage}] trial {trial.trial_id} failed (error in {trial.path})")


# ----------------------------------------------------------------------- the sweep
class Sweep:
    """One stage attempt's Tune run: a new sweep, or the stored one continued."""

    def __init__(self, ctx: StageContext, params: Any, function: str | None, code: str) -> None:
        self.ctx, self.p, self.function, self.code = ctx, params, function, code
        self.trained_by = {"kind": "tune", "function": function, "stage": ctx.stage, "run_id": ctx.run_id}
        self.bundle = trial_bundle(ctx)
        storage = (ctx.checkpoint_dir or str(ctx.workdir / "tune")).rstrip("/")
        self.storage = storage
        self.name = f"sweep-{grant_shape(ctx)}"
        self.path = f"{storage}/{self.name}"
        self.callbacks: list[Any] = []  # more Tune callbacks (experiment tracking)

    def write_inputs(self, tables: Mapping[str, Any]) -> dict[str, str]:
        return write_tables(f"{self.path}-inputs", tables) if tables else {}

    def _searcher(self) -> Any:
        from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

        p, n = self.p, self.ctx.gang_size
        if p.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(seed=p.search_seed), max_concurrent=n)
        return BasicVariantGenerator(max_concurrent=n, random_state=p.search_seed)

    def _scheduler(self) -> Any:
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

        a = self.p.asha
        if a is None:
            return FIFOScheduler()
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=a.max_t,
            grace_period=a.grace_period,
            reduction_factor=a.reduction_factor,
        )

    def run(
        self, trainable: Callable[..., Any], config: Mapping[str, Any], base: Mapping[str, Any], dotted: bool = False
    ) -> dict[str, Any]:
        """Run (or continue) the sweep.  ``config``: fixed values of every trial's config;
        ``base``: what ``best_config`` completes (``dotted``: trial keys are dotted paths
        into it, as for built-in models)."""
        from ray import tune
        from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

        p = self.p
        with trials_on_grant(self.ctx, self.bundle) as on_grant, quiet_tune():
            resources = self.bundle if on_grant else fallback_resources(self.ctx, self.bundle)
            trainable = tune.with_resources(trainable, resources)
            if Tuner.can_restore(self.path):
                progress(f"[{self.ctx.stage}] continuing the sweep in {self.path}")
                # (Tune warns here about result files of trials the dead driver never synced.)
                analysis_log = logging.getLogger("ray.tune.analysis")
                level = analysis_log.level
                analysis_log.setLevel(logging.ERROR)
                try:
                    tuner = Tuner.restore(self.path, trainable=trainable, resume_errored=True)
                finally:
                    analysis_log.setLevel(level)
            else:
                space = {**config, **{name: d.domain(p.search) for name, d in p.space.items()}}
                asha = p.asha
                tuner = Tuner(
                    trainable,
                    param_space=space,
                    tune_config=TuneConfig(
                        metric=p.metric,
                        mode=p.mode,
                        search_alg=self._searcher(),
                        scheduler=self._scheduler(),
                        num_samples=p.samples,
                        reuse_actors=p.reuse_actors,
                    ),
                    run_config=RunConfig(
                        name=self.name,
                        storage_path=self.storage,
                        verbose=0,
                        failure_config=FailureConfig(max_failures=p.max_failures),
                        checkpoint_config=CheckpointConfig(
                            num_to_keep=p.keep_checkpoints,
                            checkpoint_score_attribute=p.metric,
                            checkpoint_score_order=p.mode,
                        ),
                        callbacks=[
                            SweepProgress(self.ctx.stage, p.metric, asha.max_t if asha else None),
                            *self.callbacks,
                        ],
                    ),
                )
            grid = tuner.fit()
        return self.outputs([grid[i] for i in range(len(grid))], base, dotted)

    # ------------------------------------------------------------------- outputs
    def outputs(self, results: list[Any], base: Mapping[str, Any], dotted: bool) -> dict[str, Any]:
        import pandas as pd

        p = self.p
        rows, best, best_value = [], None, None
        for r in results:
            metrics = dict(r.metrics or {})
            values = _metric_values(r, p.metric)
            best_here = (min(values) if p.mode == "min" else max(values)) if values else None
            row: dict[str, Any] = {"trial_id": metrics.get("trial_id") or _trial_id(r)}
            for name in p.space:
                row[f"config/{name}"] = (r.config or {}).get(name)
            row.update(
                status="ERROR" if r.error is not None else "TERMINATED",
                iterations=int(metrics.get("training_iteration") or 0),
            )
            row[f"{p.metric}_last"] = _number(metrics.get(p.metric))
            row[f"{p.metric}_best"] = best_here
            row["stopped_early"] = bool(metrics.get(STOPPED_EARLY))
            row["error"] = None if r.error is None else _error_text(r.error)
            rows.append(row)
            if r.error is None and best_here is not None:
                if best_value is None or (best_here < best_value if p.mode == "min" else best_here > best_value):
                    best, best_value = r, best_here
        rows.sort(key=lambda row: row["trial_id"])
        table = pd.DataFrame(rows)
        for col in [c for c in table.columns if c.startswith("config/")]:
            table[col] = _uniform_column(table[col])
        if best is None:
            failed = [row for row in rows if row["error"]]
            if failed and len(failed) == len(rows):
                first = "; ".join(f"trial {row['trial_id']}: {row['error']}" for row in failed[:3])
                raise StageError(f"every trial of the sweep failed ({len(rows)}); first errors: {first}")
            seen = sorted({k for r in results for k in (r.metrics or {}) if k not in TUNE_AUTO_METRICS})
            raise StageError(
                f"no trial reported the metric {p.metric!r}; reported: {', '.join(seen) or 'nothing'} "
                "(call ray.tune.report({...}) with it)"
            )
        checkpoint, ckpt_metrics = _best_checkpoint(best, p.metric, p.mode)
        if checkpoint is None:
            raise StageError(
                f"the best trial ({best.metrics.get('trial_id')}) reported no checkpoint "
                "(call ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(folder)))"
            )
        chosen = {k: (best.config or {}).get(k) for k in p.space}
        if dotted:
            best_config = _plain_config(merge_trial_config(base, chosen))
        else:
            best_config = _plain_config({**base, **chosen})
        metrics = _plain_metrics(ckpt_metrics)
        model = self._package(checkpoint, best_config, metrics)
        progress(f"[{self.ctx.stage}] best trial {best.metrics.get('trial_id')}: {p.metric}={best_value:.6g}")
        return {"best_config": best_config, "model": model, "trials": table, "metrics": metrics}

    def _package(self, checkpoint: Any, config: dict[str, Any], metrics: dict[str, Any]) -> Any:
        folder = self.ctx.workdir / "model"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, folder)
        # A checkpoint that is a package already (built-in models) keeps its metadata.
        meta = ModelPackage.open(folder).meta if (folder / META_FILE).is_file() else {}
        for key, value in {
            "task": None,
            "spec": None,
            "preprocessing": None,
            "trained_by": self.trained_by,
            "params": config,
            "metrics": metrics,
            "code": self.code,
        }.items():
            meta.setdefault(key, value)
        return ModelPackage.create(folder, meta)


def _metric_values(result: Any, metric: str) -> list[float]:
    df = getattr(result, "metrics_dataframe", None)
    values: list[Any] = []
    if df is not None and metric in getattr(df, "columns", []):
        values = list(df[metric])
    elif result.metrics and metric in result.metrics:
        values = [result.metrics[metric]]
    return [float(v) for v in values if _number(v) is not None]


def _best_checkpoint(result: Any, metric: str, mode: str) -> tuple[Any, dict[str, Any]]:
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if _number((m or {}).get(metric)) is not None]
    if scored:
        pick = min if mode == "min" else max
        return pick(scored, key=lambda cm: float(cm[1][metric]))
    return result.checkpoint, dict(result.metrics or {})


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "item"):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _trial_id(result: Any) -> str:
    path = str(getattr(result, "path", "") or "")
    return path.rstrip("/").rpartition("/")[2]


def _error_text(error: Any) -> str:
    text = str(error).strip().splitlines()
    tail = [line for line in text if line.strip()][-1:] if text else []
    return (tail[0] if tail else type(error).__name__)[:500]


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(config), default=json_safe))


def _plain_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The user's scalar metrics (and ``training_iteration``) as JSON values; NaN -> None."""
    return json_scalars(metrics, skip=(*TUNE_AUTO_METRICS, "config"))


def _uniform_column(col: Any) -> Any:
    """A parquet-safe column: scalars of one kind stay; anything else becomes JSON text."""
    kinds = set()
    for v in col:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, (int, float)) or hasattr(v, "item"):
            kinds.add("number")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("other")
    if len(kinds) <= 1 and "other" not in kinds:
        return col
    return col.map(lambda v: None if v is None else json.dumps(v, default=json_safe))
