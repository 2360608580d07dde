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
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
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
        """Store as a tar (files sorted, fixed mtimes: same content, same bytes); returns the meta."""
        with tarfile.open(path, "w") as tar:
            for f in sorted(self.root.rglob("*")):
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
        """Unpack a stored package (into ``dest`` or a new temporary folder)."""
        root = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="raypipe-model-"))
        try:
            with tarfile.open(path) as tar:
                tar.extractall(root, filter="data")
        except (OSError, tarfile.TarError) as e:
            shutil.rmtree(root, ignore_errors=True)
            raise StorageError(f"{path}: cannot unpack model package: {e}") from None
        return cls.open(root)


def is_model_package(value: Any) -> TypeGuard[ModelPackage]:
    return isinstance(value, ModelPackage)
