"""``tune`` stage kind: a hyperparameter sweep on Ray Tune, inside the scheduler's grant.

What a trial runs, one of two:

- ``model: {type: mlp|cnn, ...}`` with the built-in training fields (``optimizer``,
  ``schedule``, ``epochs``, ``batch_size``... as in ``train``): every trial runs the
  built-in loop (:func:`raypipe.models.builtin.tune_trainable`) on the ``train`` (and
  optional ``validation``) inputs, with the trial's values over those fields: a space
  key is a field (``epochs``) or a dotted path into a section (``optimizer.lr``,
  ``model.hidden``), checked when planning against the fields and their types.  It
  reports once per epoch (``epoch, loss, accuracy, val_loss, val_accuracy``) with a
  checkpoint that is itself a model package.
- ``function: pkg.mod:trainable``: a Ray Tune function trainable
  ``fn(config, **datasets)``: it trains, calls ``ray.tune.report(metrics,
  checkpoint=...)`` (once per epoch, say) and, when restarted, continues from
  ``ray.tune.get_checkpoint()``.  A trial's ``config`` holds ``params.config``, the
  stage's inputs that are not datasets (by input name, as in ``train``) and the
  values the search picked for the ``space`` parameters.

Datasets.  Every dataset input (a Ray Dataset from a data stage, a DataFrame or an
Arrow table) is read once by the stage, inside its grant and in row order, and
written as one parquet file beside the sweep's checkpoints; each trial reads it back
as a pandas DataFrame, passed as the keyword argument of the input's name.  So the
data stays in storage (no object-store copies pinned by the stage's worker), trials
on any node read it, and no Ray Data work competes with trials for the grant's CPUs
(trials holding all of a small grant while Ray Data tasks wait for a CPU would
deadlock).  Meant for modest datasets: each trial holds its own copy in memory.

Search space (``space``), one entry per parameter, each exactly one of:
``choice: [v, ...]``, ``uniform: [lo, hi]``, ``loguniform: [lo, hi]`` (0 < lo),
``randint: [lo, hi]`` (integers, both ends included) or ``grid: [v, ...]``.
``search: random`` (default) samples ``num_samples`` configs (default 10); grid
parameters among them are crossed with every sample (Ray Tune's rule: ``num_samples``
x grid size trials).  ``search: grid`` tries every combination of ``grid`` and
``choice`` values (``num_samples`` times, default once); continuous ranges cannot be
enumerated and are planning errors.  ``search: optuna`` (TPE, needs the ``optuna``
package) takes no ``grid`` parameters.  ``search_seed`` makes random and Optuna
search repeatable.  ``metric``/``mode`` say what is best.  ``scheduler: {asha:
{max_t, grace_period, reduction_factor}}`` stops bad trials early with ASHA; its time
unit is Tune's ``training_iteration`` (one ``report`` = one step, so with one report
per epoch ``max_t`` counts epochs).  ``max_failures`` restarts a failed trial from
its last checkpoint that many times.  Trials reuse actors (``reuse_actors``, default
on): a sweep starts one process per bundle, not one per trial.

Resources.  Each trial takes one bundle of the stage's grant (``resources``: CPU, GPU,
memory, custom) and at most ``gang_size`` trials run at once: ``gang_size: 4`` with
``resources: {cpu: 0.5}`` runs four trials at a time in two CPUs.  The stage's own
task (the Tune driver) takes no resources (``runs_ray_work``).  The grant is a ledger
grant (the scheduler booked the bundles on chosen nodes); Tune's trial actors are
started on it by a resource manager that holds exactly those bundles: a trial takes a
free booked bundle and its actor is pinned to that bundle's node (hard node
affinity), and gives it back when it ends.  So trials run only on the granted nodes,
never more of them on a node than bundles were booked there, and never more than
``gang_size`` at once.  Trials are plain actors (no placement group per trial), so
nothing outlives a killed stage task: its trial actors die with it.  (This plugs
into Tune's controller at the one place that creates its resource manager; if a
future Ray lacks that place, the stage falls back to one placement group per trial
with a node label selector over the granted nodes and says so in a warning: trials
then stay on the granted nodes and at most ``gang_size`` run at once, but their
spread over those nodes is Ray's.)

Resuming.  The sweep lives in the stage's checkpoint folder (the same for every
attempt of the stage in a run and for ``raypipe resume`` of it; another run of the
pipeline has its own), in a folder named by the grant's shape (bundles x resources;
a sweep restored with another shape would run with the old concurrency).  A new attempt finds it (``Tuner.can_restore``) and continues it with
``Tuner.restore(resume_errored=True)``: finished trials are not run again, trials
that were running continue from their last checkpoint, errored ones are retried.
The sweep's state is saved (and synced to storage) as soon as a trial ends, so a
finished trial is not run again, and every 2 s, so a running trial continues from a
checkpoint at most about 2 s older than its last.  (Tune alone saves every 10 s or
more, or on every trial checkpoint when ``keep_checkpoints`` is set, each save then
waiting for its sync.)  ASHA's rungs are not saved by Tune: after a restore it
starts filling them afresh.

Outputs.  ``best_config``: the full config of the best trial as JSON (built-in: the
training fields with the picked values, ready for a ``train`` stage; a function:
``params.config`` plus the picked values).  The best trial is the one with the best value of
``metric`` in any of its reports (trials that errored are not candidates).
``model``: that trial's best checkpoint (by ``metric``; with ``keep_checkpoints`` Tune
keeps that many best and the latest, else all) as a model package: a checkpoint folder that is
already a package (built-in models) keeps its metadata; any other folder is wrapped
with ``trained_by: {kind: tune, function, stage, run_id}``, ``params`` (the best
config), ``metrics`` and ``code``.  ``metrics``: what was reported with that
checkpoint.  ``trials``: a table, one row per trial: ``trial_id``, ``config/<param>``
per space parameter, ``status`` (TERMINATED or ERROR), ``iterations``,
``<metric>_last``, ``<metric>_best``, ``stopped_early`` (ASHA stopped it before
``max_t``) and ``error``.  A sweep whose every trial failed is a ``StageError`` naming
the first errors.  Progress: one line per finished trial in the stage's log.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from raypipe.config.tracking import TrackingConfig
from raypipe.exceptions import StageError
from raypipe.models import BUILTIN_MODULES, builtin
from raypipe.models.builtin import merge_trial_config
from raypipe.models.builtin_spec import BuiltinTraining, ModelSpec
from raypipe.stages import tracking
from raypipe.stages.base import CommitContext, StageContext, StageKind, StageParams, module_fingerprint
from raypipe.stages.data.common import as_dataset, data_session, is_table, select_model_columns
from raypipe.stages.python import FUNC_RE, function_fingerprint, import_check, import_function

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
#: Space kinds ``search: grid`` can enumerate.
ENUMERABLE = ("choice", "grid")


class Distribution(StageParams):
    """One parameter of the search space: exactly one of the keys."""

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    grid: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_valid_range(self) -> Distribution:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)}; got {', '.join(given) or 'none'}")
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{kind}: [lo, hi] must be finite; got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: lo must be > 0 (a log scale); got [{lo}, {hi}]")
            if lo >= hi:
                raise ValueError(f"{kind}: [lo, hi] needs lo < hi; got [{lo}, {hi}]")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)

    def domain(self, search: str) -> Any:
        """The Ray Tune domain (``search: grid`` enumerates ``choice`` values too)."""
        from ray import tune

        kind = self.kind
        if kind == "grid" or (kind == "choice" and search == "grid"):
            return tune.grid_search(list(getattr(self, kind)))
        if kind == "choice":
            return tune.choice(list(self.choice or []))
        lo, hi = getattr(self, kind)
        if kind == "uniform":
            return tune.uniform(lo, hi)
        if kind == "loguniform":
            return tune.loguniform(lo, hi)
        return tune.randint(lo, hi + 1)  # Tune's upper bound is exclusive


class AshaParams(StageParams):
    """ASHA in Tune's time unit ``training_iteration`` (one report = one step)."""

    max_t: Annotated[int, Field(ge=1)] = 100
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 4

    @model_validator(mode="after")
    def _grace_within_max(self) -> AshaParams:
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_t ({self.max_t})")
        return self


class SchedulerParams(StageParams):
    asha: AshaParams


class TuneParams(BuiltinTraining, StageParams):
    """Either ``function`` (a user trainable) or ``model`` (the built-in loop, with the
    training fields of :class:`~raypipe.models.builtin_spec.BuiltinTraining` as the base
    every trial's values override), plus the sweep's settings."""

    #: A Ray Tune function trainable ``fn(config, **datasets)``.
    function: Annotated[str | None, Field(pattern=FUNC_RE)] = None
    #: A built-in model (``{type: mlp|cnn, ...}``), trained by the built-in loop in every trial.
    model: ModelSpec | None = None  # type: ignore[assignment]
    #: For user trainables: fixed values in every trial's config.
    config: dict[str, Any] = Field(default_factory=dict)
    space: Annotated[dict[str, Distribution], Field(min_length=1)]
    search: Literal["random", "grid", "optuna"] = "random"
    #: Trials (random, optuna; default 10) or repeats of the whole grid (grid; default 1).
    num_samples: Annotated[int | None, Field(ge=1)] = None
    search_seed: int | None = 0
    metric: Annotated[str, Field(min_length=1)]
    mode: Literal["min", "max"]
    #: ``{asha: {...}}``, or ``none`` / null for no early stopping.
    scheduler: SchedulerParams | None = None
    #: Run the next trial in a finished trial's actor (no new process per trial).
    reuse_actors: bool = True
    #: Restarts of a failed trial from its last checkpoint.
    max_failures: Annotated[int, Field(ge=0)] = 0
    #: Checkpoints kept per trial, by ``metric`` (the latest is kept too); default all.
    #: Setting it makes Tune save the sweep's state on every trial checkpoint (slower).
    keep_checkpoints: Annotated[int | None, Field(ge=1)] = None
    #: Experiment tracking (MLflow, W&B): a run per trial; default: the pipeline's ``tracking``.
    tracking: TrackingConfig | None = None

    not_in_cache_key: ClassVar[frozenset[str]] = frozenset({"tracking"})

    @model_validator(mode="after")
    def _one_trainable(self) -> TuneParams:
        if (self.function is None) == (self.model is None):
            raise ValueError("give either `function` (your Tune trainable) or `model` (a built-in model), not both")
        if self.function is not None:
            fields = BuiltinTraining.model_fields
            builtin_only = sorted(
                f
                for f in (set(fields) - {"model"}) & self.model_fields_set
                if getattr(self, f) != fields[f].get_default(call_default_factory=True)
            )
            if builtin_only:
                raise ValueError(
                    f"{', '.join(builtin_only)}: only for built-in models (`model:`); put them in `config`"
                )
        elif self.config:
            raise ValueError("`config` is for user trainables (`function:`); built-in models take their fields")
        return self

    def builtin(self) -> BuiltinTraining:
        fields = set(BuiltinTraining.model_fields)
        return BuiltinTraining.model_validate({k: v for k, v in self.model_dump().items() if k in fields})

    @field_validator("scheduler", mode="before")
    @classmethod
    def _none_is_null(cls, v: Any) -> Any:
        return None if v == "none" else v

    @property
    def asha(self) -> AshaParams | None:
        return self.scheduler.asha if self.scheduler is not None else None

    @property
    def samples(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 10)


def optuna_missing() -> bool:
    return importlib.util.find_spec("optuna") is None


class TuneStage(StageKind):
    Params = TuneParams
    packages = ("ray", "torch", "numpy", "pandas", "pyarrow")
    runs_ray_work = True
    params: TuneParams

    def outputs(self) -> list[str]:
        return ["best_config", "model", "trials", "metrics"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        p = self.params
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if p.function is not None:
            problem = import_check(p.function)
            if problem:
                issues.append((("function",), problem))
        else:
            unknown = sorted(set(input_names) - {"train", "validation"})
            if "train" not in input_names or unknown:
                issues.append(
                    (
                        ("model",),
                        "built-in models take inputs `train` (a dataset) and optionally `validation`"
                        + (f"; unexpected: {', '.join(unknown)}" if unknown else ""),
                    )
                )
            issues += _check_builtin_space(p)
        for name in sorted(set(p.space) & set(p.config)):
            issues.append((("space", name), f"{name!r} is both searched (space) and fixed (config); remove one"))
        for name in sorted(set(input_names) & (set(p.config) | set(p.space))):
            where = "space" if name in p.space else "config"
            issues.append(((where, name), f"{name!r} is both an input and a {where} key; rename one"))
        for name, dist in p.space.items():
            if p.search == "grid" and dist.kind not in ENUMERABLE:
                issues.append(
                    (
                        ("space", name),
                        f"search: grid enumerates values, and {dist.kind} is a range; "
                        "give its values with grid: [...] or choice: [...], or use search: random",
                    )
                )
            if p.search == "optuna" and dist.kind == "grid":
                issues.append((("space", name), "search: optuna samples every parameter; use choice: [...] here"))
        if p.search == "optuna" and optuna_missing():
            issues.append((("search",), "search: optuna needs the 'optuna' package (pip install optuna)"))
        return issues + tracking.missing_packages(p.tracking)

    def after_success(self, commit: CommitContext) -> str | None:
        tracking.tag_model(
            self.params.tracking, commit.run_id, commit.stage, commit.outputs.get("model"), commit.cached
        )
        return None

    def fingerprint(self) -> str:
        code = module_fingerprint(__name__) + module_fingerprint(f"{__name__}_support")
        if self.params.function is not None:
            return code + function_fingerprint(self.params.function)
        return code + module_fingerprint(*BUILTIN_MODULES)

    def session(self, ctx: StageContext) -> Any:
        return data_session(ctx)  # reading dataset inputs stays inside the grant

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        p = self.params
        with tracking.tune_session(p.tracking):
            out = self._sweep(ctx, inputs)
            tracking.mark_best_trial(p.tracking, ctx, tracking.best_trial(out.get("trials"), p.metric, p.mode))
        return out

    def _sweep(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from raypipe.stages import tune_support as ts

        p = self.params
        if p.search == "optuna" and optuna_missing():
            raise StageError("search: optuna needs the 'optuna' package (pip install optuna)")
        tables = {name: value for name, value in inputs.items() if is_table(value)}
        sweep = ts.Sweep(ctx, p, function=p.function, code=self.code_fingerprint())
        sweep.callbacks = tracking.tune_callbacks(p.tracking, ctx)
        if p.function is not None:
            config = {**p.config, **{name: value for name, value in inputs.items() if name not in tables}}
            _check_accepts(import_function(p.function), p.function, sorted(tables))
            files = sweep.write_inputs(tables)
            return sweep.run(ts.function_trial(p.function, files), config, base=p.config)
        from raypipe.stages.data.profile import describe_training_data

        datasets = {name: as_dataset(value, f"input {name!r}") for name, value in tables.items()}
        if "train" not in datasets:
            raise StageError("built-in models take a dataset input `train`")
        data = describe_training_data(p.builtin(), datasets["train"], ctx)
        datasets = select_model_columns(datasets, builtin.model_columns(data))
        base = builtin.prepare(p.builtin(), datasets, data, {"trained_by": sweep.trained_by, "code": sweep.code})
        files = sweep.write_inputs(datasets)
        return sweep.run(ts.builtin_trial(base, files), {}, base=p.builtin().model_dump(mode="json"), dotted=True)


def _check_builtin_space(p: TuneParams) -> list[tuple[tuple[str | int, ...], str]]:
    """Each space parameter of a built-in model must name a training field (``epochs``,
    ``optimizer.lr``, ``model.hidden``), and its values (each choice, both ends of a
    range) must be valid there."""
    from pydantic import ValidationError

    issues: list[tuple[tuple[str | int, ...], str]] = []
    try:
        base = p.builtin().model_dump(mode="json")
    except ValidationError:
        return issues  # reported on the params themselves
    for name, dist in p.space.items():
        unknown = _unknown_field(base, name)
        if unknown:
            issues.append((("space", name), unknown))
            continue
        for value in getattr(dist, dist.kind):
            try:
                BuiltinTraining.model_validate(merge_trial_config(base, {name: value}))
            except (ValidationError, StageError) as e:
                msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
                issues.append((("space", name), f"value {value!r}: {msg}"))
                break
    return issues


def _unknown_field(base: dict[str, Any], name: str) -> str | None:
    """Why ``name`` (``epochs``, ``optimizer.lr``) is not a built-in training field, or None."""
    node: Any = base
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            there = ", ".join(sorted(node)) if isinstance(node, dict) else "a value, not a section"
            return f"{name!r} is not a built-in training field ({part!r}; there: {there})"
        node = node[part]
    return None


def _check_accepts(fn: Any, target: str, names: list[str]) -> None:
    """The trainable takes ``config`` and a keyword argument per dataset input."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    if any(q.kind is q.VAR_KEYWORD for q in sig.parameters.values()):
        return
    missing = [n for n in names if n not in sig.parameters]
    if missing:
        raise StageError(
            f"{target} has no parameter for the dataset input(s) {', '.join(map(repr, missing))}; "
            "a trainable is called as fn(config, <input name>=DataFrame, ...)"
        )
