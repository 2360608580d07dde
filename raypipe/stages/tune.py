"""``tune`` stage kind: a hyperparameter sweep on Ray Tune, inside the scheduler's grant.

What a trial runs.  ``function: pkg.mod:trainable`` is a Ray Tune function trainable
``fn(config, **datasets)``: it trains, calls ``ray.tune.report(metrics,
checkpoint=...)`` (once per epoch, say) and, when restarted, continues from
``ray.tune.get_checkpoint()``.  A trial's ``config`` holds ``params.config``, the
stage's inputs that are not datasets (by input name, as in ``train``) and the values
the search picked for the ``space`` parameters.

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
its last checkpoint that many times.

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
attempt of the stage and for ``raypipe resume``), in a folder named by the grant's
shape (bundles x resources; a sweep restored with another shape would run with the
old concurrency).  A new attempt finds it (``Tuner.can_restore``) and continues it with
``Tuner.restore(resume_errored=True)``: finished trials are not run again, trials
that were running continue from their last checkpoint, errored ones are retried.
Tune saves the sweep's state whenever a trial checkpoints and at least every 10 s;
a trial that finished in the moments before a crash may run again.  ASHA's rungs are
not saved by Tune: after a restore it starts filling them afresh.

Outputs.  ``best_config``: the full config of the best trial (``params.config`` plus
the picked values) as JSON.  The best trial is the one with the best value of
``metric`` in any of its reports (trials that errored are not candidates).
``model``: that trial's best checkpoint (by ``metric``; Tune keeps the best
``keep_checkpoints`` and the latest) as a model package: a checkpoint folder that is
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
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from raypipe.exceptions import StageError
from raypipe.stages.base import StageContext, StageKind, StageParams, module_fingerprint
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


class TuneParams(StageParams):
    #: A Ray Tune function trainable ``fn(config, **datasets)``.
    function: Annotated[str, Field(pattern=FUNC_RE)]
    #: Fixed values in every trial's config.
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
        problem = import_check(p.function)
        if problem:
            issues.append((("function",), problem))
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
        return issues

    def fingerprint(self) -> str:
        return (
            module_fingerprint(__name__)
            + module_fingerprint(f"{__name__}_support")
            + function_fingerprint(self.params.function)
        )

    def session(self, ctx: StageContext) -> Any:
        from raypipe.stages.data.common import data_session

        return data_session(ctx)  # reading dataset inputs stays inside the grant

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from raypipe.stages import tune_support as ts
        from raypipe.stages.data.common import is_table

        p = self.params
        if p.search == "optuna" and optuna_missing():
            raise StageError("search: optuna needs the 'optuna' package (pip install optuna)")
        tables = {name: value for name, value in inputs.items() if is_table(value)}
        config = {**p.config, **{name: value for name, value in inputs.items() if name not in tables}}
        fn = import_function(p.function)
        _check_accepts(fn, p.function, sorted(tables))
        sweep = ts.Sweep(ctx, p, meta_function=p.function)
        files = sweep.write_inputs(tables)
        trainable = ts.function_trial(p.function, files)
        return sweep.run(trainable, config, fixed=p.config)


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
