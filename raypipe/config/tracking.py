"""``tracking:`` of train and tune stages (or a pipeline's, for all of them): MLflow and W&B
runs logged by :mod:`raypipe.stages.tracking`.  Each value may hold a secret reference,
resolved in the stage's task like every stage param.  Not part of a stage's cache key:
turning tracking on does not train again."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from raypipe.config.strict import StrictModel

#: The stage kinds that take ``tracking:`` (a pipeline's ``tracking:`` goes to these).
TRACKED_KINDS = frozenset({"train", "tune"})


class MlflowTracking(StrictModel):
    """An MLflow run per training (``train``; each attempt its own) or per trial (``tune``),
    with the params, every report's metrics with its step, the raypipe run id, stage and
    attempt as tags, and the final model's URI (``raypipe.model_uri``)."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"*"})

    #: Where MLflow records: ``http(s)://`` a tracking server, ``databricks``, ``sqlite:///...``,
    #: or ``file:///path`` (a file store; raypipe allows MLflow's file backend for it).
    #: Default: MLflow's (``$MLFLOW_TRACKING_URI``).  On a multi-node cluster, a server or
    #: a path every node shares.
    tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    #: The experiment's name (created when missing).
    experiment: Annotated[str, Field(min_length=1)]


class WandbTracking(StrictModel):
    """A W&B run per training (``train``) or per trial (``tune``), with the params as its
    config, every report's metrics, and the raypipe run id and stage as tags and group."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"*"})

    project: Annotated[str, Field(min_length=1)]
    #: ``offline``: written under ``dir`` for ``wandb sync`` later (no account, no network);
    #: ``online``: needs ``WANDB_API_KEY`` (or ``wandb login``) where the stage runs.
    mode: Literal["online", "offline"] = "online"
    entity: str | None = None
    #: Where W&B writes its files (default: W&B's, ``./wandb`` of the stage's process).
    dir: str | None = None


class TrackingConfig(StrictModel):
    """``{mlflow: {...}}``, ``{wandb: {...}}`` or both.  Needs the extra of each:
    ``pip install 'raypipe[mlflow]'`` / ``'raypipe[wandb]'``."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"*"})

    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None

    @model_validator(mode="after")
    def _one_at_least(self) -> TrackingConfig:
        if self.mlflow is None and self.wandb is None:
            raise ValueError("give `mlflow: {...}`, `wandb: {...}` or both (or leave `tracking` out)")
        return self


def with_pipeline_tracking(kind: str, params: dict[str, Any], tracking: TrackingConfig | None) -> dict[str, Any]:
    """A stage's params with the pipeline's ``tracking`` when it is a tracked kind that sets none."""
    if tracking is None or kind not in TRACKED_KINDS or "tracking" in params:
        return params
    return {**params, "tracking": tracking.model_dump(mode="json", exclude_none=True)}
