"""Dataset versions: a canonical word per value of every Arrow type, row hashes, content digests, schema text.

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
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raypipe.exceptions import StorageError

__all__ = [
    "DISTINCT_SAMPLE",
    "column_words",
    "content_digest",
    "dataset_version",
    "mix64",
    "row_hashes",
    "schema_text",
]

_U64 = np.uint64
_SEED = _U64(0xCBF29CE484222325)
_PRIME = _U64(0x100000001B3)
_NULL = _U64(0x9E3779B97F4A7C15)
_SALT = _U64(0xD6E8FEB86659FD93)
_LIST = _U64(0x8EBC6AF09C88C6E3)
_STRUCT = _U64(0x589965CC75374CC3)
_POS = _U64(0x1D8E4E27C47D124F)


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
    if len(a) > 2 * DISTINCT_SAMPLE and pc.count_distinct(a.slice(0, DISTINCT_SAMPLE)).as_py() > DISTINCT_SAMPLE // 2:
        # mostly distinct (ids, free text): encoding first would cost more than the hashing itself
        words = pd.util.hash_array(a.to_numpy(zero_copy_only=False), categorize=False).astype(_U64)
        return np.where(np.asarray(a.is_valid()), words, _NULL) if a.null_count else words
    enc = a.dictionary_encode()
    if len(enc.dictionary) == 0:  # empty or all null
        return np.full(len(a), _NULL, dtype=_U64)
    words = pd.util.hash_array(enc.dictionary.to_numpy(zero_copy_only=False), categorize=False).astype(_U64)
    return words[enc.indices.fill_null(0).to_numpy(zero_copy_only=False)]


#: Values looked at to tell a mostly-distinct text column (hashed value by value) from a
#: repetitive one (hashed once per distinct value); the words are the same either way.
DISTINCT_SAMPLE = 2048


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
