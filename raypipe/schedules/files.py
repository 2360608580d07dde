"""Snapshots of the files an ``on_data`` trigger watches (pure, no Ray): path -> size, mtime and,
for local files, SHA-256.  A local ``path`` is a folder (every file under it), a glob, or a
file; a URI (``s3://bucket/events/``) is listed through ``pyarrow.fs`` (size and mtime only:
object stores give no content hash through it).  Hidden files (``.name``) and files still being
written by common tools (``*.tmp``, ``*.part``, ``*.crdownload``) are left out."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Mapping
from typing import Any

Snapshot = dict[str, dict[str, Any]]

_PARTIAL = (".tmp", ".part", ".crdownload", ".partial")


def _skip(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith(".") or name.lower().endswith(_PARTIAL)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local(path: str) -> list[str]:
    path = os.path.abspath(os.path.expanduser(path))
    if any(c in path for c in "*?["):
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        found = [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
    elif os.path.isfile(path):
        found = [path]
    else:
        found = []
    return sorted(p for p in found if not _skip(p))


def snapshot(path: str, previous: Mapping[str, Mapping[str, Any]] | None = None) -> Snapshot:
    """The files under ``path`` now.  A local file whose size and mtime equal ``previous``'s keeps
    its recorded hash (it is not read again)."""
    prev = previous or {}
    out: Snapshot = {}
    if "://" in path:
        import pyarrow.fs as pafs

        fs, base = pafs.FileSystem.from_uri(path)
        info = fs.get_file_info(base)
        infos = (
            fs.get_file_info(pafs.FileSelector(base, recursive=True))
            if info.type == pafs.FileType.Directory
            else [info]
        )
        scheme = path.split("://", 1)[0]
        for f in infos:
            if f.type != pafs.FileType.File or _skip(f.path):
                continue
            mtime = f.mtime.timestamp() if f.mtime is not None else None
            out[f"{scheme}://{f.path}"] = {"size": f.size, "mtime": mtime, "sha256": None}
        return dict(sorted(out.items()))
    for p in _local(path):
        try:
            st = os.stat(p)
        except OSError:
            continue  # gone meanwhile
        old = prev.get(p)
        if old and old.get("size") == st.st_size and old.get("mtime") == st.st_mtime and old.get("sha256"):
            sha = old["sha256"]
        else:
            try:
                sha = _sha256(p)
            except OSError:
                continue
        out[p] = {"size": st.st_size, "mtime": st.st_mtime, "sha256": sha}
    return out


def changed(seen: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Files of ``now`` that are new or differ from ``seen`` (removed ones do not count): by content
    where both have a hash (a touched file is not a change), else by size and mtime."""
    out = []
    for p, info in now.items():
        old = seen.get(p)
        if old is None:
            out.append(p)
        elif old.get("sha256") and info.get("sha256"):
            if old["sha256"] != info["sha256"]:
                out.append(p)
        elif (old.get("size"), old.get("mtime")) != (info.get("size"), info.get("mtime")):
            out.append(p)
    return out
