"""raypipe: system-aware ML pipelines inside a Ray cluster."""

from raypipe.api import (
    ModelDetail,
    list_models,
    list_runs,
    load,
    read_artifact,
    resume,
    run,
    set_model_alias,
    show_model,
    show_run,
    validate,
)
from raypipe.config import PipelineConfig, ResourcesConfig, RetryConfig, StageConfig
from raypipe.exceptions import (
    ConfigError,
    DataError,
    ModelNotFoundError,
    RaypipeError,
    RunNotFoundError,
    StageError,
    StagePreempted,
    StorageError,
)
from raypipe.resources import Resources
from raypipe.runner.executor import RunResult
from raypipe.stages.base import StageContext
from raypipe.store.registry import ModelVersion

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ModelDetail",
    "ModelNotFoundError",
    "ModelVersion",
    "PipelineConfig",
    "RaypipeError",
    "Resources",
    "ResourcesConfig",
    "RetryConfig",
    "RunNotFoundError",
    "RunResult",
    "StageConfig",
    "StageContext",
    "StageError",
    "StagePreempted",
    "StorageError",
    "__version__",
    "list_models",
    "list_runs",
    "load",
    "read_artifact",
    "resume",
    "run",
    "set_model_alias",
    "show_model",
    "show_run",
    "validate",
]
