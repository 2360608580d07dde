"""Datasets as artifacts: folders of parquet files written by Ray Data, versioned by content.

Layout under the artifact root::

    datasets/<version>/part-<uuid>.parquet   one file per block
    datasets/<version>/_manifest.json        written last: the dataset exists once it does
    tmp/ds-<uuid>/                           in-flight writes, moved into place when complete
    claims/datasets-<version>.claim          the writer putting the version in place

Writers are kept apart by a claim (:mod:`raypipe.store.claims`): the parts are written
to the writer's own staging folder, the version computed, then, holding the version's
claim, either a finished copy already there is reused (its manifest present and every
file hashing to it) or the staging folder, manifest included, is renamed into place.  A
second writer waits for the first and reuses its dataset; no writer deletes a folder
while another holds its claim, and a crash leaves nothing that has a manifest.

The manifest lists every file with its SHA-256 (hashed as the file is written), and
reading checks each file's bytes against it in the task that reads the file (a
StorageError naming the dataset and the file if they differ).  Manifests written
before files had hashes still read, unverified.

An *in-place* dataset (``data.read`` of parquet files) has only the manifest, which
lists the source files with their sizes and modification times: the rows are
hashed but not copied, and a changed source file makes the dataset unreadable
(with an error naming the file) rather than silently different.  Their bytes are not
hashed (they are the user's files, not the store's).

Versions (row hashes of every Arrow type) are :mod:`raypipe.store.dataset_hash`'s.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raypipe.exceptions import DataError, StorageError
from raypipe.store import claims, integrity
from raypipe.store.dataset_hash import DISTINCT_SAMPLE, content_digest, dataset_version, schema_text
from raypipe.store.objects import ArtifactRef, ObjectStore, is_local

DATASET_FORMAT = "dataset"
MANIFEST = "_manifest.json"


def is_ray_dataset(value: Any) -> bool:
    t = type(value)
    return t.__module__.startswith("ray.data") and t.__name__ in ("Dataset", "MaterializedDataset")


# ----------------------------------------------------------------------------- write
def filesystem_of(uri: str) -> Any:
    """The pyarrow filesystem of a local path (``LocalFileSystem``) or a URI."""
    return pafs.LocalFileSystem() if "://" not in uri else pafs.FileSystem.from_uri(uri)[0]


def part_stats(batch: pa.Table, root: str, staging: str | None) -> dict[str, Any]:
    """Write one block as one parquet file in ``staging`` (unless None: the data stays where
    it is) and return its stats and digest (``file``, ``rows``, ``bytes``, ``sha256`` of the
    file, hashed as it is written, ``s1``, ``s2``, ``schema``, ``arrow_schema``).  A column
    that cannot be versioned is a StorageError naming it, raised before anything is written."""
    import pyarrow.parquet as pq

    table = batch.replace_schema_metadata(None)
    s1, s2 = content_digest(table)  # first: a column that cannot be versioned writes no file
    name, size, sha = "", 0, ""
    if table.num_rows and staging is not None:
        store = ObjectStore(root)
        name = f"part-{uuid.uuid4().hex}.parquet"
        path = store._path(f"{staging}/{name}")
        try:
            with store.fs.open_output_stream(path) as raw:
                sink = integrity.HashingWriter(raw)
                pq.write_table(table, sink, use_dictionary=_dictionary_columns(table))
        except OSError as e:
            raise StorageError(f"storage {root!r}: cannot write {path}: {e}") from None
        size, sha = sink.size, sink.hexdigest()
    return {
        "file": name,
        "rows": table.num_rows,
        "bytes": size,
        "sha256": sha,
        "s1": s1,
        "s2": s2,
        "schema": schema_text(table.schema),
        "arrow_schema": table.schema.serialize().to_pybytes(),
    }


def _dictionary_columns(table: pa.Table) -> list[str]:
    """The columns parquet should dictionary-encode: not floats (measured values rarely
    repeat: a slower write, larger files) and not columns whose first values are
    mostly distinct (ids, free text: parquet would build a dictionary and drop it)."""
    out = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_floating(f.type):
            continue
        if len(col) > 2 * DISTINCT_SAMPLE and not pa.types.is_dictionary(f.type) and not pa.types.is_nested(f.type):
            head = col.slice(0, DISTINCT_SAMPLE)
            if pc.count_distinct(head).as_py() > DISTINCT_SAMPLE // 2:
                continue
        out.append(f.name)
    return out


_STATS_TYPES = {"rows": pa.int64(), "bytes": pa.int64(), "s1": pa.uint64(), "s2": pa.uint64()}


def stats_table(stats: Mapping[str, Any], prefix: str = "") -> dict[str, pa.Array]:
    """:func:`part_stats` as one-row Arrow columns (names prefixed), for a task's result."""
    return {f"{prefix}{k}": pa.array([v], _STATS_TYPES.get(k)) for k, v in stats.items()}


def _write_part(batch: pa.Table, root: str, staging: str | None) -> pa.Table:
    """Ray Data ``map_batches`` function of :func:`write_dataset`: :func:`part_stats` as a table."""
    return pa.table(stats_table(part_stats(batch, root, staging)))


class StagedDataset:
    """A dataset being written by tasks: they put parts in ``staging`` (:func:`part_stats`);
    :meth:`commit` turns their stats into the stored dataset (version, manifest written
    last); :meth:`discard` (always call it, e.g. in ``finally``) removes what is left."""

    def __init__(self, store: ObjectStore, what: str = "dataset", sources: list[dict[str, Any]] | None = None):
        self.store, self.what, self.sources = store, what, sources
        self.staging = None if sources is not None else f"tmp/ds-{uuid.uuid4().hex}"
        if self.staging is not None:
            store.fs.create_dir(store._path(self.staging), recursive=True)

    def commit(self, stats: list[Mapping[str, Any]], schema: pa.Schema) -> ArtifactRef:
        """The dataset of the parts in ``stats`` (``schema``: the one to record when no part
        has rows); blocks whose schemas differ are an error naming both."""
        store, what, sources = self.store, self.what, self.sources
        parts = [s for s in stats if s["rows"] > 0]
        schemas = {s["schema"] for s in parts}
        if len(schemas) > 1:
            a, b = sorted(schemas)[:2]
            raise StorageError(f"{what}: blocks have conflicting schemas: {_schema_brief(a)} vs {_schema_brief(b)}")
        if parts:
            schema_json, arrow_schema = parts[0]["schema"], pa.ipc.read_schema(pa.py_buffer(parts[0]["arrow_schema"]))
        else:
            arrow_schema = schema.remove_metadata()
            schema_json = schema_text(arrow_schema)
        rows = sum(int(s["rows"]) for s in parts)
        version = dataset_version(schema_json, rows, sum(int(s["s1"]) for s in parts), sum(int(s["s2"]) for s in parts))
        final = f"datasets/{version}"
        files = sorted((s["file"], int(s["rows"]), int(s["bytes"]), s.get("sha256") or "") for s in parts if s["file"])
        size = sum(f[2] for f in files) if sources is None else sum(int(f["size"]) for f in sources)
        manifest: dict[str, Any] = {
            "version": version,
            "rows": rows,
            "bytes": size,
            "columns": {f.name: str(f.type) for f in arrow_schema},
            "arrow_schema": arrow_schema.serialize().to_pybytes().hex(),
            "files": [{"name": n, "rows": r, "bytes": b, "sha256": h} for n, r, b, h in files],
            **({"sources": sources} if sources is not None else {}),
        }
        label = f"{what}: dataset {version[:12]}"
        try:
            stored = _finished(store, final, manifest)
            if stored is None:  # claim-then-write (raypipe.store.claims)
                with claims.claim(store.fs, store._base, f"datasets-{version}", label) as held:
                    stored = _finished(store, final, manifest)  # another writer finished it meanwhile
                    if stored is None:
                        _publish(store, self.staging, final, manifest, held, label)
                        stored = manifest
        except (OSError, claims.ClaimError) as e:
            raise StorageError(f"storage {store.root!r}: cannot store {label}: {e}") from None
        return _ref_of(store, final, stored)

    def discard(self) -> None:
        if self.staging is not None:
            _delete_dir(self.store, self.staging)


def write_dataset(
    store: ObjectStore, ds: Any, *, what: str = "dataset", sources: list[dict[str, Any]] | None = None
) -> ArtifactRef:
    """Stream ``ds`` (a Ray Dataset) into the store; return its reference (``sha256`` = version).

    With ``sources`` (``[{"path", "size", "mtime_ns"}]``: the parquet files ``ds`` reads,
    plus ``"fs"``: their root URI or path), nothing is copied: the rows are hashed and
    the manifest points at the files, which must not change afterwards (reading checks
    their sizes and modification times).  Blocks whose schemas differ are an error
    naming both schemas.  A dataset with the same version is not stored twice (a
    copy replaces an in-place one).
    """
    staged = StagedDataset(store, what, sources)
    try:
        try:
            stats = ds.map_batches(
                _write_part,
                fn_kwargs={"root": store.root, "staging": staged.staging},
                batch_format="pyarrow",
                batch_size=None,
                zero_copy_batch=True,
            ).take_all()
        except Exception as e:
            message = storage_error_message(e)  # raised in a Ray Data task: wrapped
            if message is None:
                raise
            raise StorageError(f"{what}: {message}") from None
        return staged.commit(stats, arrow_schema_of(ds) if not any(s["rows"] for s in stats) else pa.schema([]))
    finally:
        staged.discard()


_STORAGE_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?StorageError: (.*\S)", re.MULTILINE)


def storage_error_message(e: BaseException) -> str | None:
    """The message of the :class:`StorageError` behind ``e``, or None if there is none.

    An exception raised in a Ray Data ``map_batches`` function reaches the driver as a
    ``RayTaskError`` (or a ``RayTaskError(X)`` subclass of both) whose ``.cause`` is a
    ``UserCodeException`` that was raised *from* the function's exception; pickling
    loses that ``__cause__``, so the original survives only as the last line of its
    traceback in the text.  So: walk ``.cause``, ``__cause__`` and ``__context__`` for
    a StorageError, then look for its line (``raypipe.exceptions.StorageError: ...``)
    in the texts of the exceptions seen.
    """
    seen: list[BaseException] = []
    todo = [e]
    while todo:
        x = todo.pop(0)
        if any(x is s for s in seen) or len(seen) > 50:
            continue
        seen.append(x)
        try:
            cause = getattr(x, "cause", None)
        except Exception:  # noqa: BLE001 - a property that fails
            cause = None
        if isinstance(x, StorageError) and not isinstance(cause, BaseException):
            return str(x)
        todo += [c for c in (cause, x.__cause__, x.__context__) if isinstance(c, BaseException)]
    for x in seen:
        try:
            text = str(x)
        except Exception:  # noqa: BLE001
            continue
        m = _STORAGE_ERROR_LINE.search(text)
        if m:
            return m.group(1)
    return None


def arrow_schema_of(ds: Any) -> pa.Schema:
    schema = ds.schema()
    if schema is None:
        return pa.schema([])
    base = getattr(schema, "base_schema", schema)
    return base if isinstance(base, pa.Schema) else pa.schema([(n, pa.string()) for n in schema.names])


def _schema_brief(schema_json: str) -> str:
    return ", ".join(f"{n}: {t}" for n, t in json.loads(schema_json))


def _stored_manifest(store: ObjectStore, rel_dir: str) -> dict[str, Any] | None:
    """The manifest of the dataset under ``rel_dir``, or None if there is none (yet)."""
    try:
        with store.fs.open_input_stream(store._path(f"{rel_dir}/{MANIFEST}")) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _ref_of(store: ObjectStore, final: str, manifest: Mapping[str, Any]) -> ArtifactRef:
    in_place = "sources" in manifest
    return ArtifactRef(
        uri=store.uri_of(final),
        sha256=manifest["version"],
        size=int(manifest["bytes"]),
        format=DATASET_FORMAT,
        schema={
            "columns": dict(manifest["columns"]),
            "num_rows": int(manifest["rows"]),
            "files": len(manifest["sources"]) if in_place else len(manifest["files"]),
            **({"in_place": True} if in_place else {}),
        },
    )


def _finished(store: ObjectStore, final: str, ours: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest of the finished dataset at ``final`` that a writer of ``ours`` (a manifest
    of the same version) reuses instead of writing it again, or None: nothing finished there
    (no manifest: being written, or a crashed write), a copy whose files are missing or do not
    hash to the manifest's SHA-256s, or an in-place dataset that ``ours`` replaces (a copy,
    or other source files)."""
    existing = _stored_manifest(store, final)
    if existing is None or existing.get("version") != ours["version"]:
        return None
    if "sources" in existing:
        same = "sources" in ours and existing["sources"] == ours["sources"]
        return existing if same and not changed_sources(existing) else None
    return existing if _verified(store, final, existing) else None


def _verified(store: ObjectStore, final: str, manifest: Mapping[str, Any]) -> bool:
    """Every file of the manifest is there and hashes to its SHA-256 (local files: hashed
    once per process while unchanged).  A manifest without hashes is not verified."""
    for f in manifest.get("files") or []:
        path = store._path(f"{final}/{f['name']}")
        info = store.fs.get_file_info(path)
        if not f.get("sha256") or info.type != pafs.FileType.File or info.size != int(f["bytes"]):
            return False
        if is_local(store.root):
            digest = integrity.file_digest(path)
        else:
            digest = integrity.remote_digest(store.fs, path, f"{store.root}|{path}", info.size, info.mtime_ns)
        if digest != f["sha256"]:
            return False
    return True


def _publish(
    store: ObjectStore, staging: str | None, final: str, manifest: Mapping[str, Any], held: claims.Claim, label: str
) -> None:
    """Put the dataset of ``manifest`` (its files in ``staging``) at ``final``, holding its claim.

    Local roots: the manifest goes into the staging folder, which is then renamed to
    ``final`` in one step, so the folder appears finished or not at all.  What was at
    ``final`` (unfinished, broken, or an in-place dataset a copy replaces: left by a writer
    whose claim has ended) is renamed aside first and deleted after.  Object stores: the
    files (unique names) are moved in, then the manifest, one object, is written last;
    nothing there is deleted."""
    body = json.dumps(manifest, indent=1).encode()
    if claims.is_local_fs(store.fs):
        folder = staging or f"tmp/ds-{held.token}"  # in place: a folder holding only the manifest
        store.fs.create_dir(store._path(folder), recursive=True)
        with store.fs.open_output_stream(store._path(f"{folder}/{MANIFEST}")) as f:
            f.write(body)
        store.fs.create_dir(store._path("datasets"), recursive=True)
        held.check(label)
        aside = None
        if store.fs.get_file_info(store._path(final)).type != pafs.FileType.NotFound:
            aside = f"tmp/replaced-{held.token}"
            store.fs.move(store._path(final), store._path(aside))
        store.fs.move(store._path(folder), store._path(final))
        if aside is not None:
            _delete_dir(store, aside)
        return
    store.fs.create_dir(store._path(final), recursive=True)
    for f in manifest["files"]:
        store.fs.move(store._path(f"{staging}/{f['name']}"), store._path(f"{final}/{f['name']}"))
    held.check(label)
    with store.fs.open_output_stream(store._path(f"{final}/{MANIFEST}")) as out:
        out.write(body)


def _delete_dir(store: ObjectStore, rel: str) -> None:
    try:
        store.fs.delete_dir(store._path(rel))
    except OSError:
        pass


# ----------------------------------------------------------------------------- read
def read_manifest(store: ObjectStore, ref: ArtifactRef) -> dict[str, Any]:
    manifest = _stored_manifest(store, store._rel_of(ref.uri))
    if manifest is None:
        raise StorageError(f"dataset {ref.uri!r} is missing or incomplete (no readable {MANIFEST})")
    return manifest


def _manifest_schema(manifest: Mapping[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(manifest["arrow_schema"])))


def dataset_schema(store: ObjectStore, ref: ArtifactRef) -> pa.Schema:
    """The dataset's Arrow schema, from its manifest (no data is read)."""
    return _manifest_schema(read_manifest(store, ref))


def read_part(path: str, sha256: str, root: str, uri: str, columns: list[str] | None = None) -> pa.Table:
    """One parquet file of the dataset at ``uri`` under the store ``root``, its bytes checked
    against ``sha256`` (none: a manifest written before files had hashes, read unverified).

    On a local root the file is hashed once per process while it is unchanged
    (:func:`~raypipe.store.integrity.file_digest`), then read as usual (only ``columns``);
    on an object store it is read whole into memory once, hashed, and parsed from there."""
    import pyarrow.parquet as pq

    name = path.rsplit("/", 1)[-1]
    if not sha256:
        return pq.read_table(path, filesystem=filesystem_of(root), columns=columns)
    try:
        if is_local(root):
            integrity.verify_file(path, sha256, uri, f"file {name}")
            return pq.read_table(path, columns=columns)
        with filesystem_of(root).open_input_file(path) as f:
            data = f.read_buffer()
    except FileNotFoundError:
        raise StorageError(f"dataset {uri!r}: file {name} is missing") from None
    integrity.verify_bytes(data, sha256, uri, f"file {name}")
    return pq.read_table(pa.BufferReader(data), columns=columns)


def _read_parts(batch: dict[str, Any], fs: str, uri: str = "", columns: list[str] | None = None) -> pa.Table:
    shas = batch["sha256"] if "sha256" in batch else [""] * len(batch["path"])
    return pa.concat_tables(
        [read_part(str(p), str(h), fs, uri, columns) for p, h in zip(batch["path"], shas, strict=True)]
    )


def changed_sources(manifest: Mapping[str, Any]) -> list[str]:
    """The source files of an in-place dataset that are gone or differ in size or mtime."""
    sources = manifest.get("sources") or []
    if not sources:
        return []
    fs = filesystem_of(sources[0]["fs"])
    infos = fs.get_file_info([f["path"] for f in sources])
    return [
        f["path"]
        for f, info in zip(sources, infos, strict=True)
        if info.type != pafs.FileType.File or info.size != f["size"] or info.mtime_ns != f["mtime_ns"]
    ]


@contextmanager
def parquet_v1() -> Iterator[None]:
    """``read_parquet`` through Ray Data's V1 datasource while inside.  V2 (the default
    since Ray 2.5x) lists files and reads footers with a pool of 32 actors and samples
    the first file on the driver, which is slow on a fresh node; V1 reads a known list
    of files at once.  Only ``read_parquet`` looks at the flag."""
    from ray.data import DataContext

    dctx = DataContext.get_current()
    saved = getattr(dctx, "use_datasource_v2", None)
    if saved is not None:
        dctx.use_datasource_v2 = False
    try:
        yield
    finally:
        if saved is not None:
            dctx.use_datasource_v2 = saved


def read_dataset(store: ObjectStore, ref: ArtifactRef, columns: list[str] | None = None) -> Any:
    """The dataset as a lazy Ray Dataset (one block per file): nothing is read until it
    is consumed, and then by Ray Data tasks, never by this process.  ``columns``: read
    only these (parquet reads nothing else).

    The files are listed by the manifest, so reading skips Ray's file listing and
    schema sampling (slow in ``read_parquet``).  Each file's bytes are checked against
    its SHA-256 in the manifest by the task that reads it (:func:`read_part`): a
    tampered or corrupted file fails the read with a StorageError naming it.  An
    in-place dataset whose source files changed is an error naming them."""
    import ray.data

    manifest = read_manifest(store, ref)
    sources = manifest.get("sources")
    if sources:
        changed = changed_sources(manifest)
        if changed:
            raise DataError(
                f"dataset {ref.sha256[:12]} was read in place from files that changed since: "
                + ", ".join(changed[:3])
                + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
                + "; run the stage that read them again"
            )
        # One block per file: Ray's default of ~200 tiny blocks is much slower here.
        files = [f["path"] for f in sources]
        with parquet_v1():
            return ray.data.read_parquet(
                files, filesystem=filesystem_of(sources[0]["fs"]), override_num_blocks=len(files), columns=columns
            )
    base = store._path(store._rel_of(ref.uri))
    files = [{"path": f"{base}/{f['name']}", "sha256": f.get("sha256") or ""} for f in manifest["files"]]
    if not files:
        empty = _manifest_schema(manifest).empty_table()
        return ray.data.from_arrow(empty.select(columns) if columns is not None else empty)
    return ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_parts,  # type: ignore[arg-type]  # Ray's stub wants a one-argument fn; fn_kwargs passes the rest
        fn_kwargs={"fs": store.root, "uri": ref.uri, "columns": columns},
        batch_size=1,
        batch_format="numpy",
    )


def dataset_exists(store: ObjectStore, ref: ArtifactRef) -> bool:
    """Stored and finished: its manifest present (a folder without one is being written, or
    was left by a crash) and of this version, every file of the manifest present at its
    size (one listing of the folder; the files' hashes are checked when they are read),
    and (for an in-place dataset) its source files unchanged."""
    try:
        rel = store._rel_of(ref.uri)
        manifest = _stored_manifest(store, rel)
        if manifest is None or manifest.get("version", ref.sha256) != ref.sha256 or changed_sources(manifest):
            return False
        if manifest.get("sources") or not manifest.get("files"):
            return True
        listed = store.fs.get_file_info(pafs.FileSelector(store._path(rel)))
        sizes = {i.base_name: i.size for i in listed if i.type == pafs.FileType.File}
        return all(sizes.get(f["name"]) == int(f["bytes"]) for f in manifest["files"])
    except (StorageError, OSError):
        return False


__all__ = [
    "DATASET_FORMAT",
    "StagedDataset",
    "arrow_schema_of",
    "changed_sources",
    "dataset_exists",
    "dataset_schema",
    "filesystem_of",
    "is_ray_dataset",
    "parquet_v1",
    "part_stats",
    "read_dataset",
    "read_manifest",
    "stats_table",
    "storage_error_message",
    "write_dataset",
]
