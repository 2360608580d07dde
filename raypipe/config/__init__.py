"""Pipeline configuration: pydantic models, YAML loading with line numbers, ``--set`` overrides.

Every model forbids unknown keys.  Errors are collected and raised as one
:class:`~raypipe.exceptions.ConfigError` whose lines read
``configs/x.yaml:14 stages[2].resources.gpu: got -1; expected a number >= 0``.
Cross-stage checks (dependencies, cycles, stage kinds) live in ``raypipe.runner.plan``
and report through the same :class:`ConfigSource`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from raypipe.config.errors import Loc, format_loc
from raypipe.config.notify import NOTIFY_EVENTS, NotifySink
from raypipe.config.schema import (
    AutoscalerConfig,
    NodeTypeConfig,
    NonNegative,
    PipelineConfig,
    RayConfig,
    ResourcesConfig,
    RetryConfig,
    SchedulerConfig,
    StageConfig,
    StrictModel,
    TeamConfig,
    read_cluster_config,
    validation_issues,
)
from raypipe.config.source import MAX_EXPANDED, ConfigSource, apply_overrides, parse_override_path, parse_yaml
from raypipe.exceptions import ConfigError

__all__ = [
    "MAX_EXPANDED",
    "AutoscalerConfig",
    "ConfigSource",
    "Loc",
    "NodeTypeConfig",
    "NOTIFY_EVENTS",
    "NonNegative",
    "NotifySink",
    "PipelineConfig",
    "RayConfig",
    "ResourcesConfig",
    "RetryConfig",
    "SchedulerConfig",
    "StageConfig",
    "StrictModel",
    "TeamConfig",
    "apply_overrides",
    "format_loc",
    "parse_config",
    "parse_override_path",
    "parse_yaml",
    "read_cluster_config",
    "read_config",
    "validation_issues",
]


def parse_config(data: Any, source: ConfigSource) -> PipelineConfig:
    """Validate a mapping into a :class:`PipelineConfig` (schema only, no graph checks)."""
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise source.error(validation_issues(e)) from None


def read_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[PipelineConfig, ConfigSource]:
    """Read and schema-validate one YAML file."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise ConfigError(f"{shown}: no such file")
    if p.is_dir():
        raise ConfigError(f"{shown}: is a directory; expected a pipeline YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{shown}: cannot read: {e}") from None
    data, source = parse_yaml(text, shown)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_config(data, source), source
