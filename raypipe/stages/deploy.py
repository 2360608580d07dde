"""``deploy``: serve registered versions of a model on Ray Serve with a traffic split.

Params are the fields of :class:`raypipe.serving.spec.ServeSpec` (``app``, ``model``,
``variants`` with ``version`` (N, vN or @ALIAS) and ``weight``, ``key``, ``shadow``,
``route_prefix``, ``port``...).  The stage takes no inputs: it serves versions of the
registry's ``model``, so put it after the ``register`` stage (``depends_on:
[register]``) to serve what the run just registered, or on its own
(``configs/serve_digits.yaml``).

How it runs:

- On the driver, just before the stage runs (``resolve_inputs``), each variant's
  reference is resolved in the registry and its model artifact becomes an input named
  ``v<N>`` or ``v<N>@alias`` (so the versions served are in the stage's lineage).
- The stage's task deploys (:func:`raypipe.serving.app.deploy_resolved`): it books the
  replicas' resources with the scheduler (a reservation that outlives the run), applies
  the Serve app and waits until it serves.  Output ``deployment``: the app's status.
- A deploy stage is never a cache hit: deploying is a side effect, and deploying the
  same spec again changes nothing in Serve.  Give it ``resources: {cpu: 0}``: its
  replicas' resources are reserved separately, for as long as the app runs.

Serving outlives the run only on a cluster that does (``ray: {address: auto}`` after
``ray start --head``); an embedded local Ray stops when the run ends.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from raypipe.exceptions import StageError
from raypipe.serving.app import deploy_resolved
from raypipe.serving.resolve import ResolvedVariant, check_distinct, resolve
from raypipe.serving.spec import ServeSpec, ref_text
from raypipe.stages.base import CommitContext, StageContext, StageKind, StageParams
from raypipe.store.models import is_model_package
from raypipe.store.registry import ModelRegistry


class DeployParams(StageParams, ServeSpec):
    """The :class:`ServeSpec` of the app to deploy.  Secret references only where a serve spec
    takes them (``auth`` tokens, ``force_variant.token``, ``secret``); they are resolved when
    the app is deployed (in the stage's task), and the app keeps the references."""

    reference_fields: ClassVar[frozenset[str]] = frozenset({"secret"})
    resolve_references: ClassVar[bool] = False


class DeployStage(StageKind):
    Params = DeployParams
    params: DeployParams
    packages = ("ray",)

    def outputs(self) -> list[str]:
        return ["deployment"]

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        if input_names:
            return [
                (
                    (),
                    f"a deploy stage takes no inputs (got {', '.join(input_names)}); it serves registered versions "
                    "of `model`: run it after the register stage with depends_on: [register]",
                )
            ]
        return []

    def source_fingerprint(self) -> str | None:
        return f"deploy-always-runs:{uuid.uuid4().hex}"  # never a cache hit

    def resolve_inputs(self, meta: Any) -> dict[str, Any]:
        resolved = resolve(self.params, ModelRegistry(meta))
        check_distinct(resolved, self.params.model)
        return {r.label + (r.ref if r.ref.startswith("@") else ""): meta.artifact(r.sha256) for r in resolved}

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        for value in inputs.values():  # unpacked by the runner; the replicas load their own copy
            if is_model_package(value) and value.root.name.startswith("raypipe-model-"):
                shutil.rmtree(value.root, ignore_errors=True)
        by_ref = {ref_text(v.version): v for v in self.params.variants}
        resolved, aliases = [], {}
        for name, ref in ctx.input_refs.items():
            label, _, alias = name.partition("@")
            spec = by_ref.get(f"@{alias}" if alias else label)
            if spec is None or ref.format != "model":
                raise StageError(f"input {name!r} is not one of the variants of this deploy stage")
            if alias:
                aliases[alias] = label
            resolved.append(
                ResolvedVariant(
                    label=label,
                    version=int(label[1:]),
                    ref=ref_text(spec.version),
                    sha256=ref.sha256,
                    uri=ref.uri,
                    size=ref.size,
                    meta=dict(ref.schema or {}),
                    spec=spec,
                )
            )
        hint = ""
        if not ctx.resources.is_zero():
            hint = (
                f"; this deploy stage itself holds {ctx.resources} while it waits: "
                "give it resources: {cpu: 0} (its replicas are reserved separately)"
            )
        status = deploy_resolved(self.params, resolved, aliases=aliases, hint=hint)
        return {"deployment": status.to_dict()}

    def after_success(self, commit: CommitContext) -> str | None:
        """On the driver: where the app serves.  Its drift monitor and closed loop are
        started by the loop layer's hook (:func:`raypipe.loop.arming.after_deploy_stage`)."""
        ref = commit.outputs.get("deployment")
        if ref is None:
            return None
        doc = commit.artifacts.get_value(ref)
        split = ", ".join(f"{k} {w:g}%" for k, w in (doc.get("weights") or {}).items())
        mode = f", {doc['mode']}" if doc.get("mode") else ""
        return f"serving {doc.get('app')} at {doc.get('url')} ({split}{mode})"

    def serve_spec(self) -> ServeSpec:
        """The app's spec as :mod:`raypipe.serving` takes it (the stage's params without its own fields)."""
        return ServeSpec.model_validate(self.params.model_dump(include=set(ServeSpec.model_fields)))


__all__ = ["DeployParams", "DeployStage"]
