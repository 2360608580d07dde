"""Stage kinds by name, imported lazily.  Later kinds (data, train, tune, deploy...) add a row."""

from __future__ import annotations

import importlib

from raypipe.exceptions import ConfigError
from raypipe.stages.base import StageKind

#: (kind name, "module:Class") pairs; the only place a kind is registered.
STAGE_KINDS: tuple[tuple[str, str], ...] = (
    ("python", "raypipe.stages.python:PythonStage"),
    ("data.read", "raypipe.stages.data.read:ReadStage"),
    ("data.transform", "raypipe.stages.data.transform:TransformStage"),
    ("data.validate", "raypipe.stages.data.validate:ValidateStage"),
    ("data.split", "raypipe.stages.data.split:SplitStage"),
    ("data.profile", "raypipe.stages.data.profile:ProfileStage"),
    ("train", "raypipe.stages.train:TrainStage"),
    ("tune", "raypipe.stages.tune:TuneStage"),
    ("evaluate", "raypipe.stages.evaluate:EvaluateStage"),
    ("register", "raypipe.stages.register:RegisterStage"),
    ("deploy", "raypipe.stages.deploy:DeployStage"),
)


def stage_kind_names() -> list[str]:
    return [name for name, _ in STAGE_KINDS]


def get_stage_kind(name: str) -> type[StageKind]:
    """The class of stage kind ``name``; an unknown name lists the valid ones."""
    for kind, target in STAGE_KINDS:
        if kind == name:
            module, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            if not (isinstance(cls, type) and issubclass(cls, StageKind)):
                raise TypeError(f"{target} is not a StageKind")
            return cls
    raise ConfigError(f"unknown stage kind {name!r}; expected one of: {', '.join(stage_kind_names())}")
