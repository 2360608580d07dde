"""``data.read``: parquet, CSV, JSON lines or numpy files into a versioned dataset.

``path`` is a file, a folder, a glob, or a list of them; local (relative paths are
taken from the directory ``raypipe`` runs in) or a URI that ``pyarrow.fs``
understands (``s3://``, ``gs://``...).  With ``package``, ``path`` is a file
bundled inside that installed Python package (``package: sklearn.datasets``,
``path: data/iris.csv``).  The files' sizes and modification times go into the
cache key, so an edited file is read again.  CSV files are :mod:`.read_csv`'s (column
types, streaming, conversion errors); the checks of the files before and after a read
are :mod:`.read_checks`'s.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.resources
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raypipe.config.errors import DOTTED_NAME_RE
from raypipe.exceptions import DataError, InputNotFound
from raypipe.failures import is_system_failure
from raypipe.stages.base import StageContext, StageParams
from raypipe.stages.data.common import DataStage, error_line, exception_chain, slots, task_args, task_cpus
from raypipe.stages.data.read_checks import check_csv_headers, check_parquet_schemas, diagnose
from raypipe.stages.data.read_csv import (
    CsvOptions,
    arrow_type,
    conversion_in,
    csv_error_in,
    infer_csv_types,
    read_csv_files,
)
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.datasets import filesystem_of, parquet_v1, storage_error_message, write_dataset

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


class ReadParams(StageParams):
    path: str | list[str]
    #: An installed Python package whose bundled files ``path`` names (a dotted module name).
    package: Annotated[str, Field(pattern=DOTTED_NAME_RE)] | None = None
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
    code_modules = ("raypipe.stages.data.read_csv", "raypipe.stages.data.read_checks")
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
        except (ImportError, TypeError, ValueError) as e:
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
            fmt: str = self.params.format
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
            except (ImportError, TypeError, ValueError) as e:
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

        fs, files, fmt = self.files()
        if fmt == "parquet":
            check_parquet_schemas(fs, files)
        elif fmt == "csv":
            check_csv_headers(fs, files, self.params.csv)
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
                _read_json_lines,  # type: ignore[arg-type]  # Ray's stub wants a one-argument fn; fn_kwargs passes the rest
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
        except Exception as e:
            ctx.detail(f"reading {_where(files)} failed; Ray Data said", _chain_text(e))
            if is_system_failure(e):  # a lost worker or node: another attempt may pass
                raise
            culprit = diagnose(fs, files, fmt, self.params.csv) or storage_error_message(e)
            if culprit:
                raise DataError(culprit) from None
            raise DataError(f"reading {_where(files)}: {error_line(e)}") from None
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

        opts = self.params.csv
        types = infer_csv_types(fs, files[0], opts)
        for attempt in range(MAX_TEXT_FALLBACKS + 1):
            ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files)).map_batches(
                read_csv_files,  # type: ignore[arg-type]  # Ray's stub wants a one-argument fn; fn_kwargs passes the rest
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
            except Exception as e:
                text = _chain_text(e)
                ctx.detail(f"reading {_where(files)} failed; Ray Data said", text)
                if is_system_failure(e):
                    raise
                bad = conversion_in(text)
                if bad is not None and bad[1] not in opts.column_types and attempt < MAX_TEXT_FALLBACKS:
                    ctx.log.warning("%s; reading column %r as text", bad[0], bad[1])
                    types[bad[1]] = arrow_type("string")
                    continue
                culprit = bad[0] if bad is not None else csv_error_in(text) or storage_error_message(e)
                raise DataError(culprit or f"reading {_where(files)}: {error_line(e)}") from None
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

    fs = filesystem_of(next((r for r in roots if "://" in r), ""))
    tables = []
    for path in batch["path"]:
        with fs.open_input_stream(str(path), compression="detect") as f:
            tables.append(pajson.read_json(f))
    return pa.concat_tables(tables, promote_options="permissive")


def _where(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"


def _chain_text(e: BaseException) -> str:
    return "\n".join(str(x) for x in exception_chain(e))
