"""The checks of ``data.read``'s files: conflicting headers or schemas before a read, the malformed line after a failed one."""

from __future__ import annotations

import csv
import gzip
import io
import json
from typing import Any, Protocol

from raypipe.exceptions import DataError
from raypipe.stages.data.common import error_line
from raypipe.store.dataset_hash import schema_text


class CsvLayout(Protocol):
    """How CSV lines are split (:class:`~raypipe.stages.data.read_csv.CsvOptions` says it)."""

    delimiter: str
    header: bool
    column_names: list[str] | None


def check_parquet_schemas(fs: Any, files: list[str]) -> None:
    """Conflicting schemas between files, named (footers only are read)."""
    import pyarrow.parquet as pq

    first: tuple[str, str] | None = None
    for f in files:
        try:
            text = schema_text(pq.read_schema(f, filesystem=fs))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{f}: not a readable parquet file: {error_line(e)}") from None
        if first is None:
            first = (f, text)
        elif text != first[1]:
            raise DataError(
                f"files with conflicting schemas: {first[0]} has ({_brief(first[1])}) but {f} has ({_brief(text)})"
            )


def _brief(schema_json: str) -> str:
    return ", ".join(f"{n}: {t}" for n, t in json.loads(schema_json))


def check_csv_headers(fs: Any, files: list[str], opts: CsvLayout) -> None:
    """Files whose header (or column count) differs from the first file's, named."""
    if not opts.header or len(files) < 2:
        return
    first: tuple[str, list[str]] | None = None
    for f in files[:1000]:
        with open_text(fs, f) as fh:
            header = next(csv.reader(fh, delimiter=opts.delimiter), [])
        if first is None:
            first = (f, header)
        elif header != first[1]:
            raise DataError(
                f"files with conflicting schemas: {first[0]} has columns {first[1]} but {f} has columns {header}"
            )


def diagnose(fs: Any, files: list[str], fmt: str, opts: CsvLayout) -> str | None:
    """After a failed read: the first file (and line) that is malformed, as a message."""
    if fmt == "csv":
        for f in files:
            with open_text(fs, f) as fh:
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
            with open_text(fs, f) as fh:
                for i, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            json.loads(line)
                        except ValueError as e:
                            return f"{f}:{i}: malformed JSON line: {e}"
    return None


def find_value(fs: Any, path: str, opts: CsvLayout, index: int, value: str) -> int | None:
    """The line number (1-based) of the first row of ``path`` whose field ``index`` is ``value``."""
    with open_text(fs, path) as fh:
        reader = csv.reader(fh, delimiter=opts.delimiter)
        if opts.header:
            next(reader, None)
        for row in reader:
            if index < len(row) and row[index] == value:
                return reader.line_num
    return None


def open_text(fs: Any, path: str) -> io.TextIOBase:
    raw = fs.open_input_stream(path)
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="replace", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
