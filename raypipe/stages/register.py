"""``register``: add a model artifact to the model registry as a new version.

Inputs: ``model`` (a model artifact, e.g. a ``train`` stage's ``model``), an
optional ``metrics`` (a JSON dict, e.g. an evaluate stage's output; default: the
metrics stored in the model) and an optional ``profile`` (a ``data.profile`` output
of the training data: recorded as the version's ``reference_profile`` link, the
reference its drift monitor compares live traffic with).  Params: ``name``,
``aliases`` (default ``[candidate]``), ``aliases_if_unset`` (e.g. ``[production]``:
set only while the alias points nowhere, so the first version becomes production
and later ones wait for a rollout) and ``description``.

The stage's task only checks its inputs and outputs ``registration``
(``{"name", "model_sha256", "aliases"}``).  The registration itself is written on
the driver by :meth:`RegisterStage.after_success`, after the stage run is recorded:
the registry lives in the metadata store, which only the driver writes, and a
cache hit or a ``resume`` runs it again harmlessly (the same artifact under the
same name is the same version).

Aliases move only when the stage ran in this run: a cache hit reports the version
(registering it if it is missing) and leaves every alias where it is, so re-running
an old config from the cache never moves ``candidate`` back to an old version.  A
``resume`` of a run whose register stage ran completes that stage run's moves if they
were not committed yet (they are recorded with the stage run, see
:class:`~raypipe.store.registry.RegisteredBy`), and moves nothing if they were.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from raypipe.exceptions import StageError
from raypipe.stages.base import CommitContext, StageContext, StageKind, StageParams
from raypipe.store.models import is_model_package
from raypipe.store.registry import NAME_RE, ModelRegistry, RegisteredBy

INPUTS = ("model", "metrics", "profile")


class RegisterParams(StageParams):
    #: The model's name in the registry.
    name: Annotated[str, Field(pattern=NAME_RE)]
    #: Aliases pointed at the registered version (moved from older versions).
    aliases: list[Annotated[str, Field(pattern=NAME_RE)]] = Field(default_factory=lambda: ["candidate"])
    #: Aliases pointed at the registered version only if they point at no version yet.
    aliases_if_unset: list[Annotated[str, Field(pattern=NAME_RE)]] = Field(default_factory=list)
    description: str = ""


class RegisterStage(StageKind):
    Params = RegisterParams
    params: RegisterParams

    def outputs(self) -> list[str]:
        return ["registration"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if "model" not in input_names:
            issues.append(((), "needs an input named 'model' (a model artifact, e.g. inputs: {model: train.model})"))
        extra = sorted(set(input_names) - set(INPUTS))
        if extra:
            issues.append(
                ((), f"unknown inputs {extra}; a register stage takes 'model' and optionally 'metrics' and 'profile'")
            )
        return issues

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        ref = ctx.input_refs.get("model")
        model = inputs.get("model")
        if not is_model_package(model) or (ref is not None and ref.format != "model"):
            fmt = ref.format if ref is not None else type(model).__name__
            raise StageError(
                f"input 'model' is a {fmt} artifact, not a model; give a stage output that is a "
                "raypipe ModelPackage (a train/tune stage's `model`, or a python stage returning ModelPackage.create(...))"
            )
        if model.root.name.startswith("raypipe-model-"):  # unpacked for this check only
            shutil.rmtree(model.root, ignore_errors=True)
        metrics = inputs.get("metrics")
        if "metrics" in inputs and not (isinstance(metrics, Mapping) and all(isinstance(k, str) for k in metrics)):
            raise StageError(f"input 'metrics' must be a JSON dict of metrics; got {type(metrics).__name__}")
        profile = inputs.get("profile")
        if "profile" in inputs and not (isinstance(profile, Mapping) and isinstance(profile.get("columns"), Mapping)):
            raise StageError(
                "input 'profile' must be a data.profile output (a JSON dict with 'columns'); "
                f"got {type(profile).__name__}"
            )
        return {
            "registration": {
                "name": self.params.name,
                "model_sha256": ref.sha256 if ref is not None else None,
                "aliases": list(self.params.aliases),
            }
        }

    def after_success(self, commit: CommitContext) -> str | None:
        """Register the model (driver side) and, if this run produced the version (a new version,
        or a model this run trained: not cache hits), move its aliases, once per stage run.
        Idempotent: a second call finds the version and moves nothing."""
        model_ref = commit.inputs["model"]
        metrics = None
        if "metrics" in commit.inputs:
            value = commit.artifacts.get_value(commit.inputs["metrics"])
            metrics = dict(value) if isinstance(value, Mapping) else None
        reg = ModelRegistry(commit.meta)
        producer = reg.producer_of(model_ref.sha256, commit.run_id)
        # The model was made by this run (its training stage ran here, not a cache hit), or it is
        # registered for the first time: then this run produced the version and moves its
        # aliases.  A re-run of an old config whose register stage runs again only because
        # something downstream of training changed (e.g. `beat`'s production model) moves none.
        made_here = producer is not None and producer["run_id"] == commit.run_id and producer["status"] == "succeeded"
        known = reg.version_of(self.params.name, model_ref.sha256) is not None
        mv = reg.register(
            self.params.name,
            model_ref,
            run_id=producer["run_id"] if producer is not None else commit.run_id,
            stage=producer["stage"] if producer is not None else None,
            stage_run_id=producer["id"] if producer is not None else None,
            metrics=metrics,
            aliases=self.params.aliases,
            description=self.params.description,
            reason=f"stage {commit.stage} of run {commit.run_id} (stage run #{commit.stage_run_id})",
            aliases_if_unset=self.params.aliases_if_unset,
            move_aliases=not commit.cached and (made_here or not known),
            by=RegisteredBy(commit.run_id, commit.stage, commit.stage_run_id),
        )
        profile = commit.inputs.get("profile")
        if profile is not None:
            reg.link(mv.name, mv.version, "reference_profile", {"sha256": profile.sha256, "uri": profile.uri})
        return registration_note(mv.name, mv.version, mv.is_new, self._wanted(), reg.aliases(mv.name))

    def _wanted(self) -> list[str]:
        """The aliases this stage points at its version (when it runs), in order."""
        return list(dict.fromkeys([*self.params.aliases, *self.params.aliases_if_unset]))


def registration_note(name: str, version: int, is_new: bool, wanted: list[str], now: Mapping[str, int]) -> str:
    """``registered digits v2 @candidate``; the aliases of ``wanted`` that point elsewhere
    are listed as unchanged: ``already registered: digits v1 (aliases unchanged: candidate -> v2)``."""
    at = "".join(f" @{a}" for a in wanted if now.get(a) == version)
    other = [f"{a} -> v{now[a]}" if a in now else f"{a} -> none" for a in wanted if now.get(a) != version]
    rest = f" (aliases unchanged: {', '.join(other)})" if other else ""
    return f"{'registered' if is_new else 'already registered:'} {name} v{version}{at}{rest}"
