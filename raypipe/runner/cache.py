"""Cache keys: what a stage's outputs depend on, hashed.

key = sha256(stage kind, validated params, declared outputs, code fingerprint,
input artifact hashes, the keys of ``depends_on`` stages, versions of Python, raypipe and the kind's packages).
Resources, retries, timeouts, names of other stages, the run id and params a kind leaves
out (``not_in_cache_key``: ``tracking``) are left out: they change how a stage runs, not
what it produces.

A stage's checkpoints live under the storage root at :func:`checkpoint_dir`: scoped to the
run, so two runs with the same key (one pipeline run twice at once) never share a
folder, and keyed by the cache key, so a changed stage never continues a stale one.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from typing import Any

from raypipe.runner.plan import PlannedStage

CACHE_VERSION = 1


@lru_cache(maxsize=256)
def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(packages: tuple[str, ...]) -> dict[str, str | None]:
    env: dict[str, str | None] = {"python": ".".join(platform.python_version_tuple()[:2])}
    for dist in ("raypipe", *packages):
        env[dist] = package_version(dist)
    return env


def key_document(stage: PlannedStage, input_hashes: Mapping[str, str], after: Mapping[str, str]) -> dict[str, Any]:
    """What a stage's cache key hashes (:func:`hash_document`), kept with its stage runs so
    ``raypipe plan`` can say which part changed: ``kind``, ``params``, ``outputs``, ``code``
    (fingerprint), ``inputs`` (argument -> artifact sha256), ``after`` (``depends_on`` stage ->
    its cache key), ``sources`` (files read from outside the store) and ``env`` (versions)."""
    return {
        "v": CACHE_VERSION,
        "kind": stage.spec.kind,
        "params": stage.kind.params.cache_params(),
        "outputs": None if stage.outputs is None else list(stage.outputs),
        "code": stage.kind.code_fingerprint(),
        "inputs": dict(sorted(input_hashes.items())),
        "after": dict(sorted(after.items())),
        "sources": stage.kind.source_fingerprint(),
        "env": environment(type(stage.kind).packages),
    }


def hash_document(doc: Mapping[str, Any]) -> str:
    """The cache key of a :func:`key_document`."""
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_key(stage: PlannedStage, input_hashes: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``input_hashes``: argument -> artifact sha256; ``after``: ``depends_on`` stage -> its cache key."""
    return hash_document(key_document(stage, input_hashes, after))


def checkpoint_dir(run_id: str, stage: str, key: str) -> str:
    """``checkpoints/<run_id>/<stage>/<key[:24]>`` (relative to the storage root): the same for
    every attempt of the stage in the run (they run one after another, and a retry, a
    requeue after preemption or ``raypipe resume`` of the run continues from the last
    checkpoint), never shared with another run."""
    if run_id in (".", "..") or "/" in run_id or "/" in stage:
        raise ValueError(f"run {run_id!r}, stage {stage!r}: not usable as folder names")
    return f"checkpoints/{run_id}/{stage}/{key[:24]}"
