"""Connecting to Ray: the runner's only place that calls ``ray.init``."""

from __future__ import annotations

import logging
import os
from typing import Any

from raypipe.config import RayConfig
from raypipe.exceptions import RaypipeError


def ensure_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Reuse a connected Ray, else connect to ``address`` (flag, config, RAY_ADDRESS) or start one."""
    import ray

    if ray.is_initialized():
        return
    addr = address or cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "log_to_driver": True,
    }
    if cfg.runtime_env:
        kwargs["runtime_env"] = cfg.runtime_env
    if addr:
        kwargs["address"] = addr
    else:
        # Always a fresh embedded Ray: never silently join a cluster left running on this machine.
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise RaypipeError(f"cannot connect to Ray at {addr!r}: {e}") from None


def connect_existing(address: str | None) -> None:
    """Join a running cluster (flag, $RAY_ADDRESS, or the one `ray start` left on this machine)."""
    import ray

    if ray.is_initialized():
        return
    addr = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RaypipeError(f"no Ray cluster to ask at {addr!r}: {e}") from None
