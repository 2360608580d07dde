"""The contract every stage kind implements.

A stage kind is a class with a pydantic ``Params`` model (validated when the
pipeline is loaded, before Ray starts), a code ``fingerprint`` that goes into the
cache key, and ``run``, which executes inside the stage's Ray task.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from raypipe.config import StrictModel
from raypipe.resources import Resources
from raypipe.scheduler.client import job_state
from raypipe.store.logs import local_log_path


class StageParams(StrictModel):
    """Base of every kind's ``params`` model: unknown keys are errors.  Any value may hold a
    secret reference (``${env:NAME}``, ``${file:PATH}``): the task resolves them before the
    kind reads its params (:mod:`raypipe.secrets`)."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"*"})
    #: The task resolves the references before the kind reads its params; a kind that resolves
    #: its own where each value is used, keeping the references in what it stores, says False.
    resolve_references: ClassVar[bool] = True
    #: Params that do not change what the stage makes (``tracking``): left out of its cache key.
    not_in_cache_key: ClassVar[frozenset[str]] = frozenset()

    def cache_params(self) -> dict[str, Any]:
        """The params as they enter the stage's cache key."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.not_in_cache_key}


def stage_log_path(storage: str, run_id: str, stage: str, attempt: int) -> Path:
    """Where a stage attempt writes its console output, log records and the output of the Ray
    workers it started while it runs: ``<storage>/logs/<run>/<stage>/<attempt>.log`` on a local
    storage root, else in the worker's temporary folder, uploaded to the same place under the
    root when the attempt ends (:mod:`raypipe.store.logs`)."""
    return local_log_path(storage, run_id, stage, attempt)


@dataclass
class StageContext:
    """What a running stage can see of the run it belongs to."""

    run_id: str
    stage: str
    attempt: int
    resources: Resources
    storage: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: The scheduler's job holding this attempt's grant (None without a scheduler).
    job_id: str | None = None
    #: Where the stage keeps checkpoints (``checkpoints/<run>/<stage>/<key>``): the same for
    #: every attempt of the stage in this run (also across ``resume``), never shared with
    #: another run; a local path or a URI.
    checkpoint_dir: str | None = None
    #: The stored artifacts behind the inputs (name -> ``ArtifactRef``).
    input_refs: dict[str, Any] = field(default_factory=dict)
    #: Bundles in the stage's gang (``resources`` is one bundle).
    gang_size: int = 1
    #: The node of each granted bundle (a ledger grant), for work the stage launches.
    grant_nodes: list[str] | None = None
    _workdir: Path | None = field(default=None, repr=False)
    _checked: tuple[float, bool] = field(default=(float("-inf"), False), repr=False)

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"raypipe.stage.{self.stage}")

    @property
    def log_path(self) -> Path:
        """The stage attempt's log file (:func:`stage_log_path`)."""
        return stage_log_path(self.storage, self.run_id, self.stage, self.attempt)

    def detail(self, title: str, text: str) -> Path | None:
        """Append ``text`` (a library's whole message, a traceback) to the stage's log file
        instead of the console; the file, or None if it cannot be written."""
        path = self.log_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {title}\n{text.rstrip()}\n\n")
        except OSError:
            return None
        return path

    @property
    def workdir(self) -> Path:
        """A scratch directory of this attempt, made on first use and removed after the stage.
        Return a ``Path`` inside it to store a file as an output."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"raypipe-{self.stage}-"))
        return self._workdir

    def preemption_requested(self, every_s: float = 1.0) -> bool:
        """True once the scheduler has preempted this attempt: save a checkpoint and
        raise :class:`~raypipe.exceptions.StagePreempted`.  Asks the controller at
        most every ``every_s`` seconds, so it is cheap to call in a training loop."""
        now = time.monotonic()
        last, answer = self._checked
        if self.job_id is None or answer or now - last < every_s:
            return answer

        answer = job_state(self.job_id) == "preempting"
        self._checked = (now, answer)
        return answer

    def cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


@dataclass
class CommitContext:
    """What :meth:`StageKind.after_success` sees: the finished stage run and the stores."""

    meta: Any  # raypipe.store.metadata.MetadataStore
    artifacts: Any  # raypipe.store.artifacts.ArtifactStore
    run_id: str
    stage: str
    stage_run_id: int
    inputs: dict[str, Any]  # name -> ArtifactRef
    outputs: dict[str, Any]  # name -> ArtifactRef
    #: True when the stage run is a cache hit (its outputs are an earlier run's; for a
    #: ``resume``: it was one when first recorded), False when the stage ran in this run.
    cached: bool = False


class StageKind(ABC):
    """One kind of stage.  Subclasses set ``Params`` and implement :meth:`run`.

    ``__init__`` runs on the driver (planning) and again in the Ray task; it must be
    cheap and side-effect free.  :meth:`run` must be safe to retry: it gets the
    same inputs on every attempt and its outputs are stored by content.
    """

    Params: ClassVar[type[StageParams]] = StageParams
    #: Distributions whose versions go into the cache key.
    packages: ClassVar[tuple[str, ...]] = ()
    #: True for kinds whose work is done by Ray tasks they launch (Ray Data, Ray Train):
    #: the stage's own task then takes no resources and the grant is left to that work.
    runs_ray_work: ClassVar[bool] = False

    def __init__(self, params: StageParams) -> None:
        self.params = params

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        """Planning-time checks beyond the params schema: ``(loc under params, message)`` pairs."""
        return []

    def outputs(self) -> list[str] | None:
        """The outputs this kind always produces (checked against ``outputs:`` and
        downstream ``inputs:`` when planning), or None when it depends on the code."""
        return None

    def source_fingerprint(self) -> str | None:
        """For kinds that read files outside the artifact store: a fingerprint of those
        files (e.g. paths, sizes and modification times) that goes into the cache key,
        so a changed file makes the stage run again.  Computed on the driver."""
        return None

    def session(self, ctx: StageContext) -> AbstractContextManager[Any]:
        """Entered in the stage's task around loading inputs, :meth:`run` and storing
        outputs (e.g. to bound Ray Data by the stage's grant).  Default: nothing."""
        return nullcontext()

    def task_resources(self, resources: Resources, gang_size: int) -> Resources:
        """What the stage's own Ray task takes of its grant (a ``Resources``); the rest is
        left to the Ray work the stage starts.  Default: everything, or nothing for kinds
        that run their work as Ray tasks (:attr:`runs_ray_work`)."""
        return Resources() if self.runs_ray_work else resources

    def source_files(self) -> list[dict[str, Any]] | None:
        """For kinds that read files outside the artifact store: those files as
        ``{"path", "size", "mtime_ns"}`` (computed on the driver).  They are recorded as the
        stage run's ``source`` inputs, so lineage reaches the raw files."""
        return None

    def resolve_inputs(self, meta: Any) -> dict[str, Any]:
        """Inputs found on the driver when the stage is about to run, beside its declared
        ones (name -> ``ArtifactRef``; e.g. the registry's ``production`` model for a
        gate).  They enter the cache key and lineage like declared inputs.  ``meta`` is
        the run's :class:`~raypipe.store.metadata.MetadataStore`.  Default: none."""
        return {}

    def after_success(self, commit: CommitContext) -> str | None:
        """Runs on the driver after a stage run is recorded as done (succeeded, cached, or
        reused by ``resume``), in its own transaction(s): e.g. registering a model.  Must
        be idempotent: a crash between the two leaves it to run again on ``resume``.
        ``commit.cached`` tells a cache hit from a stage that ran (a ``resume`` gets the
        flag of the stage run it reuses).  Returns a short message for the run's progress
        output, or None."""
        return None

    def handles_preemption(self) -> bool:
        """Whether :meth:`run` watches ``ctx.preemption_requested()`` (and checkpoints):
        the runner then gives it ``preempt_grace_s`` to stop before cancelling it."""
        return False

    def fingerprint(self) -> str:
        """A hash of the code this stage runs.  Default: the kind's own module source."""
        return module_fingerprint(type(self).__module__)

    def code_fingerprint(self) -> str:
        """:meth:`fingerprint`, computed once per instance (one plan reads each file once)."""
        cached: str | None = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = self.fingerprint()
            self._fingerprint = cached
        return cached

    @abstractmethod
    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Do the work; return ``{output_name: value}`` (or ``None`` for no outputs)."""


def module_fingerprint(*modules: str) -> str:
    """SHA-256 of each module's source file (found without importing it), concatenated."""
    return "".join(_source_hash(m) for m in modules)


def _source_hash(module: str) -> str:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    if not origin or not Path(origin).is_file():
        return f"unknown:{module}"
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()


def progress(line: str) -> None:
    """A stage's progress line from the process it runs in (a Ray worker, a Train or Tune
    controller): its stdout, which Ray forwards to the driver's console with the process's
    prefix.  Library code that runs on the driver logs instead."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
