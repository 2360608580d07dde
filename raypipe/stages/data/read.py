"""``data.read``: parquet, CSV, JSON lines or numpy files into a versioned dataset.

``path`` is a file, a folder, a glob, or a list of them; local (relative paths are
taken from the directory ``raypipe`` runs in) or a URI that ``pyarrow.fs``
understands (``s3://``, ``gs://``...).  With ``package``, ``path`` is a file
bundled inside that installed Python package (``package: sklearn.datasets``,
``path: data/iris.csv``).  The files' sizes and modification times go into the
cache key, so an edited file is read again.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import importlib.resources
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raypipe.exceptions import DataError, InputNotFound
from raypipe.failures import is_system_failure
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data.common import DataStage, error_line, slots, task_args, task_cpus

Format = Literal["auto", "parquet", "csv", "json", "numpy"]
_EXT = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".npy": "numpy",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


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


class ReadParams(StageParams):
    path: str | list[str]
    package: str | None = None
    format: Format = "auto"
    csv: CsvOptions = Field(default_factory=CsvOptions)
    #: Keep only these columns.
    columns: list[str] | None = None
    #: Version parquet files where they are (no copy; ``columns`` always copies).
    #: False: snapshot them into the artifact store.  Other formats are converted.
    in_place: bool = True

    @model_validator(mode="after")
    def _absolute(self) -> ReadParams:
        """Local paths become absolute here, on the driver: a worker's cwd may differ."""
        paths = [self.path] if isinstance(self.path, str) else self.path
        if not paths or any(not p for p in paths):
            raise ValueError("path: give a file, folder, glob or URI")
        if self.package is None:
            out = [p if "://" in p else os.path.abspath(os.path.expanduser(p)) for p in paths]
            self.path = out[0] if isinstance(self.path, str) else out
        return self


def _format_of(path: str) -> str | None:
    name = path.lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    return _EXT.get(os.path.splitext(name)[1])


class ReadStage(DataStage):
    Params = ReadParams
    n_inputs = 0
    params: ReadParams

    def outputs(self) -> list[str]:
        return ["data"]

    # -- files
    def _roots(self) -> list[str]:
        paths = [self.params.path] if isinstance(self.params.path, str) else list(self.params.path)
        if self.params.package is None:
            return paths
        try:
            base = importlib.resources.files(self.params.package)
        except (ModuleNotFoundError, TypeError) as e:
            raise DataError(f"package {self.params.package!r} is not installed: {e}") from None
        return [str(base / p) for p in paths]

    def files(self) -> tuple[Any, list[str], str]:
        """(filesystem, matching files sorted, format); DataError if none or mixed."""
        import pyarrow.fs as pafs

        found: list[str] = []
        fs: Any = pafs.LocalFileSystem()
        for root in self._roots():
            if "://" in root:
                fs, base = pafs.FileSystem.from_uri(root)
                info = fs.get_file_info(base)
                if info.type == pafs.FileType.Directory:
                    sel = pafs.FileSelector(base, recursive=True)
                    found += [f.path for f in fs.get_file_info(sel) if f.type == pafs.FileType.File]
                elif info.type == pafs.FileType.File:
                    found.append(base)
                else:
                    raise InputNotFound(f"path not found: {root}")
                continue
            if any(c in root for c in "*?["):
                matches = sorted(glob.glob(root, recursive=True))
                if not matches:
                    raise InputNotFound(f"path not found: no file matches {root}")
                found += [m for m in matches if os.path.isfile(m)]
            elif os.path.isdir(root):
                for dirpath, dirs, names in os.walk(root):
                    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                    found += [os.path.join(dirpath, n) for n in sorted(names) if not n.startswith((".", "_"))]
            elif os.path.isfile(root):
                found.append(root)
            else:
                raise InputNotFound(f"path not found: {root}")
        if self.params.format != "auto":
            fmt = self.params.format
            files = found
        else:
            kinds = {f: _format_of(f) for f in found}
            files = [f for f, k in kinds.items() if k is not None]
            formats = sorted({k for k in kinds.values() if k is not None})
            if len(formats) > 1:
                ex = {k: next(f for f in files if kinds[f] == k) for k in formats}
                raise DataError(
                    "files of several formats: " + ", ".join(f"{k} ({ex[k]})" for k in formats) + "; set `format`"
                )
            if not formats:
                raise DataError(
                    f"no parquet, CSV, JSON lines or .npy files in {', '.join(self._roots())}"
                    + (f" (found e.g. {found[0]}); set `format`" if found else "")
                )
            fmt = formats[0]
        if not files:
            raise InputNotFound(f"no files in {', '.join(self._roots())}")
        return fs, sorted(set(files)), fmt

    def check(self, input_names: list[str]) -> list[tuple[tuple[str | int, ...], str]]:
        issues = super().check(input_names)
        if self.params.package is not None:
            try:
                importlib.resources.files(self.params.package)
            except (ModuleNotFoundError, TypeError) as e:
                issues.append((("package",), f"package {self.params.package!r} is not installed: {e}"))
                return issues
        local = [r for r in self._roots() if "://" not in r]
        if len(local) == len(self._roots()):  # URIs are checked when the stage runs
            try:
                self.files()
            except DataError as e:
                issues.append((("path",), str(e)))
        return issues

    def source_files(self) -> list[dict[str, Any]] | None:
        try:
            fs, files, _ = self.files()
        except DataError:  # reported when the stage runs
            return None
        return [{"path": i.path, "size": i.size, "mtime_ns": i.mtime_ns} for i in fs.get_file_info(files)]

    def source_fingerprint(self) -> str | None:
        try:
            fs, files, fmt = self.files()
        except DataError as e:  # reported when the stage runs
            return f"error:{e}"
        h = hashlib.sha256(fmt.encode())
        for info in fs.get_file_info(files):
            h.update(f"{info.path}\0{info.size}\0{info.mtime_ns}\n".encode())
        return h.hexdigest()

    # -- reading
    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import ray.data

        from raypipe.store.artifacts import ArtifactStore
        from raypipe.store.datasets import parquet_v1, storage_error_message, write_dataset

        fs, files, fmt = self.files()
        if fmt == "parquet":
            _check_parquet_schemas(fs, files)
        elif fmt == "csv":
            _check_csv_headers(fs, files, self.params.csv)
        common = {"filesystem": fs, "num_cpus": task_cpus(ctx), "concurrency": slots(ctx, task_cpus(ctx))}
        store = ArtifactStore(ctx.storage)
        if fmt == "csv":
            return {"data": self._read_csv(ctx, store, fs, files, common)}
        if fmt == "parquet":
            # One block per file: Ray's default of ~200 blocks makes tiny tasks and files.
            with parquet_v1():
                ds = ray.data.read_parquet(files, columns=self.params.columns, override_num_blocks=len(files), **common)
        elif fmt == "json":  # Ray's read_json parses through pandas, which rounds floats
            ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
                _read_json_lines,
                fn_kwargs={"roots": self._roots()},
                batch_size=1,
                batch_format="numpy",
                **task_args(ctx),
            )
        else:
            ds = ray.data.read_numpy(files, filesystem=fs)
        if self.params.columns is not None and fmt != "parquet":
            ds = ds.select_columns(self.params.columns)
        sources = None
        if fmt == "parquet" and self.params.columns is None and self.params.in_place:
            root = next((r for r in self._roots() if "://" in r), "")
            sources = [
                {"path": i.path, "size": i.size, "mtime_ns": i.mtime_ns, "fs": root} for i in fs.get_file_info(files)
            ]
        try:
            ref = write_dataset(store, ds, what=_where(files), sources=sources)
        except Exception as e:  # noqa: BLE001 - find the file (and line) to blame
            ctx.detail(f"reading {_where(files)} failed; Ray Data said", _chain_text(e))
            if is_system_failure(e):  # a lost worker or node: another attempt may pass
                raise
            culprit = _diagnose(fs, files, fmt, self.params.csv) or storage_error_message(e)
            if culprit:
                raise DataError(culprit) from None
            raise DataError(f"reading {_where(files)}: {_first_line(e)}") from None
        return {"data": _not_empty(ref, files)}

    def _read_csv(self, ctx: StageContext, store: Any, fs: Any, files: list[str], common: dict[str, Any]) -> Any:
        """CSV files with one set of column types for every file (inferred from the start of
        the first file, ``csv.column_types`` first), so the dataset is the same however the
        rows are spread over files.  A value that does not convert to its column's inferred
        type makes that column text, and the read starts again (a warning in the stage's
        log says which value where; declare the column's type in ``data.validate`` to check
        and convert it); a value that breaks a type the user gave in ``csv.column_types`` is
        an error naming the file, line, column and expected type.  Files are read by Ray
        Data tasks with Arrow's streaming reader (no file is read whole into memory)."""
        import ray.data

        from raypipe.store.datasets import storage_error_message, write_dataset

        opts = self.params.csv
        types = infer_csv_types(fs, files[0], opts)
        for attempt in range(MAX_TEXT_FALLBACKS + 1):
            ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
                _read_csv_files,
                fn_kwargs={"fs": fs, "opts": opts, "types": types},
                batch_size=1,
                batch_format="numpy",
                **task_args(ctx),
            )
            if self.params.columns is not None:
                ds = ds.select_columns(self.params.columns)
            try:
                with _quiet_ray_data():  # a failed attempt is explained below, not in Ray's words
                    return _not_empty(write_dataset(store, ds, what=_where(files)), files)
            except Exception as e:  # noqa: BLE001 - find the file, line and column to blame
                text = _chain_text(e)
                ctx.detail(f"reading {_where(files)} failed; Ray Data said", text)
                if is_system_failure(e):
                    raise
                bad = _conversion_in(text)
                if bad is not None and bad[1] not in opts.column_types and attempt < MAX_TEXT_FALLBACKS:
                    ctx.log.warning("%s; reading column %r as text", bad[0], bad[1])
                    types[bad[1]] = _arrow_type("string")
                    continue
                culprit = bad[0] if bad is not None else _csv_error_in(text) or storage_error_message(e)
                raise DataError(culprit or f"reading {_where(files)}: {_first_line(e)}") from None
        raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own error log off while inside (its text goes to the stage's log instead)."""
    import logging

    log = logging.getLogger("ray.data")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


#: Columns a CSV read turns into text after a value did not convert, before it gives up.
MAX_TEXT_FALLBACKS = 8


def _not_empty(ref: Any, files: list[str]) -> Any:
    if not ref.schema or not ref.schema.get("num_rows"):
        raise DataError(f"empty dataset: no rows in {_where(files)}")
    return ref


def _read_json_lines(batch: dict[str, Any], roots: list[str]) -> Any:
    """JSON lines files with Arrow's own parser (exact floats, nested types kept)."""
    import pyarrow as pa
    import pyarrow.json as pajson

    from raypipe.store.datasets import filesystem_of

    fs = filesystem_of(next((r for r in roots if "://" in r), ""))
    tables = []
    for path in batch["path"]:
        with fs.open_input_stream(str(path), compression="detect") as f:
            tables.append(pajson.read_json(f))
    return pa.concat_tables(tables, promote_options="permissive")


def _where(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"


def _first_line(e: BaseException) -> str:
    return error_line(e)


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


def _arrow_type(name: str) -> Any:
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
        culprit = _diagnose(fs, [path], "csv", opts)
        raise DataError(culprit or f"{path}: not a readable CSV file: {_first_line(e)}") from None
    for n, t in types.items():
        if pa.types.is_null(t):
            types[n] = pa.string()
    unknown = [n for n in opts.column_types if n not in types]
    if unknown:
        raise DataError(
            f"csv.column_types: {path} has no column {', '.join(map(repr, unknown))}; it has: {', '.join(types)}"
        )
    types.update({n: _arrow_type(t) for n, t in opts.column_types.items()})
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
_ARROW_CONVERSION = re.compile(r"In CSV column #(\d+):(?: Row #\d+:)? CSV conversion error to ([^:]+): invalid value '(.*)'")
_CONVERSION_ERROR = re.compile(r"CsvConversionError: (.*?: column ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): expected .*)")
_CSV_ERROR = re.compile(r"raypipe\.exceptions\.DataError: (.*)")
#: Arrow tables a CSV read task yields at most (rows of one file are cut into blocks of this size).
CSV_BLOCK_BYTES = 64 << 20


class CsvConversionError(DataError):
    """A CSV value that does not convert to its column's type; the message names the file,
    line, column, expected type and value."""


def _read_csv_files(batch: dict[str, Any], fs: Any, opts: CsvOptions, types: Mapping[str, Any]) -> Any:
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
        line = _find_value(fs, path, opts, index, value)
        where = f"{path}:{line}" if line else path
        want = next((w for k, w in _EXPECTED.items() if type_name.startswith(k)), f"a {type_name} value")
        return CsvConversionError(f"{where}: column {column!r}: expected {want} ({type_name}), got {value!r}")
    return DataError(_diagnose(fs, [path], "csv", opts) or f"{path}: not a readable CSV file: {_first_line(e)}")


def _conversion_in(text: str) -> tuple[str, str] | None:
    """(message, column) of a :class:`CsvConversionError` in an exception's text."""
    import ast

    m = _CONVERSION_ERROR.search(text)
    return None if m is None else (m.group(1), ast.literal_eval(m.group(2)))


def _csv_error_in(text: str) -> str | None:
    m = _CSV_ERROR.search(text)
    return None if m is None else m.group(1)


def _chain_text(e: BaseException) -> str:
    parts, todo, seen = [], [e], 0
    while todo and seen < 20:
        x = todo.pop()
        seen += 1
        parts.append(str(x))
        todo += [c for c in (getattr(x, "cause", None), x.__cause__, x.__context__) if isinstance(c, BaseException)]
    return "\n".join(parts)


def _find_value(fs: Any, path: str, opts: CsvOptions, index: int, value: str) -> int | None:
    """The line number (1-based) of the first row of ``path`` whose field ``index`` is ``value``."""
    with _open_text(fs, path) as fh:
        reader = csv.reader(fh, delimiter=opts.delimiter)
        if opts.header:
            next(reader, None)
        for row in reader:
            if index < len(row) and row[index] == value:
                return reader.line_num
    return None


def _check_parquet_schemas(fs: Any, files: list[str]) -> None:
    """Conflicting schemas between files, named (footers only are read)."""
    import pyarrow.parquet as pq

    from raypipe.store.datasets import schema_text

    first: tuple[str, str] | None = None
    for f in files:
        try:
            text = schema_text(pq.read_schema(f, filesystem=fs))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{f}: not a readable parquet file: {_first_line(e)}") from None
        if first is None:
            first = (f, text)
        elif text != first[1]:
            raise DataError(
                f"files with conflicting schemas: {first[0]} has ({_brief(first[1])}) but {f} has ({_brief(text)})"
            )


def _brief(schema_json: str) -> str:
    return ", ".join(f"{n}: {t}" for n, t in json.loads(schema_json))


def _open_text(fs: Any, path: str) -> io.TextIOBase:
    raw = fs.open_input_stream(path)
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="replace", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def _check_csv_headers(fs: Any, files: list[str], opts: CsvOptions) -> None:
    """Files whose header (or column count) differs from the first file's, named."""
    if not opts.header or len(files) < 2:
        return
    first: tuple[str, list[str]] | None = None
    for f in files[:1000]:
        with _open_text(fs, f) as fh:
            header = next(csv.reader(fh, delimiter=opts.delimiter), [])
        if first is None:
            first = (f, header)
        elif header != first[1]:
            raise DataError(
                f"files with conflicting schemas: {first[0]} has columns {first[1]} but {f} has columns {header}"
            )


def _diagnose(fs: Any, files: list[str], fmt: str, opts: CsvOptions) -> str | None:
    """After a failed read: the first file (and line) that is malformed, as a message."""
    if fmt == "csv":
        for f in files:
            with _open_text(fs, f) as fh:
                reader = csv.reader(fh, delimiter=opts.delimiter)
                width = None if opts.column_names is None else len(opts.column_names)
                for row in reader:
                    if not row:
                        continue
                    if width is None:
                        width = len(row)
                    elif len(row) != width:
                        return f"{f}:{reader.line_num}: malformed CSV line: expected {width} fields, got {len(row)}"
    elif fmt == "json":
        for f in files:
            with _open_text(fs, f) as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            json.loads(line)
                        except ValueError as e:
                            return f"{f}:{i}: malformed JSON line: {e}"
    return None
