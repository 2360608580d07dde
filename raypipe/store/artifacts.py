"""The artifact store: :class:`~raypipe.store.objects.ObjectStore` (content-addressed
objects on ``pyarrow.fs``) plus Ray Datasets, streamed into versioned folders of parquet
files (:mod:`raypipe.store.datasets`)."""

from __future__ import annotations

from typing import Any

from raypipe.store import datasets
from raypipe.store.objects import (
    ArtifactRef,
    ObjectStore,
    deserialize,
    is_local,
    resolve_root,
    root_of,
    serialize,
    sha256_file,
    source_refs,
)


class ArtifactStore(ObjectStore):
    """Every value a stage returns: objects, and datasets (a lazy Ray Dataset on read, never
    collected on the driver)."""

    def put_value(self, value: Any, *, allow_pickle: bool = False) -> ArtifactRef:
        if not isinstance(value, ArtifactRef) and datasets.is_ray_dataset(value):
            return datasets.write_dataset(self, value)
        return super().put_value(value, allow_pickle=allow_pickle)

    def exists(self, ref: ArtifactRef) -> bool:
        if ref.format == "dataset":
            return datasets.dataset_exists(self, ref)
        return super().exists(ref)

    def get_value(self, ref: ArtifactRef, *, allow_pickle: bool = False) -> Any:
        """The stored value, verified (:meth:`ObjectStore.get_value`); a dataset's files are
        verified as its read tasks read them (:func:`~raypipe.store.datasets.read_dataset`)."""
        if ref.format == "dataset":
            return datasets.read_dataset(self, ref)
        return super().get_value(ref, allow_pickle=allow_pickle)


__all__ = [
    "ArtifactRef",
    "ArtifactStore",
    "deserialize",
    "is_local",
    "resolve_root",
    "root_of",
    "serialize",
    "sha256_file",
    "source_refs",
]
