"""Cache keys: what a stage's outputs depend on, hashed.

key = sha256(stage kind, validated params, declared outputs, code fingerprint,
input artifact hashes, the keys of ``depends_on`` stages, versions of Python, raypipe and the kind's packages).
Resources, retries, timeouts, names of other stages and the run id are left out:
they change how a stage runs, not what it produces.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata

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


def cache_key(stage: PlannedStage, input_hashes: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``input_hashes``: argument -> artifact sha256; ``after``: ``depends_on`` stage -> its cache key."""
    doc = {
        "v": CACHE_VERSION,
        "kind": stage.spec.kind,
        "params": stage.kind.params.model_dump(mode="json"),
        "outputs": stage.outputs,
        "code": stage.kind.code_fingerprint(),
        "inputs": dict(sorted(input_hashes.items())),
        "after": dict(sorted(after.items())),
        "sources": stage.kind.source_fingerprint(),
        "env": environment(type(stage.kind).packages),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
