"""A serve spec resolved against the model registry: each variant pinned to a version and its
model artifact (on the driver, before anything is deployed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raypipe.exceptions import RaypipeError
from raypipe.serving.spec import ServeSpec, VariantSpec, ref_text
from raypipe.store.registry import ModelRegistry, ModelVersion


@dataclass(frozen=True)
class ResolvedVariant:
    """A variant pinned to one registered version and its stored model package."""

    label: str
    version: int
    ref: str  # as written in the spec: v3 or @production
    sha256: str
    uri: str
    size: int
    meta: dict[str, Any] = field(repr=False)
    spec: VariantSpec = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "version": self.version,
            "ref": self.ref,
            "sha256": self.sha256,
            "uri": self.uri,
            "size": self.size,
        }


def resolve(spec: ServeSpec, registry: ModelRegistry) -> list[ResolvedVariant]:
    """Each variant's version (aliases looked up now), in the spec's order."""
    return [from_version(v, registry.get(_registry_ref(spec.model, v.version))) for v in spec.variants]


def _registry_ref(model: str, version: int | str) -> str:
    ref = ref_text(version)
    return f"{model}{ref}" if ref.startswith("@") else f"{model}:{ref[1:]}"


def from_version(v: VariantSpec, mv: ModelVersion) -> ResolvedVariant:
    return ResolvedVariant(
        label=f"v{mv.version}",
        version=mv.version,
        ref=ref_text(v.version),
        sha256=mv.sha256,
        uri=mv.uri,
        size=mv.size,
        meta=dict(mv.model),
        spec=v,
    )


def check_distinct(resolved: Sequence[ResolvedVariant], model: str) -> None:
    seen: dict[str, str] = {}
    for r in resolved:
        if r.label in seen:
            raise RaypipeError(
                f"variants {seen[r.label]} and {r.ref} both resolve to {model} {r.label}; "
                "a split needs distinct versions (move an alias with `raypipe model alias`)"
            )
        seen[r.label] = r.ref


def shadow_label(spec: ServeSpec, resolved: Sequence[ResolvedVariant]) -> str | None:
    if spec.shadow is None:
        return None
    want = ref_text(spec.shadow.variant)
    for r in resolved:
        if want in (r.ref, r.label):
            return r.label
    raise RaypipeError(f"shadow: {spec.shadow.variant!r} is not one of the variants")
