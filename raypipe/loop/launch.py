"""What the closed loop keeps and passes on (pure, no Ray), with nothing secret in it: its
configuration in Ray's KV, the retraining pipeline's YAML, and the retraining driver's command
line and environment.

The metadata store's URL is kept as written when it holds no password or only references
(``postgresql://ml:${env:PG_PASSWORD}@host/db``: the controller and its drivers resolve them
in their own environment).  A password written as it is stays out of the KV config, the YAML
and every command line (``postgresql://ml:***@host/db`` there): the controller actor gets the
URL in its environment (``$RAYPIPE_DB``, :func:`raypipe.secrets.actor_env`), and each
retraining driver in its own (:func:`runner_env`), which ``python -m raypipe.runner`` reads
before the pipeline's ``metadata``."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from raypipe.loop.cut import redacted_pipeline
from raypipe.secrets import DB_ENV, redact
from raypipe.serving.spec import ServeSpec


def loop_config(
    spec: ServeSpec, pipeline: Mapping[str, Any], *, db: str, storage: str, workdir: str, actor: str | None = None
) -> dict[str, Any]:
    """The loop's configuration as Ray's KV keeps it (JSON values): the serve spec, the
    pipeline it retrains with, the metadata store, the working directory, the loop's folder
    and who armed it (its retraining runs and rollouts act for them); a password written as it
    is redacted out of the store's URL and the pipeline's."""
    config = {
        "spec": spec.model_dump(mode="json"),
        "pipeline": redacted_pipeline(pipeline),
        "db": redact(db),
        "workdir": os.path.abspath(workdir),
        "loopdir": os.path.join(storage, "loops", spec.app),
        "actor": actor,
    }
    out: dict[str, Any] = json.loads(json.dumps(config, default=str))
    return out


def _for(actor: str | None) -> list[str]:
    return ["--on-behalf-of", actor] if actor else []


def run_args(pipeline_file: str, run_id: str, actor: str | None = None) -> list[str]:
    """The runner's arguments for a retraining run, acting for ``actor`` (who armed the loop)."""
    return ["run", pipeline_file, "--run-id", run_id, *_for(actor)]


def resume_args(run_id: str, actor: str | None = None) -> list[str]:
    """The runner's arguments to resume a run (its store: ``$RAYPIPE_DB``, :func:`runner_env`)."""
    return ["resume", run_id, *_for(actor)]


def runner_command(python: str, args: Sequence[str], address: str) -> list[str]:
    """The command line of a retraining driver: no database URL, no secret."""
    return [python, "-m", "raypipe.runner", *args, "--address", address]


def runner_env(environ: Mapping[str, str], *, address: str, db: str) -> dict[str, str]:
    """A retraining driver's environment: the controller's, plus the cluster's address and the
    metadata store (references in it resolve in this same environment)."""
    return {**environ, "RAY_ADDRESS": address, DB_ENV: db}


def start_driver(
    python: str, args: Sequence[str], *, address: str, db: str, cwd: str, log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a run's driver (``python -m raypipe.runner ARGS``) joined to the cluster at ``address``,
    the metadata store ``db`` in its environment, in its own session (SIGTERM stops it alone),
    its output appended to ``log_path``: the closed loop's retraining runs and the schedules'
    runs start here."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            runner_command(python, args, address),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=runner_env(os.environ, address=address, db=db),
            start_new_session=True,
        )


def retraining_yaml(doc: Mapping[str, Any], *, app: str, cycle_id: str, drift: Mapping[str, Any]) -> str:
    """The retraining run's pipeline file (``<storage>/loops/<app>/<cycle>.yaml``)."""
    header = (
        f"# The retraining run of cycle {cycle_id} of app {app} (raypipe's closed loop),\n"
        f"# triggered by drift event {drift.get('monitor_event_id')} on {drift.get('variant')}: "
        f"{', '.join(drift.get('drifted_features') or []) or drift.get('kind')}\n"
    )
    return header + yaml.safe_dump(redacted_pipeline(doc), sort_keys=False)
