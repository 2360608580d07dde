"""``data.transform``: a user function (or class) over a dataset with ``map_batches``.

``function: pkg.mod:fn`` is called as ``fn(batch, **args)`` in Ray Data tasks and
returns the new batch (same ``batch_format``: a pandas DataFrame, a dict of numpy
arrays, or a pyarrow Table).  A class (``pkg.mod:Cls``) is built once per actor as
``Cls(**args)`` and called on each batch: use it for state that is costly to set
up (a model, a tokenizer).  Each task or actor takes ``worker`` resources; how many
run at once is bounded by the stage's own ``resources`` (its grant).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from raypipe.exceptions import DataError
from raypipe.failures import is_system_failure
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data.common import DataStage, error_line, only_input, slots, store_dataset, task_cpus
from raypipe.stages.python import FUNC_RE, function_fingerprint, import_check, import_function


class WorkerResources(StageParams):
    """What one Ray Data task or actor of the transform takes (default: 1 CPU, or the
    stage's CPUs if fewer)."""

    cpu: Annotated[float, Field(gt=0)] | None = None
    gpu: Annotated[float, Field(ge=0)] = 0.0


class TransformParams(StageParams):
    function: Annotated[str, Field(pattern=FUNC_RE)]
    args: dict[str, Any] = Field(default_factory=dict)
    batch_format: Literal["pandas", "numpy", "pyarrow"] = "pandas"
    #: Rows per call; None: one call per block.
    batch_size: Annotated[int, Field(ge=1)] | None = None
    worker: WorkerResources = Field(default_factory=WorkerResources)
    #: Tasks (a function) or actors (a class) at once (default: as many as the stage's
    #: resources hold; never more).
    concurrency: Annotated[int, Field(ge=1)] | None = None


class TransformStage(DataStage):
    Params = TransformParams
    params: TransformParams

    def outputs(self) -> list[str]:
        return ["data"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        issues = super().check(input_names)
        problem = import_check(self.params.function)
        if problem:
            issues.append((("function",), problem))
        return issues

    def fingerprint(self) -> str:
        return super().fingerprint() + function_fingerprint(self.params.function)

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from ray.data import ActorPoolStrategy, TaskPoolStrategy

        _, ds = only_input(inputs)
        fn = import_function(self.params.function)
        w = self.params.worker
        budget = ctx.resources
        cpu = w.cpu if w.cpu is not None else task_cpus(ctx)
        if budget.cpu > 0 and cpu > budget.cpu + 1e-9:
            raise DataError(f"params.worker.cpu is {cpu:g} but the stage's resources.cpu is {budget.cpu:g}")
        if w.gpu > budget.gpu + 1e-9:
            raise DataError(f"params.worker.gpu is {w.gpu:g} but the stage's resources.gpu is {budget.gpu:g}")
        common: dict[str, Any] = {
            "batch_format": self.params.batch_format,
            "batch_size": self.params.batch_size,
            "num_cpus": cpu,
            "num_gpus": w.gpu or None,
        }
        bounds = [n for n in (self.params.concurrency, slots(ctx, cpu, w.gpu)) if n]
        size = min(bounds) if bounds else None  # never more than the grant holds
        if isinstance(fn, type):
            out = ds.map_batches(
                fn,
                fn_constructor_kwargs=self.params.args,
                compute=ActorPoolStrategy(min_size=1, max_size=size or 1),
                **common,
            )
        else:
            out = ds.map_batches(
                _guarded,
                fn_kwargs={"fn": fn, "args": self.params.args, "name": self.params.function},
                **common,
                compute=TaskPoolStrategy(size=size),
            )
        try:
            return {"data": store_dataset(ctx, out, f"the output of {self.params.function}")}
        except DataError:
            raise
        except Exception as e:
            path = ctx.detail(f"{self.params.function} failed; Ray Data said", str(e))
            if is_system_failure(e):  # a lost worker or node: another attempt may pass
                raise
            own = _own_error(e)
            raise DataError(
                own
                or f"{self.params.function} failed on a batch: {error_line(e)}"
                + (f" (the whole text: {path})" if path else "")
            ) from None


def _guarded(batch: Any, fn: Any, args: dict[str, Any], name: str) -> Any:
    """``fn(batch, **args)``; a KeyError for a column the batch does not have names the
    column and the batch's columns."""
    try:
        return fn(batch, **args)
    except KeyError as e:
        key = e.args[0] if len(e.args) == 1 else None
        cols = _columns(batch)
        if isinstance(key, str) and cols is not None and key not in cols:
            raise DataError(f"{name}: the batch has no column {key!r}; its columns: {', '.join(cols)}") from None
        raise


def _columns(batch: Any) -> list[str] | None:
    if isinstance(batch, dict):
        return [str(c) for c in batch]
    names = getattr(batch, "column_names", None)
    if names is None and hasattr(batch, "columns"):
        names = batch.columns
    return [str(c) for c in names] if names is not None else None


def _own_error(e: BaseException) -> str | None:
    """The message of a DataError raised in a task (a missing column), from Ray's text."""
    import re

    m = re.search(r"raypipe\.exceptions\.DataError: (.+)", str(e))
    return m.group(1) if m else None
