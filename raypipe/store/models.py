"""Model artifacts: a trained model as one stored object.

A model package is a folder with ``raypipe_model.json`` (what the model is and what
it expects) and the files its trainer wrote (weights, optimizer state...), stored as
one ``.tar`` of format ``model``.  The metadata also becomes the artifact's
``schema`` in the metadata store, so the registry and ``raypipe model show`` read it
without opening the file.  Keys of the metadata:

- ``format``: ``raypipe-model/1``; ``framework``: ``torch``
- ``task``: ``classification`` | ``regression`` | None (unknown, for user loops)
- ``features`` (input columns, in order), ``label``, ``input_schema`` ({column: arrow type})
- ``classes`` (classification: the label values, index = output unit)
- ``preprocessing``: e.g. ``{"standardize": {"mean": [...], "std": [...]}}`` or None
- ``spec``: the built-in architecture (``{"type": "mlp", ...}``) or None for user loops
- ``trained_by``: ``{"kind": "train"|"tune", "function": "mod:fn" | None, "stage": ..., "run_id": ...}``
- ``params``: the training hyperparameters; ``metrics``: the last reported metrics
- ``code``: fingerprint of the training code

The tar is written uncompressed, and :meth:`ModelPackage.read_tar` refuses anything else:
a compressed tar (a small file that unpacks to a huge one), members with absolute paths
or ``..``, links, devices, FIFOs and sparse files, and members whose sizes add up to more
than the tar itself.  A package it unpacks into a new temporary folder owns that folder:
it is removed by :meth:`ModelPackage.close` (or leaving ``with package:``), else when the
package is garbage-collected or, at the latest, when the process exits (a
``weakref.finalize``).  Keep the package object while its files are used.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, TypeGuard

from raypipe.exceptions import StorageError

META_FILE = "raypipe_model.json"
FORMAT = "raypipe-model/1"


@dataclass
class ModelPackage:
    """A model folder: ``root`` holds :data:`META_FILE` and the weights files."""

    root: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, root: str | Path, meta: dict[str, Any]) -> ModelPackage:
        """Write ``meta`` into ``root`` (a folder already holding the weights files)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "framework": "torch", **meta}
        (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        return cls(root, meta)

    @classmethod
    def open(cls, root: str | Path) -> ModelPackage:
        root = Path(root)
        try:
            meta = json.loads((root / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise StorageError(f"{root}: not a raypipe model package ({META_FILE}: {e})") from None
        return cls(root, meta)

    def file(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            have = sorted(p.name for p in self.root.iterdir() if p.name != META_FILE)
            raise StorageError(f"model package has no file {name!r}; it has: {', '.join(have) or 'nothing'}")
        return path

    def write_tar(self, path: str) -> dict[str, Any]:
        """Store as an uncompressed tar (files sorted, fixed mtimes: same content, same bytes;
        a symlink is stored as the file it points to); returns the meta.  Anything but regular
        files and folders is refused."""
        with tarfile.open(path, "w:", dereference=True) as tar:
            for f in sorted(self.root.rglob("*")):
                if not (f.is_file() or f.is_dir()):
                    raise StorageError(f"model package {self.root}: {f.name!r} is not a file or a folder")
                info = tar.gettarinfo(str(f), arcname=str(f.relative_to(self.root)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if f.is_file():
                    with open(f, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        return self.meta

    @classmethod
    def read_tar(cls, path: str, dest: str | Path | None = None) -> ModelPackage:
        """Unpack a stored package (into ``dest``, or a new temporary folder that the package
        owns: see the module's docstring), after checking that it is a plain tar of files
        and folders (:func:`check_tar`)."""
        root = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="raypipe-model-"))
        try:
            refuse_compressed(path)
            with tarfile.open(path, "r:") as tar:
                check_tar(tar, path)
                tar.extractall(root, filter="data")
            package = cls.open(root)
        except (OSError, tarfile.TarError, StorageError) as e:
            if dest is None:
                shutil.rmtree(root, ignore_errors=True)
            if isinstance(e, StorageError):
                raise
            raise StorageError(f"{path}: cannot unpack model package: {e}") from None
        if dest is None:
            package._own(root)
        return package

    def _own(self, folder: Path) -> None:
        """Remove ``folder`` on :meth:`close`, or when this package is collected or the process exits."""
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(folder), True)

    def close(self) -> None:
        """Remove the temporary folder :meth:`read_tar` unpacked this package into (nothing
        for a package in a folder of its caller's)."""
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

    def __enter__(self) -> ModelPackage:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        """A copy (another process's) never removes this package's folder."""
        return {k: v for k, v in self.__dict__.items() if k != "_cleanup"}


#: First bytes of compressed files (gzip, bzip2, xz, zstd, lz4, zip): never a model tar.
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18", b"PK\x03\x04")


def refuse_compressed(path: str) -> None:
    """A compressed file is no model package (they are written as plain tars; ``tarfile``'s
    ``r:`` mode refuses them too, less clearly)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_COMPRESSED):
        raise StorageError(f"{path}: a compressed model package is refused (packages are stored as plain tars)")


def check_tar(tar: tarfile.TarFile, path: str) -> None:
    """Refuse a tar holding anything but plain files and folders inside the package:
    absolute paths, ``..``, links, devices, FIFOs, sparse files, or members whose sizes
    add up to more than the tar's own size."""
    total, limit = 0, os.path.getsize(path)
    for m in tar.getmembers():
        name = PurePosixPath(m.name)
        if name.is_absolute() or m.name.startswith(("/", "\\")) or ".." in name.parts:
            raise StorageError(f"{path}: model package member {m.name!r} is outside the package (refused)")
        if m.issparse() or not (m.isfile() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "sparse" if m.issparse() else "not a file or a folder"
            raise StorageError(f"{path}: model package member {m.name!r} is {kind} (refused)")
        total += m.size
        if total > limit:
            raise StorageError(f"{path}: model package members add up to more than the tar holds (refused)")


def is_model_package(value: Any) -> TypeGuard[ModelPackage]:
    return isinstance(value, ModelPackage)
