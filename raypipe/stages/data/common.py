"""What the data kinds share: Ray Data bounded by the stage's grant, dataset inputs,
and small per-block results gathered from a pass over a dataset.

A data stage's task takes no resources itself (``runs_ray_work``); its grant is
handed to Ray Data as ``resource_limits`` and as a cap on each map's tasks at once
(:func:`task_args`), and Ray Data's tasks are kept on the granted nodes through a
node label selector.  So a data stage next to a training
gang never takes the gang's CPUs or GPUs, and never waits for resources that its
own grant does not hold (the hang of ray-project/ray #41603 / #24304).  Data
stages always get ledger grants (``runs_ray_work``), also with ``gang_size`` > 1:
their bundles' nodes bound where Ray Data runs.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from raypipe.exceptions import DataError
from raypipe.scheduler.backend import NODE_ID_LABEL
from raypipe.stages.base import StageContext, StageKind, module_fingerprint
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.datasets import DATASET_FORMAT, arrow_schema_of, dataset_schema, is_ray_dataset


class DataStage(StageKind):
    """Base of the ``data.*`` kinds."""

    runs_ray_work = True
    packages = ("ray", "pyarrow", "pandas", "numpy")
    #: How many dataset inputs the kind takes (``data.read`` takes none).
    n_inputs: ClassVar[int] = 1
    #: Modules besides its own (and this one) whose code the kind runs: in its fingerprint.
    code_modules: ClassVar[tuple[str, ...]] = ()

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        if len(input_names) != self.n_inputs:
            want = "no inputs" if self.n_inputs == 0 else f"{self.n_inputs} input (a dataset)"
            return [((), f"takes {want}; got {len(input_names)}: {', '.join(input_names) or 'none'}")]
        return []

    def fingerprint(self) -> str:
        return module_fingerprint(type(self).__module__, __name__, *self.code_modules)

    def session(self, ctx: StageContext) -> Any:
        return data_session(ctx)


@contextmanager
def data_session(ctx: StageContext) -> Iterator[None]:
    """Bound every Ray Data dataset made inside by the stage's grant (see the module doc)."""
    from ray.data import DataContext, ExecutionResources

    dctx = DataContext.get_current()
    saved_opts, saved_bars, saved_print = (
        dctx.execution_options,
        dctx.enable_progress_bars,
        dctx.print_on_execution_start,
    )
    opts = saved_opts.__class__(
        resource_limits=ExecutionResources.for_limits(
            cpu=ctx.resources.cpu * ctx.gang_size if ctx.resources.cpu > 0 else None,
            gpu=ctx.resources.gpu * ctx.gang_size,
        ),
        preserve_order=saved_opts.preserve_order,
    )
    nodes = sorted(set(ctx.grant_nodes or []))
    if nodes:  # a ledger grant: keep every task and actor on the granted nodes
        opts.label_selector = {NODE_ID_LABEL: nodes[0] if len(nodes) == 1 else f"in({','.join(nodes)})"}
    dctx.execution_options = opts
    dctx.enable_progress_bars = dctx.print_on_execution_start = False
    # Per-operator reservations halve the tasks a fused read->map->write runs at once
    # under a small grant; resource_limits already bound the stage.
    saved_reserve, dctx.op_resource_reservation_enabled = dctx.op_resource_reservation_enabled, False
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.WARNING)  # the stage's own events are the progress people see
    try:
        yield
    finally:
        dctx.execution_options, dctx.enable_progress_bars = saved_opts, saved_bars
        dctx.print_on_execution_start, dctx.op_resource_reservation_enabled = saved_print, saved_reserve
        data_log.setLevel(level)


def task_cpus(ctx: StageContext) -> float:
    """CPUs per Ray Data task: one, or the whole grant when it is smaller."""
    return min(1.0, ctx.resources.cpu) if ctx.resources.cpu > 0 else 1.0


def slots(ctx: StageContext, cpu: float, gpu: float = 0.0) -> int | None:
    """How many workers of ``cpu`` and ``gpu`` the stage's whole grant holds at once
    (None: the grant bounds neither)."""
    fits = []
    if ctx.resources.cpu > 0 and cpu > 0:
        fits.append(ctx.resources.cpu * ctx.gang_size / cpu)
    if gpu > 0:
        fits.append(ctx.resources.gpu * ctx.gang_size / gpu)
    return max(1, math.floor(min(fits) + 1e-9)) if fits else None


def task_args(ctx: StageContext) -> dict[str, Any]:
    """``map_batches`` arguments for Ray Data tasks inside the grant: their CPUs and a
    hard cap on how many run at once.  ``resource_limits`` alone does not bound them:
    with a 2-CPU limit, a map ran 6 tasks at once on a 6-CPU node (Ray 2.60)."""
    from ray.data import TaskPoolStrategy

    cpu = task_cpus(ctx)
    return {"num_cpus": cpu, "compute": TaskPoolStrategy(size=slots(ctx, cpu))}


_ERROR_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception|Invalid|Failure)): (.+)$", re.MULTILINE
)
_WRAPPERS = ("RayTaskError", "UserCodeException", "RaySystemError", "RayError")


def exception_chain(e: BaseException, limit: int = 20) -> list[BaseException]:
    """``e`` and the exceptions behind it (Ray's ``.cause``, ``__cause__``, ``__context__``),
    depth first, at most ``limit``."""
    out: list[BaseException] = []
    todo = [e]
    while todo and len(out) < limit:
        x = todo.pop()
        out.append(x)
        todo += [c for c in (getattr(x, "cause", None), x.__cause__, x.__context__) if isinstance(c, BaseException)]
    return out


def error_line(e: BaseException) -> str:
    """The line that says what went wrong, out of an exception from Ray Data (Ray wraps a
    task's error in its own types and retry advice): ``Type: message`` of the first error
    in the text that is not one of Ray's wrappers."""
    parts = [f"{type(x).__name__}: {x}" for x in exception_chain(e)]
    for m in _ERROR_LINE.finditer("\n".join(parts)):
        name, msg = m.group(1), m.group(2).strip()
        if not name.startswith(_WRAPPERS) and not msg.startswith(("To change retry", "Failed to apply UDF")):
            return f"{name}: {msg}"
    text = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {text[0] if text else ''}"


def is_table(value: Any) -> bool:
    """A Ray Dataset, a pandas DataFrame or an Arrow table."""

    t = type(value)
    return is_ray_dataset(value) or (
        t.__module__.split(".")[0] in ("pandas", "pyarrow") and t.__name__ in ("DataFrame", "Table")
    )


def as_dataset(value: Any, what: str) -> Any:
    """A Ray Dataset from a dataset input (or a stored DataFrame / Arrow table)."""
    import pyarrow as pa
    import ray.data

    if is_ray_dataset(value):
        return value
    if not is_table(value):
        t = type(value)
        raise DataError(
            f"{what}: expected a dataset (from a data stage) or a DataFrame, got {t.__module__}.{t.__name__}"
        )
    table = value if isinstance(value, pa.Table) else pa.Table.from_pandas(value, preserve_index=False)
    return ray.data.from_arrow(table)


def only_input(inputs: Mapping[str, Any]) -> tuple[str, Any]:
    ((name, value),) = inputs.items()
    return name, as_dataset(value, f"input {name!r}")


def input_schema(ctx: StageContext, name: str, ds: Any) -> Any:
    """The Arrow schema of a dataset input: from its manifest when it is stored (no
    data read), else from Ray Data."""

    ref = ctx.input_refs.get(name)
    if ref is not None and ref.format == DATASET_FORMAT:
        return dataset_schema(ArtifactStore(ctx.storage), ref)
    return arrow_schema_of(ds)


def select_model_columns(datasets: Mapping[str, Any], columns: list[str]) -> dict[str, Any]:
    """Each dataset with only ``columns`` (a model's features and label), in that order,
    so nothing else reaches the training workers; a dataset without one of them is an
    error naming it."""

    out = {}
    for name, ds in datasets.items():
        have = set(arrow_schema_of(ds).names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"input {name!r} has no column {', '.join(map(repr, missing))} (the model reads it)")
        out[name] = ds.select_columns(columns)
    return out


def store_dataset(ctx: StageContext, ds: Any, what: str, *, allow_empty: bool = False) -> Any:
    """Write ``ds`` to the artifact store now (inside the stage's Ray Data bounds); its
    ``ArtifactRef``.  An empty dataset is an error naming ``what`` unless allowed."""

    ref = ArtifactStore(ctx.storage).put_value(ds)
    if not allow_empty and not (ref.schema or {}).get("num_rows"):
        raise DataError(f"empty dataset: {what} has no rows")
    return ref


def _gather_batch(batch: Any, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    import pyarrow as pa

    return pa.table({"blob": pa.array([pickle.dumps(fn(batch, **kwargs))], pa.binary())})


def gather(
    ds: Any, fn: Callable[..., Any], ctx: StageContext | None, *, batch_format: str = "pandas", **kwargs: Any
) -> list[Any]:
    """``fn(batch, **kwargs)`` on every block of ``ds`` (in Ray Data tasks, inside the
    stage's grant; ``ctx`` None: outside a stage, unbounded); the results, which must be
    small (counts, hashes, partial statistics), come back as a list."""
    out = ds.map_batches(
        _gather_batch,
        fn_kwargs={"fn": fn, "kwargs": kwargs},
        batch_format=batch_format,
        batch_size=None,
        **(task_args(ctx) if ctx is not None else {}),
    ).take_all()
    return [pickle.loads(row["blob"]) for row in out]
