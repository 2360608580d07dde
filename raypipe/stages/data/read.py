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
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raypipe.exceptions import DataError
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data.common import DataStage, slots, task_args, task_cpus

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


class CsvOptions(StageParams):
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    #: False: the files have no header line; columns are named ``column_names`` or f0, f1, ...
    header: bool = True
    column_names: list[str] | None = None


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
                    raise DataError(f"path not found: {root}")
                continue
            if any(c in root for c in "*?["):
                matches = sorted(glob.glob(root, recursive=True))
                if not matches:
                    raise DataError(f"path not found: no file matches {root}")
                found += [m for m in matches if os.path.isfile(m)]
            elif os.path.isdir(root):
                for dirpath, dirs, names in os.walk(root):
                    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
                    found += [os.path.join(dirpath, n) for n in sorted(names) if not n.startswith((".", "_"))]
            elif os.path.isfile(root):
                found.append(root)
            else:
                raise DataError(f"path not found: {root}")
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
            raise DataError(f"no files in {', '.join(self._roots())}")
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
        from raypipe.store.datasets import parquet_v1, write_dataset

        fs, files, fmt = self.files()
        if fmt == "parquet":
            _check_parquet_schemas(fs, files)
        elif fmt == "csv":
            _check_csv_headers(fs, files, self.params.csv)
        common = {"filesystem": fs, "num_cpus": task_cpus(ctx), "concurrency": slots(ctx, task_cpus(ctx))}
        if fmt == "parquet":
            # One block per file: Ray's default of ~200 blocks makes tiny tasks and files.
            with parquet_v1():
                ds = ray.data.read_parquet(files, columns=self.params.columns, override_num_blocks=len(files), **common)
        elif fmt == "csv":
            ds = ray.data.read_csv(files, **common, **_csv_args(self.params.csv))
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
            ref = write_dataset(ArtifactStore(ctx.storage), ds, what=_where(files), sources=sources)
        except Exception as e:  # noqa: BLE001 - find the file (and line) to blame
            culprit = _diagnose(fs, files, fmt, self.params.csv)
            if culprit:
                raise DataError(culprit) from None
            raise DataError(f"reading {_where(files)}: {_first_line(e)}") from None
        if not ref.schema or not ref.schema.get("num_rows"):
            raise DataError(f"empty dataset: no rows in {_where(files)}")
        return {"data": ref}


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
    cause = getattr(e, "cause", None) or e
    text = [ln for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _csv_args(opts: CsvOptions) -> dict[str, Any]:
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(
        column_names=opts.column_names,
        autogenerate_column_names=not opts.header and opts.column_names is None,
    )
    return {"parse_options": pacsv.ParseOptions(delimiter=opts.delimiter), "read_options": read}


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
