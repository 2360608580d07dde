"""Content-addressed artifact store on ``pyarrow.fs``: local paths and object-store URIs alike.

Layout under the root::

    objects/<sha[:2]>/<sha>.<ext>    immutable, named by the SHA-256 of their bytes
    tmp/<token>                      in-flight uploads, moved into place when complete
    claims/objects-<sha>.<ext>.claim the writer of an object (raypipe.store.claims)

A value is serialized to a local temporary file, hashed, then uploaded and moved
into ``objects/`` in one step, so a reader never sees a half-written object and a
crash leaves at most an orphan in ``tmp/``.  The upload happens under the object's
claim: a second writer of the same object waits for the first and reuses its object.

Reads are verified: :meth:`ObjectStore.local_path` and :meth:`ObjectStore.get_value`
hash the object's bytes (:mod:`raypipe.store.integrity`: once per process while the
file is unchanged) and refuse bytes that do not match ``ref.sha256``; :meth:`ObjectStore.exists`
checks the hash too, so a tampered or corrupted object is a cache miss.

Pickle is opt-in (``allow_pickle``: a stage's ``pickle: true``): a value of a type
the store has no format for is refused rather than pickled, and a pickle artifact (or a
torch file that is not weights-only) is read only with the same opt-in, after its hash
verified.  Torch files are loaded with ``weights_only=True`` otherwise.
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

from raypipe.exceptions import PickleRefused, StorageError
from raypipe.store import claims, integrity
from raypipe.store.integrity import sha256_file
from raypipe.store.models import ModelPackage

_CHUNK = integrity.CHUNK
#: How to opt in to pickle, in the errors that refuse it.
PICKLE_OPT_IN = (
    "set `pickle: true` on the stage (on the stage that returns it and on every stage that reads it; "
    "in Python: raypipe.read_artifact(..., allow_pickle=True)); unpickling runs code from the file, "
    "so only opt in for artifacts you trust"
)


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


def _is_numpy_number(v: Any) -> bool:
    """A numpy bool, integer or float scalar (``np.int64(3)``, e.g. a ``.sum()``): stored as JSON."""
    return type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0 and getattr(v.dtype, "kind", "") in "biuf"


def _json_ok(v: Any) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)) or _is_numpy_number(v):
        return True
    if isinstance(v, (list, tuple)):
        return all(_json_ok(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_ok(x) for k, x in v.items())
    return False


def _not_json(v: Any, where: str = "") -> str:
    """Where in a dict or list the first value that is not JSON is, and its type (for errors)."""
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else None
    if items is None:
        return f"{where or 'the value'} is a {_type_name(v)}"
    for k, x in items:
        if isinstance(v, dict) and not isinstance(k, str):
            return f"{where or 'the dict'} has a key of type {_type_name(k)}"
        if not _json_ok(x):
            return _not_json(x, f"{where}[{k!r}]")
    return f"{where or 'the value'} is a {_type_name(v)}"


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


def _plain_number(v: Any) -> Any:
    if _is_numpy_number(v):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _write_json(value: Any, path: str) -> dict[str, Any]:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True, separators=(",", ":"), default=_plain_number)
    return {"type": type(value).__name__}


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _write_torch(value: Any, path: str, allow_pickle: bool) -> dict[str, Any]:
    """``torch.save``; a value that ``torch.load(weights_only=True)`` cannot read back (a whole
    ``nn.Module``, an object of another class inside) needs the pickle opt-in."""
    import torch

    torch.save(value, path)
    unsafe = _unsafe_globals(path)
    if unsafe and not allow_pickle:
        raise PickleRefused(
            f"cannot store a {_type_name(value)} as torch weights: loading it needs pickle "
            f"(it holds {', '.join(sorted(unsafe)[:3])}); store its state_dict() instead, or {PICKLE_OPT_IN}"
        )
    return {"type": _type_name(value), **({"weights_only": False} if unsafe else {})}


def _unsafe_globals(path: str) -> list[str]:
    """What in a torch file ``weights_only=True`` refuses: read from its pickle without
    loading it (torch >= 2.5), else by loading it weights-only."""
    import pickle

    import torch

    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        return list(scan(path))
    try:
        torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        return [(str(e).strip().splitlines() or [type(e).__name__])[0][:200]]
    return []


def _read_torch(path: str, allow_pickle: bool, uri: str) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PickleRefused(
                f"artifact {uri!r} is a torch file that only loads with pickle ({first[:200]}); "
                f"refused: {PICKLE_OPT_IN}"
            ) from None
    return torch.load(path, weights_only=False, map_location="cpu")


def _write_pickle(value: Any, path: str) -> dict[str, Any]:
    import cloudpickle

    with open(path, "wb") as f:
        cloudpickle.dump(value, f)
    return {"type": _type_name(value)}


def _read_pickle(path: str, allow_pickle: bool, uri: str) -> Any:
    import pickle

    if not allow_pickle:
        raise PickleRefused(f"artifact {uri!r} is a pickle; reading it is refused: {PICKLE_OPT_IN}")
    with open(path, "rb") as f:
        return pickle.load(f)


def _write_file(value: Any, path: str) -> dict[str, Any]:
    src = Path(value)
    if not src.is_file():
        raise ValueError(f"returned path {str(src)!r} is not a file")
    shutil.copyfile(src, path)
    return {"name": src.name}


def serialize(value: Any, path: str, *, allow_pickle: bool = False) -> tuple[str, str, dict[str, Any]]:
    """Write ``value`` to local ``path``; return (format, extension, schema).  A value of no
    known format is pickled only with ``allow_pickle``, else refused (a StorageError naming
    its type and the opt-in)."""

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
        return "torch", "pt", _write_torch(value, path, allow_pickle)
    if not allow_pickle:
        inner = f" ({_not_json(value)})" if isinstance(value, (dict, list, tuple)) else ""
        raise PickleRefused(
            f"cannot store a {_type_name(value)}{inner}: raypipe stores DataFrames, Arrow tables, numpy arrays, "
            "bytes, JSON values (dicts with string keys, lists, numbers, strings, bools, None), torch "
            "tensors and state dicts, model packages, files (a pathlib.Path) and Ray Datasets; convert it "
            f"to one of these, or to store it with pickle {PICKLE_OPT_IN}"
        )
    return "pickle", "pkl", _write_pickle(value, path)


def deserialize(fmt: str, path: str, *, allow_pickle: bool = False, uri: str = "") -> Any:
    """Read a local file written by :func:`serialize` back into a value (``uri``: the
    artifact's, for errors).  Pickles, and torch files that are not weights-only, are read
    only with ``allow_pickle``; the caller verifies the file's hash first."""
    uri = uri or path
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
        return _read_torch(path, allow_pickle, uri)
    if fmt == "pickle":
        return _read_pickle(path, allow_pickle, uri)
    if fmt == "file":
        return Path(path)
    if fmt == "model":
        return ModelPackage.read_tar(path)
    raise StorageError(f"unknown artifact format {fmt!r}")


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
    def put_value(self, value: Any, *, allow_pickle: bool = False) -> ArtifactRef:
        """Serialize, hash and store ``value``; return its reference (an ``ArtifactRef``
        already in the store is returned as it is).  ``allow_pickle``: see :func:`serialize`."""
        if isinstance(value, ArtifactRef):  # already stored (e.g. a dataset passed through unchanged)
            if not self.exists(value):
                raise StorageError(f"artifact {value.uri!r} is not in the store {self.root!r} (or it changed)")
            return value
        fd, local = tempfile.mkstemp(prefix="raypipe-")
        os.close(fd)
        try:
            try:
                fmt, ext, schema = serialize(value, local, allow_pickle=allow_pickle)
            except OSError as e:  # the local disk (or the process's file size limit) is full
                raise StorageError(f"cannot serialize a {type(value).__name__} to store it: {e}") from None
            return self.put_file(local, fmt, ext, schema)
        finally:
            if os.path.exists(local):
                os.unlink(local)

    def put_file(self, local: str, fmt: str, ext: str, schema: dict[str, Any] | None = None) -> ArtifactRef:
        """Store a local file as an object.  An object already stored under its name is
        kept if its bytes hash to that name, else (tampered or corrupted) written again."""
        digest = sha256_file(local)
        size = os.path.getsize(local)
        rel = f"objects/{digest[:2]}/{digest}.{ext}"
        final = self._path(rel)
        ref = ArtifactRef(uri=self.uri_of(rel), sha256=digest, size=size, format=fmt, schema=schema)
        try:
            if self._holds(final, size, digest):  # stored already, verified: reused
                return ref
            # Claim-then-write (raypipe.store.claims): a second writer of the object waits for
            # the first, then finds it stored and reuses it.
            with claims.claim(self.fs, self._base, f"objects-{digest}.{ext}", f"artifact {digest[:12]}") as held:
                if not self._holds(final, size, digest):
                    self._upload(local, final, held)
                    if is_local(self.root):
                        integrity.remember(final, digest)
        except (OSError, claims.ClaimError) as e:
            raise StorageError(f"storage {self.root!r}: cannot write artifact: {e}") from None
        return ref

    def _upload(self, local: str, final: str, held: claims.Claim) -> None:
        """Copy ``local`` to ``tmp/<claim token>``, then move it to ``final`` (one rename on a
        local root) while the claim is held; a half-written upload never stays behind."""
        tmp: str | None = self._path(f"tmp/{held.token}")
        try:
            self.fs.create_dir(self._path("tmp"), recursive=True)
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            with open(local, "rb") as src, self.fs.open_output_stream(tmp) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
            held.check(f"artifact {os.path.basename(final)[:12]}")
            self.fs.move(tmp, final)
            tmp = None
        finally:
            if tmp is not None:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass

    # -- read
    def _holds(self, path: str, size: int, digest: str) -> bool:
        """Whether the file at ``path`` (under the root) has ``size`` bytes hashing to
        ``digest``: hashed once per process while the file is unchanged."""
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File or info.size != size:
            return False
        if is_local(self.root):
            return integrity.file_digest(path) == digest
        return integrity.remote_digest(self.fs, path, f"{self.root}|{path}", size, info.mtime_ns) == digest

    def exists(self, ref: ArtifactRef) -> bool:
        """Stored, with the recorded size and SHA-256 (a tampered or corrupted object does not
        exist).  The hash is computed once per process while the file is unchanged (local
        roots: a ``stat`` per call after that); on an object store, the first call per
        process reads the object once."""
        try:
            return self._holds(self._path(self._rel_of(ref.uri)), ref.size, ref.sha256)
        except (OSError, StorageError):
            return False

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
        """A local file holding the object (the object itself for local roots), its bytes
        verified against ``ref.sha256`` (a StorageError naming the artifact if they differ)."""
        path = self._path(self._rel_of(ref.uri))
        try:
            if is_local(self.root):
                integrity.verify_file(path, ref.sha256, ref.uri)
                return path
            if self._cache_dir is None:
                self._cache_dir = tempfile.mkdtemp(prefix="raypipe-cache-")
            local = os.path.join(self._cache_dir, os.path.basename(path))
            if os.path.exists(local):
                integrity.verify_file(local, ref.sha256, ref.uri)
                return local
            h = hashlib.sha256()
            with self.fs.open_input_stream(path) as src, open(local + ".part", "wb") as dst:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
            if h.hexdigest() != ref.sha256:
                os.unlink(local + ".part")
                raise integrity.mismatch(ref.uri)
            os.replace(local + ".part", local)
            integrity.remember(local, ref.sha256)
            return local
        except FileNotFoundError:
            raise StorageError(f"artifact {ref.uri!r} is missing from the store {self.root!r}") from None
        except OSError as e:
            raise StorageError(f"artifact {ref.uri!r}: cannot read: {e}") from None

    def get_value(self, ref: ArtifactRef, *, allow_pickle: bool = False) -> Any:
        """The stored value, read from bytes verified against ``ref.sha256``.  A pickle (or a
        torch file that needs pickle) is refused unless ``allow_pickle``."""
        return deserialize(ref.format, self.local_path(ref), allow_pickle=allow_pickle, uri=ref.uri)

    def read_bytes(self, ref: ArtifactRef) -> bytes:
        """The object's bytes, verified against ``ref.sha256``."""
        with self.fs.open_input_stream(self._path(self._rel_of(ref.uri))) as f:
            data: bytes = f.read()
        integrity.verify_bytes(data, ref.sha256, ref.uri)
        return data


__all__ = [
    "PICKLE_OPT_IN",
    "ArtifactRef",
    "ObjectStore",
    "deserialize",
    "is_local",
    "resolve_root",
    "root_of",
    "serialize",
    "sha256_file",
]
