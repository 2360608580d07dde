"""deploy/kuberay/ holds valid KubeRay resources (checked against KubeRay's own CRD schemas,
vendored in tests/data/kuberay/ with their licence and source), they run the image the
Dockerfile builds, their commands are raypipe commands on pipeline files the image holds, and
every environment reference they make is provided to the pods that resolve it."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from raypipe.secrets import references, resolve_secrets
from tests.conftest import REPO

ROOT = Path(REPO)
DEPLOY = ROOT / "deploy" / "kuberay"
SCHEMAS = ROOT / "tests" / "data" / "kuberay"
KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob", "RayService": "rayservice"}
#: Where the Dockerfile puts the project in the image (WORKDIR) and the Secrets the docs create.
IMAGE_HOME = "/home/ray/raypipe"
DOCUMENTED_SECRETS = {"raypipe-secrets": {"pg-password"}, "raypipe-ray-token": {"auth_token"}}


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected, as `kubectl apply` does (strict field
    validation): ``additionalProperties: false`` on every object node that lists its
    properties and neither allows more nor preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (strict(v) if k not in ("enum", "required", "default", "example") else v) for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"{KINDS[kind]}.schema.json").read_text())
    return jsonschema.Draft7Validator(strict(schema))


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in manifests() if d["kind"] == kind]


def errors(doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator(doc["kind"]).iter_errors(doc)
    ]


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M))


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group, pod spec) of a RayCluster's groups, or of a RayJob's submitter."""
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        return [("head", spec["headGroupSpec"]["template"]["spec"])] + [
            (g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]
        ]
    return [("submitter", doc["spec"]["submitterPodTemplate"]["spec"])]


def test_the_vendored_schemas_say_where_they_come_from() -> None:
    source = json.loads((SCHEMAS / "SOURCE.json").read_text())
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert {f["kind"] for f in source["files"].values()} == set(KINDS)
    assert "Apache License" in (SCHEMAS / "LICENSE").read_text()[:200]
    for kind in KINDS:
        schema = json.loads((SCHEMAS / f"{KINDS[kind]}.schema.json").read_text())
        assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}


def test_every_manifest_is_valid_against_its_kuberay_crd() -> None:
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"RayCluster", "RayJob", "ConfigMap"} <= kinds
    for name, doc in docs:
        if doc["kind"] in KINDS:
            assert doc["apiVersion"] == "ray.io/v1", name
            assert errors(doc) == [], name
        else:
            assert doc["apiVersion"] == "v1" and doc["kind"] == "ConfigMap", name


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "workerGroupSpecs", 0, "minReplica"), 1),  # a misspelt field
        (("spec", "workerGroupSpecs", 0, "maxReplicas"), "eight"),  # a wrong type
        (("spec", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limits", "memory"), "16 GB"),
        (("spec", "authOptions", "mode"), "password"),  # not in the enum
    ],
)
def test_the_schema_check_rejects_a_broken_raycluster(path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(of_kind("RayCluster")[0])
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert errors(doc), path


def test_the_manifests_run_the_image_the_dockerfile_builds() -> None:
    import ray

    args = dockerfile_args()
    ray_version = args["RAY_VERSION"]
    assert ray_version.split(".")[:2] == ray.__version__.split(".")[:2], (
        "the image's Ray is the one raypipe is tested on"
    )
    assert re.search(
        r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-\$\{VARIANT\}$", (ROOT / "Dockerfile").read_text(), re.M
    )
    assert args["VARIANT"] == "cpu"
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "ray"  # Ray's non-root user (uid 1000)
    assert f"WORKDIR {IMAGE_HOME}" in text and "COPY --chown=ray:users configs ./configs" in text
    image = f"ghcr.io/raypipe/raypipe:{project_version()}-ray{ray_version}"
    cluster = of_kind("RayCluster")[0]
    assert cluster["spec"]["rayVersion"] == ray_version
    groups = dict(pod_templates(cluster))
    assert set(groups) == {"head", "cpu", "gpu"}
    for group, pod in groups.items():
        (container,) = pod["containers"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert container["image"] == (image + "-gpu" if gpus else image), group
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert groups["gpu"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for job in of_kind("RayJob"):
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        assert submitter["image"] == image


def test_the_jobs_run_raypipe_on_pipeline_files_the_image_holds() -> None:
    from raypipe.api.pipelines import load

    cluster = of_kind("RayCluster")[0]["metadata"]["name"]
    jobs = of_kind("RayJob")
    assert jobs
    for job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster}
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[:2] == ["raypipe", "run"], argv
        path = Path(argv[2])
        assert path.is_relative_to(IMAGE_HOME) and (ROOT / path.relative_to(IMAGE_HOME)).is_file(), path
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        overrides = [s.replace("$RAYPIPE_STORAGE", "s3://bucket/raypipe") for s in sets]
        load(str(ROOT / path.relative_to(IMAGE_HOME)), overrides)  # raises on anything `raypipe run` refuses


def _shell_words(command: str, env: dict[str, str]) -> list[str]:
    """The words bash makes of ``command`` with the environment ``env``."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {command}"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def _pod_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def test_the_storage_root_reaches_the_driver_through_both_shells() -> None:
    """KubeRay's submitter runs ``ray job submit ... -- ENTRYPOINT`` in bash; ``ray job
    submit`` sends ``shlex.join`` of the words it got, which Ray's job supervisor runs in a
    shell on the head: the driver must see the ConfigMap's storage root."""
    config_maps = {c["metadata"]["name"]: c["data"] for c in of_kind("ConfigMap")}
    (container,) = pod_templates(of_kind("RayCluster")[0])[0][1]["containers"]
    head = _pod_env(container, config_maps)
    for job in of_kind("RayJob"):
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        words = _shell_words(job["spec"]["entrypoint"], _pod_env(submitter, config_maps))
        driver_argv = _shell_words(shlex.join(words), head)
        assert driver_argv[:2] == ["raypipe", "run"]
        assert f"storage={config_maps['raypipe-platform']['RAYPIPE_STORAGE']}" in driver_argv, driver_argv


def test_every_environment_reference_is_provided_where_it_is_resolved() -> None:
    (config_map,) = of_kind("ConfigMap")
    data = config_map["data"]
    assert data["RAYPIPE_STORAGE"].startswith("s3://")
    needed = {r[len("${env:") : -1] for value in data.values() for r in references(value)}
    assert needed == {"RAYPIPE_PG_PASSWORD"}, "the metadata store's password is a reference, never a value"
    url = resolve_secrets(data["RAYPIPE_DB"], "RAYPIPE_DB", {"RAYPIPE_PG_PASSWORD": "pw"})
    assert url.startswith("postgresql://raypipe:pw@")
    cluster = of_kind("RayCluster")[0]
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": "raypipe-ray-token"}
    for group, pod in pod_templates(cluster):
        (container,) = pod["containers"]
        assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"], group
        env = {e["name"]: e for e in container["env"]}
        for name in needed:  # RAYPIPE_DB's reference is resolved in every pod that opens the store
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref["key"] in DOCUMENTED_SECRETS[ref["name"]], (group, name)
    for job in of_kind("RayJob"):
        variables = set(re.findall(r"\$(\w+)", job["spec"]["entrypoint"]))
        assert variables and variables <= set(data), variables
        (submitter,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
        env = {e["name"]: e for e in submitter["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "raypipe-ray-token", "key": "auth_token"}
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for secret, keys in DOCUMENTED_SECRETS.items():
        assert all(f"create secret generic {secret} --from-literal={k}=" in docs for k in keys), secret
