"""Datasets as artifacts: folders of parquet files written by Ray Data, versioned by content.

Layout under the artifact root::

    datasets/<version>/part-<uuid>.parquet   one file per block
    datasets/<version>/_manifest.json        written last: the dataset exists once it does
    tmp/ds-<uuid>/                           in-flight writes, moved into place when complete

An *in-place* dataset (``data.read`` of parquet files) has only the manifest, which
lists the source files with their sizes and modification times: the rows are
hashed but not copied, and a changed source file makes the dataset unreadable
(with an error naming the file) rather than silently different.

The version is a hash of the schema and of the *multiset* of rows: every row gets a
64-bit hash (of its values, column by column), and the version combines the row
count with two independent sums of those hashes.  It is therefore the same however
the rows are split into blocks or files and in whatever order they arrive, and any
changed, added or removed value changes it.  Row hashes are computed in the same
pass that writes the files, on the workers, so a dataset is never collected in
one process.  The hash is for identity, not security.

Every type a reader produces has a canonical per-value word (:func:`column_words`):
numbers, dates, times, timestamps and durations their integer or float bits, strings,
binaries and decimals (by their exact text) a hash of their bytes, lists and structs
a combination of their elements' or fields' words, dictionaries and other encodings
(large, view, run-end) what their plain values give.  A type without one (a union, an
interval, an extension type other than Arrow's and Ray Data's tensors, Ray Data's
pickled Python objects, uuid, json and bool8) is a :class:`StorageError` naming the
column and the type.

Parquet reads back the type it was given, so storing a read-back dataset again gives
the same version, except for the few types parquet cannot represent exactly; their
values come back equal but as another type, so the copy has another version (once:
storing it again keeps that one): ``date64`` (read as ``date32``), ``timestamp[s]``
(as ``timestamp[ms]``, time zone kept), ``time32[s]`` (as ``time32[ms]``), a
dictionary of ``large_string`` (as one of ``string``).  A dictionary of non-strings
is read back plain: it is versioned as its values already.  Parquet cannot store
run-end encoded columns, negative decimal scales or intervals at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raypipe.exceptions import StorageError
from raypipe.store.artifacts import ArtifactRef, ArtifactStore, is_local

DATASET_FORMAT = "dataset"
MANIFEST = "_manifest.json"
_U64 = np.uint64
_SEED = _U64(0xCBF29CE484222325)
_PRIME = _U64(0x100000001B3)
_NULL = _U64(0x9E3779B97F4A7C15)
_SALT = _U64(0xD6E8FEB86659FD93)
_LIST = _U64(0x8EBC6AF09C88C6E3)
_STRUCT = _U64(0x589965CC75374CC3)
_POS = _U64(0x1D8E4E27C47D124F)


def is_ray_dataset(value: Any) -> bool:
    t = type(value)
    return t.__module__.startswith("ray.data") and t.__name__ in ("Dataset", "MaterializedDataset")


# ----------------------------------------------------------------------------- row hashes
def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, vectorized (uint64 arithmetic wraps); ``x`` is left as it is."""
    return _mix64_(np.array(x, dtype=_U64, copy=True))


#: Extension types hashed by their storage: the storage is a canonical form of the value
#: (the type's parameters, e.g. a tensor's shape, are in the schema text).  Ray Data's
#: column of Python objects (what a function returns that Arrow cannot hold) is hashed
#: by its pickles: the same bytes, the same word; equal objects pickled differently
#: (a class defined in ``__main__``) get different versions, never the reverse.
_HASHABLE_EXTENSIONS = frozenset(
    {
        "arrow.uuid",
        "arrow.json",
        "arrow.fixed_shape_tensor",
        "ray.data.arrow_tensor",
        "ray.data.arrow_tensor_v2",
        "ray.data.arrow_variable_shaped_tensor",
        "ray.data.arrow_pickled_object",
    }
)


class _Unhashable(Exception):
    """A (possibly nested) type :func:`column_words` has no canonical encoding for."""

    def __init__(self, t: pa.DataType) -> None:
        super().__init__(str(t))
        self.type = t


def column_words(col: pa.ChunkedArray | pa.Array, name: str | None = None) -> np.ndarray:
    """One uint64 per value: the bits of numbers, a hash of anything else; nulls one constant.

    Numbers are their bits (integers and temporal values as int64, ``uint64`` as it is,
    floats as float64 with one NaN and ``-0.0 == 0.0``); strings, binaries and decimals
    (as the decimal's text) a hash of their bytes; a dictionary its values'.  A list
    combines its length with its elements' words mixed with their positions, a struct
    its fields' names and words (in order): a null list or struct differs from one
    with null elements or fields.  A type without a canonical encoding (a union, an
    interval, an unknown extension type) is a :class:`StorageError` naming ``name``.
    """
    try:
        with np.errstate(over="ignore"):
            return _words(col)
    except _Unhashable as e:
        which = f"column {name!r}" if name is not None else "a column"
        inner = "" if e.type == col.type else f" (its {str(e.type)!r} values have no canonical encoding)"
        raise StorageError(
            f"{which}: type {str(col.type)!r} cannot be versioned{inner}; "
            "cast it to a supported type (e.g. string or binary) before storing it"
        ) from None


def _chunks(col: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]


def _per_chunk(col: pa.ChunkedArray | pa.Array, fn: Callable[[Any], np.ndarray]) -> np.ndarray:
    parts = [fn(chunk) for chunk in _chunks(col)]
    return np.concatenate(parts) if parts else np.zeros(0, _U64)


def _words(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """:func:`column_words` of an array or chunked array (may return a read-only view)."""
    t = col.type
    if col.null_count == 0 and pa.types.is_float64(t):  # the common cases, with one copy
        v = col.to_numpy() + 0.0  # -0.0 -> 0.0
        nan = np.isnan(v)
        if nan.any():
            v[nan] = np.nan  # one NaN bit pattern
        return v.view(_U64)
    if col.null_count == 0 and pa.types.is_int64(t):
        return col.to_numpy().view(_U64)
    if pa.types.is_null(t):
        return np.full(len(col), _NULL, dtype=_U64)
    if pa.types.is_floating(t):
        v = col.cast(pa.float64()).to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0
        v = np.where(np.isnan(v), np.nan, v).view(_U64)  # one NaN bit pattern
    elif pa.types.is_uint64(t):  # the full range: no cast to int64
        v = col.fill_null(0).to_numpy(zero_copy_only=False).view(_U64)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(_U64)
    elif pa.types.is_date32(t) or pa.types.is_time32(t):  # int32 storage: no cast to int64
        v = col.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64).view(_U64)
    elif pa.types.is_temporal(t) and not pa.types.is_interval(t):  # timestamp, date64, time64, duration
        v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(_U64)
    elif pa.types.is_decimal(t):  # its text, as json.dumps: "1.10" (the scale is in the schema)
        text = col.cast(pa.string())
        v = _per_chunk(pc.binary_join_element_wise('"', text, '"', ""), _text_words)
    elif _is_text(t):
        v = _per_chunk(col, _text_words)
    elif pa.types.is_dictionary(t):
        v = _per_chunk(col, _dictionary_words)
    elif pa.types.is_run_end_encoded(t):
        v = _per_chunk(col, lambda a: _words(pc.run_end_decode(a)))
    elif _is_list(t) or pa.types.is_map(t):
        v = _per_chunk(col, _list_words)
    elif pa.types.is_struct(t):
        v = _per_chunk(col, _struct_words)
    elif isinstance(t, pa.BaseExtensionType) and t.extension_name == "arrow.bool8":  # any non-zero is true
        v = _per_chunk(col, lambda a: _words(pc.not_equal(a.storage, 0)))
    elif isinstance(t, pa.BaseExtensionType) and t.extension_name in _HASHABLE_EXTENSIONS:
        v = _per_chunk(col, lambda a: _words(a.storage))
    else:
        raise _Unhashable(t)
    if col.null_count:
        v = np.where(np.asarray(col.is_null()), _NULL, v)
    return v


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _text_words(a: pa.Array) -> np.ndarray:
    """pandas' hash of each value's bytes (UTF-8 for strings), computed once per distinct value."""
    import pandas as pd

    if pa.types.is_string_view(a.type):
        a = a.cast(pa.large_string())
    elif pa.types.is_binary_view(a.type):
        a = a.cast(pa.large_binary())
    if len(a) > 2 * _SAMPLE and pc.count_distinct(a.slice(0, _SAMPLE)).as_py() > _SAMPLE // 2:
        # mostly distinct (ids, free text): encoding first would cost 4x the hashing itself
        words = pd.util.hash_array(a.to_numpy(zero_copy_only=False), categorize=False).astype(_U64)
        return np.where(np.asarray(a.is_valid()), words, _NULL) if a.null_count else words
    enc = a.dictionary_encode()
    if len(enc.dictionary) == 0:  # empty or all null
        return np.full(len(a), _NULL, dtype=_U64)
    words = pd.util.hash_array(enc.dictionary.to_numpy(zero_copy_only=False), categorize=False).astype(_U64)
    return words[enc.indices.fill_null(0).to_numpy(zero_copy_only=False)]


#: Values looked at to tell a mostly-distinct text column (hashed value by value) from a
#: repetitive one (hashed once per distinct value); the words are the same either way.
_SAMPLE = 2048


def _dictionary_words(a: pa.DictionaryArray) -> np.ndarray:
    """The words of the dictionary's values, taken by index: a value hashes as it does plainly."""
    words = _words(a.dictionary)
    if len(words) == 0:  # empty or all null
        return np.full(len(a), _NULL, dtype=_U64)
    return words[a.indices.fill_null(0).to_numpy(zero_copy_only=False)]


def _list_words(a: pa.Array) -> np.ndarray:
    """Each list: its length's word plus the sum of its elements' words, each mixed with
    its position in the list (a canonical, order-sensitive encoding computed over the
    flattened elements at once).  A map is a list of (key, value) structs, in order."""
    t = a.type
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):  # views may overlap: gather
        sizes = a.sizes.to_numpy(zero_copy_only=False).astype(np.int64)
        if a.null_count:  # a null's view may point anywhere
            sizes[np.asarray(a.is_null())] = 0
        offsets = np.zeros(len(a) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        starts = a.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        take = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], sizes)
        values_words = _words(a.values)[take]
    elif pa.types.is_fixed_size_list(t):
        size = t.list_size
        values_words = _words(a.values.slice(a.offset * size, len(a) * size))  # .values ignores the slice
        offsets = np.arange(len(a) + 1, dtype=np.int64) * size
    else:
        offsets = a.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values_words = _words(a.values.slice(offsets[0], offsets[-1] - offsets[0]))
        offsets -= offsets[0]
    lengths = np.diff(offsets)
    position = np.arange(len(values_words), dtype=_U64) - np.repeat(offsets[:-1], lengths).astype(_U64)
    elements = _mix64_(values_words ^ _mix64_(position + _POS))
    sums = np.zeros(len(values_words) + 1, dtype=_U64)
    np.cumsum(elements, out=sums[1:])
    return _mix64_(_mix64_(lengths.astype(_U64) + _LIST) + (sums[offsets[1:]] - sums[offsets[:-1]]))


def _struct_words(a: pa.StructArray) -> np.ndarray:
    """Each struct: its fields' names and words, combined in field order like a row's."""
    h = np.full(len(a), _STRUCT, dtype=_U64)
    for i, field in enumerate(a.type):
        h *= _PRIME
        h += _name_word(field.name)
        h *= _PRIME
        h += _words(a.field(i))
    return _mix64_(h)


_NAME_WORDS: dict[str, np.uint64] = {}


def _name_word(name: str) -> np.uint64:
    w = _NAME_WORDS.get(name)
    if w is None:
        w = _NAME_WORDS[name] = _U64(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))
    return w


def _mix64_(x: np.ndarray) -> np.ndarray:
    """:func:`mix64` in place (no temporary arrays: the row hash runs on every block)."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of every row (column order and names matter, row position does not)."""
    h = np.full(table.num_rows, _SEED, dtype=_U64)
    with np.errstate(over="ignore"):
        for name, col in zip(table.column_names, table.columns, strict=True):
            h *= _PRIME
            h += _name_word(name)
            h *= _PRIME
            h += column_words(col, name)
        return _mix64_(h)


def content_digest(table: pa.Table) -> tuple[int, int]:
    """Two independent order-free sums (mod 2**64) of the rows' hashes."""
    h = row_hashes(table)
    with np.errstate(over="ignore"):
        s1 = int(h.sum(dtype=_U64))
        h ^= _SALT
        return s1, int(_mix64_(h).sum(dtype=_U64))


_PLAIN = {"large_string": "string", "large_utf8": "string", "string_view": "string"}
_PLAIN.update({"large_binary": "binary", "binary_view": "binary"})


def schema_text(schema: pa.Schema) -> str:
    """Column names and types, without pandas/Ray metadata.

    A type is written as Arrow writes it, except that ``large_string`` and
    ``string_view`` count as ``string``, ``large_binary`` and ``binary_view`` as
    ``binary`` (their values hash alike), and nested types are written canonically:
    large lists and list views as lists, without the names of list items and map
    entries (parquet renames them), without nullability.  A dictionary of anything
    but strings or binaries counts as its values (parquet stores it plainly, and the
    values hash alike); a dictionary of strings keeps its text, as in versions before.
    """
    return json.dumps([[f.name, _type_text(f.type, top=True)] for f in schema])


def _type_text(t: pa.DataType, top: bool = False) -> str:
    if pa.types.is_dictionary(t):
        v = t.value_type
        if top and (pa.types.is_string(v) or pa.types.is_large_string(v) or pa.types.is_binary(v)):
            return str(t)  # versioned so before: kept
        return _type_text(v)
    if pa.types.is_run_end_encoded(t):
        return _type_text(t.value_type)
    if pa.types.is_fixed_size_list(t):
        return f"fixed_size_list<{_type_text(t.value_type)}>[{t.list_size}]"
    if _is_list(t):
        return f"list<{_type_text(t.value_type)}>"
    if pa.types.is_map(t):
        return f"map<{_type_text(t.key_type)}, {_type_text(t.item_type)}{', keys_sorted' if t.keys_sorted else ''}>"
    if pa.types.is_struct(t):
        return "struct<" + ", ".join(f"{json.dumps(f.name)}: {_type_text(f.type)}" for f in t) + ">"
    return _PLAIN.get(str(t), str(t))


def dataset_version(schema: str, rows: int, s1: int, s2: int) -> str:
    doc = {"v": 1, "schema": schema, "rows": rows, "s1": s1 % 2**64, "s2": s2 % 2**64}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- write
def filesystem_of(uri: str) -> Any:
    """The pyarrow filesystem of a local path (``LocalFileSystem``) or a URI."""
    return pafs.LocalFileSystem() if "://" not in uri else pafs.FileSystem.from_uri(uri)[0]


def part_stats(batch: pa.Table, root: str, staging: str | None) -> dict[str, Any]:
    """Write one block as one parquet file in ``staging`` (unless None: the data stays where
    it is) and return its stats and digest (``file``, ``rows``, ``bytes``, ``s1``, ``s2``,
    ``schema``, ``arrow_schema``).  A column that cannot be versioned is a StorageError
    naming it, raised before anything is written."""
    import pyarrow.parquet as pq

    table = batch.replace_schema_metadata(None)
    s1, s2 = content_digest(table)  # first: a column that cannot be versioned writes no file
    name, size = "", 0
    if table.num_rows and staging is not None:
        store = ArtifactStore(root)
        name = f"part-{uuid.uuid4().hex}.parquet"
        path = store._path(f"{staging}/{name}")
        try:
            pq.write_table(table, path, filesystem=store.fs, use_dictionary=_dictionary_columns(table))
        except OSError as e:
            raise StorageError(f"storage {root!r}: cannot write {path}: {e}") from None
        size = store.fs.get_file_info(path).size
    return {
        "file": name,
        "rows": table.num_rows,
        "bytes": size,
        "s1": s1,
        "s2": s2,
        "schema": schema_text(table.schema),
        "arrow_schema": table.schema.serialize().to_pybytes(),
    }


def _dictionary_columns(table: pa.Table) -> list[str]:
    """The columns parquet should dictionary-encode: not floats (measured values rarely
    repeat: 2x the write time, larger files) and not columns whose first values are
    mostly distinct (ids, free text: parquet would build a dictionary and drop it)."""
    out = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_floating(f.type):
            continue
        if len(col) > 2 * _SAMPLE and not pa.types.is_dictionary(f.type) and not pa.types.is_nested(f.type):
            head = col.slice(0, _SAMPLE)
            if pc.count_distinct(head).as_py() > _SAMPLE // 2:
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

    def __init__(self, store: ArtifactStore, what: str = "dataset", sources: list[dict[str, Any]] | None = None):
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
        files = sorted((s["file"], int(s["rows"]), int(s["bytes"])) for s in parts if s["file"])
        size = sum(f[2] for f in files) if sources is None else sum(int(f["size"]) for f in sources)
        existing = _stored_manifest(store, final)
        if existing is None or "sources" in existing:  # an in-place manifest is rewritten: latest sources
            manifest: dict[str, Any] = {
                "version": version,
                "rows": rows,
                "bytes": size,
                "columns": {f.name: str(f.type) for f in arrow_schema},
                "arrow_schema": arrow_schema.serialize().to_pybytes().hex(),
                "files": [{"name": n, "rows": r, "bytes": b} for n, r, b in files],
            }
            if sources is not None:
                manifest["sources"] = sources
                store.fs.create_dir(store._path(final), recursive=True)
            else:
                _move_into_place(store, self.staging or "", final, [f[0] for f in files])
            with store.fs.open_output_stream(store._path(f"{final}/{MANIFEST}")) as f:
                f.write(json.dumps(manifest, indent=1).encode())
        return ArtifactRef(
            uri=store.uri_of(final),
            sha256=version,
            size=size,
            format=DATASET_FORMAT,
            schema={
                "columns": {f.name: str(f.type) for f in arrow_schema},
                "num_rows": rows,
                "files": len(files) if sources is None else len(sources),
                **({"in_place": True} if sources is not None else {}),
            },
        )

    def discard(self) -> None:
        if self.staging is not None:
            _delete_dir(self.store, self.staging)


def write_dataset(
    store: ArtifactStore, ds: Any, *, what: str = "dataset", sources: list[dict[str, Any]] | None = None
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


def _stored_manifest(store: ArtifactStore, rel_dir: str) -> dict[str, Any] | None:
    """The manifest of the dataset under ``rel_dir``, or None if there is none (yet)."""
    try:
        with store.fs.open_input_stream(store._path(f"{rel_dir}/{MANIFEST}")) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _move_into_place(store: ArtifactStore, staging: str, final: str, files: list[str]) -> None:
    """Move the written files from ``staging`` to ``final`` (a rename on local disks)."""
    src, dst = store._path(staging), store._path(final)
    try:
        if store.fs.get_file_info(dst).type == pafs.FileType.Directory:
            store.fs.delete_dir(dst)  # a crashed earlier write: no manifest, not a dataset
        store.fs.create_dir(store._path("datasets"), recursive=True)
        if is_local(store.root):
            store.fs.move(src, dst)
            store.fs.create_dir(src)  # so the caller's cleanup finds it
        else:
            store.fs.create_dir(dst, recursive=True)
            for name in files:
                store.fs.move(f"{src}/{name}", f"{dst}/{name}")
    except OSError as e:
        raise StorageError(f"storage {store.root!r}: cannot store dataset: {e}") from None


def _delete_dir(store: ArtifactStore, rel: str) -> None:
    try:
        store.fs.delete_dir(store._path(rel))
    except OSError:
        pass


# ----------------------------------------------------------------------------- read
def read_manifest(store: ArtifactStore, ref: ArtifactRef) -> dict[str, Any]:
    manifest = _stored_manifest(store, store._rel_of(ref.uri))
    if manifest is None:
        raise StorageError(f"dataset {ref.uri!r} is missing or incomplete (no readable {MANIFEST})")
    return manifest


def _manifest_schema(manifest: Mapping[str, Any]) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(manifest["arrow_schema"])))


def dataset_schema(store: ArtifactStore, ref: ArtifactRef) -> pa.Schema:
    """The dataset's Arrow schema, from its manifest (no data is read)."""
    return _manifest_schema(read_manifest(store, ref))


def _read_parts(batch: dict[str, Any], fs: str, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    filesystem = filesystem_of(fs)
    return pa.concat_tables([pq.read_table(str(p), filesystem=filesystem, columns=columns) for p in batch["path"]])


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
    the first file on the driver: 15-20 s per dataset on a fresh node, where V1 reads a
    known list of files at once.  Only ``read_parquet`` looks at the flag."""
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


def read_dataset(store: ArtifactStore, ref: ArtifactRef, columns: list[str] | None = None) -> Any:
    """The dataset as a lazy Ray Dataset (one block per file): nothing is read until it
    is consumed, and then by Ray Data tasks, never by this process.  ``columns``: read
    only these (parquet reads nothing else).

    The files are listed by the manifest, so reading skips Ray's file listing and
    schema sampling (seconds per dataset for ``read_parquet``).  An in-place dataset
    whose source files changed is an error naming them."""
    import ray.data

    from raypipe.exceptions import DataError

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
        # One block per file: Ray's default of ~200 tiny blocks costs 5x here.
        files = [f["path"] for f in sources]
        with parquet_v1():
            return ray.data.read_parquet(
                files, filesystem=filesystem_of(sources[0]["fs"]), override_num_blocks=len(files), columns=columns
            )
    base = store._path(store._rel_of(ref.uri))
    files = [f"{base}/{f['name']}" for f in manifest["files"]]
    if not files:
        empty = _manifest_schema(manifest).empty_table()
        return ray.data.from_arrow(empty.select(columns) if columns is not None else empty)
    return ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
        _read_parts, fn_kwargs={"fs": store.root, "columns": columns}, batch_size=1, batch_format="numpy"
    )


def dataset_exists(store: ArtifactStore, ref: ArtifactRef) -> bool:
    """Stored, and (for an in-place dataset) its source files unchanged."""
    try:
        manifest = _stored_manifest(store, store._rel_of(ref.uri))
        return manifest is not None and not changed_sources(manifest)
    except (StorageError, OSError):
        return False


__all__ = [
    "DATASET_FORMAT",
    "changed_sources",
    "filesystem_of",
    "arrow_schema_of",
    "column_words",
    "content_digest",
    "dataset_exists",
    "dataset_schema",
    "dataset_version",
    "is_ray_dataset",
    "mix64",
    "read_dataset",
    "read_manifest",
    "row_hashes",
    "schema_text",
    "storage_error_message",
    "write_dataset",
]
