"""Vendor KubeRay's CRD schemas into tests/data/kuberay/ (for tests/unit/test_kuberay_manifests.py).

    python tools/vendor_kuberay_crds.py KUBERAY_CHECKOUT REF

reads ``ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml`` at
``REF`` (a tag or commit of a git checkout of github.com/ray-project/kuberay) and writes,
per kind, ``<kind>.schema.json``: the ``openAPIV3Schema`` of the CRD's ``v1`` version.
Trimmed, never changed: every ``description`` of a schema node is dropped (the files
are 0.8-1.4 MB of mostly doc strings) and so is the top-level ``status`` (no manifest
writes one); every other keyword, type, enum, pattern, required list and
``x-kubernetes-*`` marker is KubeRay's.  ``SOURCE.json`` records the ref, the commit and
each file's git blob id; KubeRay's LICENSE (Apache-2.0) is copied beside them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "kuberay"
CRDS = {
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
    "RayService": "ray-operator/config/crd/bases/ray.io_rayservices.yaml",
}
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_ONE = ("items", "additionalProperties", "not")


def without_descriptions(schema: Any) -> Any:
    """The schema node with ``description`` dropped from it and every node below it
    (a *property* called ``description`` stays: only schema nodes are walked)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key in _SCHEMA_MAPS:
            out[key] = {name: without_descriptions(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [without_descriptions(sub) for sub in value]
        elif key in _SCHEMA_ONE:
            out[key] = without_descriptions(value)
        else:
            out[key] = value
    return out


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def main(repo: Path, ref: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    commit = _git(repo, "rev-parse", f"{ref}^{{commit}}").strip()
    source: dict[str, Any] = {"repository": "https://github.com/ray-project/kuberay", "ref": ref, "commit": commit}
    files: dict[str, Any] = {}
    for kind, path in CRDS.items():
        crd = yaml.safe_load(_git(repo, "show", f"{commit}:{path}"))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = without_descriptions(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        name = f"{kind.lower()}.schema.json"
        (OUT / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        files[name] = {
            "from": path,
            "git_blob": _git(repo, "rev-parse", f"{commit}:{path}").strip(),
            "kind": kind,
            "apiVersion": f"{crd['spec']['group']}/v1",
        }
    source["files"] = files
    (OUT / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    (OUT / "LICENSE").write_text(_git(repo, "show", f"{commit}:LICENSE"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
