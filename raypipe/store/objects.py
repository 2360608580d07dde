"""Content-addressed artifact store on ``pyarrow.fs``: local paths and object-store URIs alike.

Layout under the root::

    objects/<sha[:2]>/<sha>.<ext>    immutable, named by the SHA-256 of their bytes
    tmp/<uuid>                       in-flight uploads, moved into place when complete

A value is serialized to a local temporary file, hashed, then uploaded and moved
into ``objects/`` in one step, so a reader never sees a half-written object and a
crash leaves at most an orphan in ``tmp/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from raypipe.exceptions import StorageError
from raypipe.store.models import ModelPackage

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactRef:
    """What the metadata store records of one stored object."""

    uri: str
    sha256: str
    size: int
    format: str
    schema: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArtifactRef:
        return cls(**d)


def source_refs(files: list[dict[str, Any]]) -> dict[str, ArtifactRef]:
    """Files a stage read from outside the store (``{"path", "size", "mtime_ns"}``) as
    ``source`` artifacts named ``source:0``, ``source:1``...: recorded as the stage run's
    inputs, so lineage ends at the raw files.  Identified by path, size and mtime."""
    out = {}
    for i, f in enumerate(files):
        ident = f"source\0{f['path']}\0{f['size']}\0{f['mtime_ns']}"
        digest = hashlib.sha256(ident.encode()).hexdigest()
        schema = {"mtime_ns": int(f["mtime_ns"])}
        out[f"source:{i}"] = ArtifactRef(
            uri=str(f["path"]), sha256=digest, size=int(f["size"]), format="source", schema=schema
        )
    return out


def resolve_root(storage: str, base: str | os.PathLike[str] | None = None) -> str:
    """An absolute local path or a URI.  Relative paths resolve against ``base`` (or cwd)."""
    if "://" in storage and not storage.startswith("file://"):
        return storage.rstrip("/")
    path = storage[len("file://") :] if storage.startswith("file://") else storage
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base or os.getcwd()) / p
    return str(p.resolve())


def root_of(uri: str) -> str:
    """The storage root an artifact URI lives under (``<root>/objects/...`` or ``<root>/datasets/...``)."""
    for part in ("/objects/", "/datasets/"):
        if part in uri:
            return uri[: uri.rindex(part)]
    raise StorageError(f"{uri!r} is not an artifact URI")


def is_local(root: str) -> bool:
    return "://" not in root


# ----------------------------------------------------------------------------- formats
# One entry per format: (name, extension, can_write(value), write(value, path) -> schema, read(path)).


def _is_pandas(v: Any) -> bool:
    return type(v).__module__.startswith("pandas") and type(v).__name__ == "DataFrame"


def _is_arrow_table(v: Any) -> bool:
    return type(v).__module__.startswith("pyarrow") and type(v).__name__ == "Table"


def _is_numpy(v: Any) -> bool:
    return type(v).__module__ == "numpy" and type(v).__name__ == "ndarray"


def _is_torch(v: Any, depth: int = 0) -> bool:
    """A torch object, or a dict/list holding one (a state dict, a checkpoint)."""
    if type(v).__module__.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(v).__mro__):
        return True
    if depth < 3 and isinstance(v, dict):
        return any(_is_torch(x, depth + 1) for x in v.values())
    if depth < 3 and isinstance(v, (list, tuple)):
        return any(_is_torch(x, depth + 1) for x in v)
    return False


def _json_ok(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_ok(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_ok(x) for k, x in v.items())
    return False


def _arrow_schema(schema: Any) -> dict[str, Any]:
    return {"columns": {f.name: str(f.type) for f in schema if not f.name.startswith("__index_level")}}


def _write_parquet(value: Any, path: str) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = value if _is_arrow_table(value) else pa.Table.from_pandas(value, preserve_index=False)
    pq.write_table(table, path)
    return {**_arrow_schema(table.schema), "num_rows": table.num_rows}


def _read_parquet(path: str, fmt_detail: str) -> Any:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table if fmt_detail == "arrow" else table.to_pandas()


def _write_npy(value: Any, path: str) -> dict[str, Any]:
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, value, allow_pickle=False)
    return {"dtype": str(value.dtype), "shape": list(value.shape)}


def _read_npy(path: str) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def _write_json(value: Any, path: str) -> dict[str, Any]:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True, separators=(",", ":"))
    return {"type": type(value).__name__}


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_torch(value: Any, path: str) -> dict[str, Any]:
    import torch

    torch.save(value, path)
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}"}


def _read_torch(path: str) -> Any:
    import torch

    return torch.load(path, weights_only=False, map_location="cpu")


def _write_pickle(value: Any, path: str) -> dict[str, Any]:
    import cloudpickle

    with open(path, "wb") as f:
        cloudpickle.dump(value, f)
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}"}


def _read_pickle(path: str) -> Any:
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


def _write_file(value: Any, path: str) -> dict[str, Any]:
    src = Path(value)
    if not src.is_file():
        raise ValueError(f"returned path {str(src)!r} is not a file")
    shutil.copyfile(src, path)
    return {"name": src.name}


def serialize(value: Any, path: str) -> tuple[str, str, dict[str, Any]]:
    """Write ``value`` to local ``path``; return (format, extension, schema)."""

    if isinstance(value, ModelPackage):  # the schema is the model's metadata
        return "model", "tar", value.write_tar(path)
    if isinstance(value, Path):
        return "file", Path(value).suffix.lstrip(".") or "bin", _write_file(value, path)
    if _is_pandas(value):
        return "parquet", "parquet", _write_parquet(value, path)
    if _is_arrow_table(value):
        return "parquet-arrow", "parquet", _write_parquet(value, path)
    if _is_numpy(value) and value.dtype != object:
        return "npy", "npy", _write_npy(value, path)
    if isinstance(value, (bytes, bytearray)):
        with open(path, "wb") as f:
            f.write(value)
        return "bytes", "bin", {"length": len(value)}
    if _json_ok(value):
        return "json", "json", _write_json(value, path)
    if _is_torch(value):
        return "torch", "pt", _write_torch(value, path)
    return "pickle", "pkl", _write_pickle(value, path)


def deserialize(fmt: str, path: str) -> Any:
    """Read a local file written by :func:`serialize` back into a value."""
    if fmt == "parquet":
        return _read_parquet(path, "pandas")
    if fmt == "parquet-arrow":
        return _read_parquet(path, "arrow")
    if fmt == "npy":
        return _read_npy(path)
    if fmt == "json":
        return _read_json(path)
    if fmt == "bytes":
        return Path(path).read_bytes()
    if fmt == "torch":
        return _read_torch(path)
    if fmt == "pickle":
        return _read_pickle(path)
    if fmt == "file":
        return Path(path)
    if fmt == "model":
        return ModelPackage.read_tar(path)
    raise StorageError(f"unknown artifact format {fmt!r}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the store


class ObjectStore:
    """Immutable objects named by content under one root (a path or a ``pyarrow.fs`` URI); Ray
    Datasets are :class:`~raypipe.store.artifacts.ArtifactStore`'s, above this."""

    def __init__(self, root: str) -> None:
        self.root = root
        try:
            if is_local(root):
                self.fs: pafs.FileSystem = pafs.LocalFileSystem()
                self._base = root
            else:
                self.fs, self._base = pafs.FileSystem.from_uri(root)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
            raise StorageError(f"storage {root!r}: cannot open: {e}") from None
        self._cache_dir: str | None = None

    # -- paths
    def _path(self, rel: str) -> str:
        return f"{self._base.rstrip('/')}/{rel}"

    def uri_of(self, rel: str) -> str:
        return self._path(rel) if is_local(self.root) else f"{self.root}/{rel}"

    def _rel_of(self, uri: str) -> str:
        prefix = (self._base if is_local(self.root) else self.root).rstrip("/") + "/"
        if not uri.startswith(prefix):
            raise StorageError(f"artifact {uri!r} is not under the storage root {self.root!r}")
        return uri[len(prefix) :]

    def check_writable(self) -> None:
        """Fail early, with the reason, when the root cannot be written."""
        probe = self._path(f"tmp/.probe-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self._path("tmp"), recursive=True)
            with self.fs.open_output_stream(probe) as f:
                f.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"storage {self.root!r} is not writable: {e}") from None

    # -- write
    def put_value(self, value: Any) -> ArtifactRef:
        """Serialize, hash and store ``value``; return its reference (an ``ArtifactRef``
        already in the store is returned as it is)."""
        if isinstance(value, ArtifactRef):  # already stored (e.g. a dataset passed through unchanged)
            if not self.exists(value):
                raise StorageError(f"artifact {value.uri!r} is not in the store {self.root!r}")
            return value
        fd, local = tempfile.mkstemp(prefix="raypipe-")
        os.close(fd)
        try:
            try:
                fmt, ext, schema = serialize(value, local)
            except OSError as e:  # the local disk (or the process's file size limit) is full
                raise StorageError(f"cannot serialize a {type(value).__name__} to store it: {e}") from None
            return self.put_file(local, fmt, ext, schema)
        finally:
            if os.path.exists(local):
                os.unlink(local)

    def put_file(self, local: str, fmt: str, ext: str, schema: dict[str, Any] | None = None) -> ArtifactRef:
        digest = sha256_file(local)
        size = os.path.getsize(local)
        rel = f"objects/{digest[:2]}/{digest}.{ext}"
        final = self._path(rel)
        tmp = None
        try:
            if self.fs.get_file_info(final).type != pafs.FileType.File:
                tmp = self._path(f"tmp/{uuid.uuid4().hex}")
                self.fs.create_dir(self._path("tmp"), recursive=True)
                self.fs.create_dir(self._path(f"objects/{digest[:2]}"), recursive=True)
                with open(local, "rb") as src, self.fs.open_output_stream(tmp) as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                self.fs.move(tmp, final)
        except OSError as e:
            if tmp is not None:  # a half-written upload never stays behind
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
            raise StorageError(f"storage {self.root!r}: cannot write artifact: {e}") from None
        return ArtifactRef(uri=self.uri_of(rel), sha256=digest, size=size, format=fmt, schema=schema)

    # -- read
    def exists(self, ref: ArtifactRef) -> bool:
        try:
            info = self.fs.get_file_info(self._path(self._rel_of(ref.uri)))
        except (OSError, StorageError):
            return False
        return info.type == pafs.FileType.File and info.size == ref.size

    def rebased(self, ref: ArtifactRef) -> ArtifactRef:
        """``ref`` as found in this store: as recorded, or, when it was recorded under another
        root that no longer holds it (a project moved or copied to another folder), the same
        object at the same place under this root (objects and datasets are named by their
        content, so the place is the same).  ``ref`` itself when neither exists."""
        if self.exists(ref):
            return ref
        try:
            rel = ref.uri[len(root_of(ref.uri)) + 1 :]
        except StorageError:
            return ref
        moved = replace(ref, uri=self.uri_of(rel))
        return moved if moved.uri != ref.uri and self.exists(moved) else ref

    def local_path(self, ref: ArtifactRef) -> str:
        """A local file holding the object (the object itself for local roots)."""
        path = self._path(self._rel_of(ref.uri))
        if is_local(self.root):
            return path
        if self._cache_dir is None:
            self._cache_dir = tempfile.mkdtemp(prefix="raypipe-cache-")
        local = os.path.join(self._cache_dir, os.path.basename(path))
        if not os.path.exists(local):
            with self.fs.open_input_stream(path) as src, open(local + ".part", "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
            os.replace(local + ".part", local)
        return local

    def get_value(self, ref: ArtifactRef) -> Any:
        """The stored value."""
        return deserialize(ref.format, self.local_path(ref))

    def read_bytes(self, ref: ArtifactRef) -> bytes:
        with self.fs.open_input_stream(self._path(self._rel_of(ref.uri))) as f:
            return f.read()


__all__ = ["ArtifactRef", "ObjectStore", "deserialize", "is_local", "resolve_root", "root_of", "serialize"]
