"""CSV files for ``data.read``: one set of column types for every file, streamed in blocks, conversion errors by name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, model_validator

from raypipe.exceptions import DataError
from raypipe.stages.base import StageParams
from raypipe.stages.data.common import error_line
from raypipe.stages.data.read_checks import diagnose, find_value

#: Type names ``csv.column_types`` takes, and their Arrow types.
CSV_TYPES: dict[str, str] = {
    "int": "int64",
    "int32": "int32",
    "int64": "int64",
    "uint64": "uint64",
    "float": "float64",
    "float32": "float32",
    "float64": "float64",
    "double": "float64",
    "number": "float64",
    "bool": "bool",
    "string": "string",
    "text": "string",
    "category": "category",
    "date": "date32",
    "date32": "date32",
    "timestamp": "timestamp[us]",
    "timestamp[s]": "timestamp[s]",
    "timestamp[ms]": "timestamp[ms]",
    "timestamp[us]": "timestamp[us]",
    "timestamp[ns]": "timestamp[ns]",
    "timestamp_utc": "timestamp[us, tz=UTC]",
}


class CsvOptions(StageParams):
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    #: False: the files have no header line; columns are named ``column_names`` or f0, f1, ...
    header: bool = True
    column_names: list[str] | None = None
    #: Column types that inference must not choose (e.g. ``{zip: string, ref: uint64}``);
    #: any of :data:`CSV_TYPES` (``category`` reads text dictionary-encoded).
    column_types: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _types(self) -> CsvOptions:
        for name, t in self.column_types.items():
            if t not in CSV_TYPES:
                raise ValueError(f"column_types.{name}: unknown type {t!r}; expected one of {', '.join(CSV_TYPES)}")
        return self


def _read_options(opts: CsvOptions, block_size: int | None = None) -> Any:
    import pyarrow.csv as pacsv

    kw: dict[str, Any] = {"use_threads": False} if block_size is None else {"block_size": block_size}
    return pacsv.ReadOptions(
        column_names=opts.column_names,
        autogenerate_column_names=not opts.header and opts.column_names is None,
        **kw,
    )


def _convert_options(types: Mapping[str, Any] | None) -> Any:
    """Empty text is null in every column (as pandas reads it), with the given types."""
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(column_types=dict(types or {}), strings_can_be_null=True)


def arrow_type(name: str) -> Any:
    import pyarrow as pa

    t = CSV_TYPES[name]
    if t == "category":
        return pa.dictionary(pa.int32(), pa.string())
    if t.startswith("timestamp"):
        unit = t[len("timestamp[") :].split(",")[0].rstrip("]")
        return pa.timestamp(unit, tz="UTC" if "tz=UTC" in t else None)
    return {"date32": pa.date32(), "bool": pa.bool_(), "string": pa.string()}.get(t) or pa.type_for_alias(t)


#: Bytes of the first file that CSV type inference looks at (Arrow's streaming reader,
#: which Ray Data uses, infers from its first block too).
INFER_BYTES = 1 << 20
_UINT_TEXT = re.compile(r"^\+?\d+$")


def _open_binary(fs: Any, path: str) -> Any:
    return fs.open_input_stream(path, compression="detect")


def infer_csv_types(fs: Any, path: str, opts: CsvOptions) -> dict[str, Any]:
    """Arrow types of every column, inferred from the first :data:`INFER_BYTES` of ``path``
    as Arrow does, then corrected: a column with no value there is text; integers beyond
    int64 (Arrow makes them float64, losing digits) are uint64 when they fit; the types in
    ``csv.column_types`` win."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def first_block(types: Mapping[str, Any] | None) -> tuple[Any, Any]:
        with _open_binary(fs, path) as f:
            reader = pacsv.open_csv(
                f,
                read_options=_read_options(opts, INFER_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=opts.delimiter),
                convert_options=_convert_options(types),
            )
            try:
                return reader.schema, reader.read_next_batch()
            except StopIteration:
                return reader.schema, None

    try:
        schema, _ = first_block(None)
        types: dict[str, Any] = {f.name: f.type for f in schema}
        floats = [n for n, t in types.items() if pa.types.is_floating(t) and n not in opts.column_types]
        if floats:
            _, text = first_block({n: pa.string() for n in floats})
            for n in floats:
                values = [v for v in (text.column(n).to_pylist() if text is not None else []) if v is not None]
                if values and all(_UINT_TEXT.match(v) for v in values) and max(int(v) for v in values) >= 2**63:
                    if max(int(v) for v in values) < 2**64:
                        types[n] = pa.uint64()
    except pa.ArrowInvalid as e:
        culprit = diagnose(fs, [path], "csv", opts)
        raise DataError(culprit or f"{path}: not a readable CSV file: {error_line(e)}") from None
    for n, t in types.items():
        if pa.types.is_null(t):
            types[n] = pa.string()
    unknown = [n for n in opts.column_types if n not in types]
    if unknown:
        raise DataError(
            f"csv.column_types: {path} has no column {', '.join(map(repr, unknown))}; it has: {', '.join(types)}"
        )
    types.update({n: arrow_type(t) for n, t in opts.column_types.items()})
    return types


_EXPECTED = {
    "int": "an integer",
    "uint": "a non-negative integer",
    "double": "a number",
    "float": "a number",
    "bool": "true or false",
    "date": "an ISO date (YYYY-MM-DD)",
    "timestamp": "an ISO date-time",
}
_ARROW_CONVERSION = re.compile(
    r"In CSV column #(\d+):(?: Row #\d+:)? CSV conversion error to ([^:]+): invalid value '(.*)'"
)
_CONVERSION_ERROR = re.compile(
    r"CsvConversionError: (.*?: column ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): expected .*)"
)
_CSV_ERROR = re.compile(r"raypipe\.exceptions\.DataError: (.*)")
#: Arrow tables a CSV read task yields at most (rows of one file are cut into blocks of this size).
CSV_BLOCK_BYTES = 64 << 20


class CsvConversionError(DataError):
    """A CSV value that does not convert to its column's type; the message names the file,
    line, column, expected type and value."""


def read_csv_files(batch: dict[str, Any], fs: Any, opts: CsvOptions, types: Mapping[str, Any]) -> Any:
    """Ray Data ``map_batches`` generator: the rows of each CSV file in ``batch["path"]``
    with the given column types, in blocks of up to :data:`CSV_BLOCK_BYTES`."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = list(types)
    for path in batch["path"]:
        path = str(path)
        with _open_binary(fs, path) as f:
            try:  # opening reads (and converts) the first block
                reader = pacsv.open_csv(
                    f,
                    read_options=_read_options(opts, 4 << 20),
                    parse_options=pacsv.ParseOptions(delimiter=opts.delimiter),
                    convert_options=_convert_options(types),
                )
            except pa.ArrowInvalid as e:
                raise _csv_error(e, fs, path, opts, names) from None
            pending, size = [], 0
            while True:
                try:
                    b = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as e:
                    raise _csv_error(e, fs, path, opts, names) from None
                pending.append(b)
                size += b.nbytes
                if size >= CSV_BLOCK_BYTES:
                    yield pa.Table.from_batches(pending)
                    pending, size = [], 0
            if pending:
                yield pa.Table.from_batches(pending)


def _csv_error(e: BaseException, fs: Any, path: str, opts: CsvOptions, columns: list[str]) -> DataError:
    """What went wrong in ``path``, by name: a value of the wrong type (file, line, column,
    expected type) or a malformed line."""
    text = str(e)
    m = _ARROW_CONVERSION.search(text)
    if m is not None:
        index, type_name, value = int(m.group(1)), m.group(2).strip(), m.group(3)
        column = columns[index] if index < len(columns) else f"#{index}"
        line = find_value(fs, path, opts, index, value)
        where = f"{path}:{line}" if line else path
        want = next((w for k, w in _EXPECTED.items() if type_name.startswith(k)), f"a {type_name} value")
        return CsvConversionError(f"{where}: column {column!r}: expected {want} ({type_name}), got {value!r}")
    return DataError(diagnose(fs, [path], "csv", opts) or f"{path}: not a readable CSV file: {error_line(e)}")


def conversion_in(text: str) -> tuple[str, str] | None:
    """(message, column) of a :class:`CsvConversionError` in an exception's text."""
    import ast

    m = _CONVERSION_ERROR.search(text)
    return None if m is None else (m.group(1), ast.literal_eval(m.group(2)))


def csv_error_in(text: str) -> str | None:
    m = _CSV_ERROR.search(text)
    return None if m is None else m.group(1)
