"""Previews of stored artifacts and stage logs, read from the storage root for a page.

A preview is a plain dict (its ``kind`` says how a page shows it; the ``/api`` twins return
it as it is): ``table`` (the head of a dataset or a parquet file: columns, types, rows),
``json`` (pretty text), ``markdown`` (a report: the page renders a safe subset), ``text``,
``image`` (a PNG, served from ``/artifacts/SHA.png``), ``meta`` (what the record says of a
model, an array, a pickle: never unpickled), ``error``.  Nothing is loaded whole: tables read
their first rows, text and JSON at most :data:`MAX_BYTES`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.exceptions import RaypipeError, StorageError
from raypipe.failures import strip_ansi
from raypipe.store.datasets import filesystem_of, read_manifest
from raypipe.store.logs import log_location
from raypipe.store.logs import read_log as read_log_chunk
from raypipe.store.objects import ArtifactRef, ObjectStore, is_local, root_of

#: Largest JSON, text or image artifact previewed.
MAX_BYTES = 2 * 1024 * 1024
#: Most characters of pretty JSON or text shown.
MAX_CHARS = 64 * 1024
#: Rows and columns of a table's head.
HEAD_ROWS = 20
MAX_COLUMNS = 80
#: Most of a log shown: its end.
LOG_TAIL_BYTES = 256 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (int, bool)) or v is None:
        return v
    text = str(v)
    return text if len(text) <= 120 else text[:119] + "…"


def _head(fs: Any, path: str, rows: int) -> tuple[list[str], list[str], list[list[Any]], int]:
    """Column names, types, the first ``rows`` rows (at most :data:`MAX_COLUMNS` columns) and
    the row count of one parquet file."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        cols = schema.names[:MAX_COLUMNS]
        head: list[dict[str, Any]] = []
        for batch in pf.iter_batches(batch_size=rows, columns=cols):
            head = batch.to_pylist()[:rows]
            break
        types = [str(schema.field(c).type) for c in cols]
        return cols, types, [[_cell(r[c]) for c in cols] for r in head], pf.metadata.num_rows


def table_preview(ref: ArtifactRef, rows: int = HEAD_ROWS) -> dict[str, Any]:
    """The head of a dataset (its first file) or of a parquet artifact."""
    store = ObjectStore(root_of(ref.uri))
    if ref.format == "dataset":
        manifest = read_manifest(store, ref)
        sources = manifest.get("sources") or []
        if sources:
            fs, first = filesystem_of(sources[0]["fs"]), sources[0]["path"]
        elif manifest.get("files"):
            fs, first = store.fs, store._path(store._rel_of(ref.uri)) + "/" + manifest["files"][0]["name"]
        else:
            return {"kind": "table", "columns": [], "types": [], "rows": [], "num_rows": 0, "note": "empty"}
        total = (ref.schema or {}).get("num_rows")
        files = len(sources or manifest.get("files") or [])
    else:
        fs, first = store.fs, store._path(store._rel_of(ref.uri))
        total, files = None, 1
    cols, types, head, in_file = _head(fs, first, rows)
    schema = (
        pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(manifest["arrow_schema"]))) if ref.format == "dataset" else None
    )
    width = len(schema.names) if schema is not None else len(cols)
    note = f"first {len(head)} rows" + (f" of its first file ({files} files)" if files > 1 else "")
    if width > len(cols):
        note += f"; first {len(cols)} of {width} columns"
    return {
        "kind": "table",
        "columns": cols,
        "types": types,
        "rows": head,
        "num_rows": total if total is not None else in_file,
        "note": note,
    }


def records_table(value: Any, rows: int = HEAD_ROWS) -> dict[str, Any] | None:
    """A JSON list of flat objects (a training history, per-class scores) as a table; None
    for any other value."""
    if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
        return None
    if any(isinstance(v, (dict, list)) for r in value for v in r.values()):
        return None
    cols = list(dict.fromkeys(k for r in value for k in r))[:MAX_COLUMNS]
    head = [[_cell(r.get(c)) for c in cols] for r in value[:rows]]
    note = f"first {len(head)} records" if len(value) > rows else "every record"
    return {
        "kind": "table",
        "columns": cols,
        "types": ["" for _ in cols],
        "rows": head,
        "num_rows": len(value),
        "note": note,
    }


def _looks_markdown(name: str, text: str) -> bool:
    lowered = name.lower()
    return any(w in lowered for w in ("report", "readme", "markdown")) or text.lstrip().startswith("#")


def _text_kind(name: str, text: str) -> dict[str, Any]:
    if _looks_markdown(name, text):
        return {"kind": "markdown", "text": text[: MAX_CHARS * 4]}
    cut = len(text) > MAX_CHARS
    return {"kind": "text", "text": text[:MAX_CHARS], "note": f"first {MAX_CHARS:,} characters" if cut else ""}


def model_meta(schema: dict[str, Any]) -> dict[str, Any]:
    """What a page shows of a model package's metadata."""
    features = schema.get("features") or []
    shown = {
        "task": schema.get("task"),
        "label": schema.get("label"),
        "features": f"{len(features)}: " + ", ".join(map(str, features[:8])) + (" …" if len(features) > 8 else ""),
        "classes": len(schema.get("classes") or []) or None,
        "metrics": schema.get("metrics"),
        "trained_by": schema.get("trained_by"),
    }
    return {k: v for k, v in shown.items() if v not in (None, "", {}, "0: ")}


def preview(ref: ArtifactRef, name: str, rows: int = HEAD_ROWS) -> dict[str, Any]:
    """How a page shows the artifact ``ref`` (the output or input ``name``)."""
    try:
        return _preview(ref, name, rows)
    except (RaypipeError, OSError, pa.ArrowException, ValueError, KeyError, StopIteration) as e:
        return {"kind": "error", "message": f"cannot preview: {e}"}


def _preview(ref: ArtifactRef, name: str, rows: int) -> dict[str, Any]:
    fmt = ref.format
    schema = ref.schema or {}
    if fmt in ("dataset", "parquet", "parquet-arrow"):
        return table_preview(ref, rows)
    if fmt == "model":
        return {"kind": "meta", "fields": model_meta(schema)}
    if fmt == "source":
        return {"kind": "meta", "fields": {"path": ref.uri, "size": ref.size, "mtime_ns": schema.get("mtime_ns")}}
    if fmt in ("npy", "pickle", "torch", "bytes"):
        why = {"pickle": "a pickle is never loaded here: unpickling runs code", "torch": "not loaded here"}.get(fmt)
        return {"kind": "meta", "fields": {**schema, **({"note": why} if why else {})}}
    if ref.size > MAX_BYTES:
        return {"kind": "meta", "fields": {**schema, "note": f"{ref.size:,} bytes: too large to preview"}}
    store = ObjectStore(root_of(ref.uri))
    if fmt == "json":
        value = json.loads(store.read_bytes(ref))
        if isinstance(value, str):
            return _text_kind(name, value)
        records = records_table(value, rows)
        if records is not None:
            return records
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        cut = len(text) > MAX_CHARS
        return {"kind": "json", "text": text[:MAX_CHARS], "note": f"first {MAX_CHARS:,} characters" if cut else ""}
    if fmt == "file":
        filename = str(schema.get("name") or Path(ref.uri).name)
        suffix = Path(filename).suffix.lower()
        if suffix == ".png":
            return {"kind": "image", "src": f"/artifacts/{ref.sha256}.png", "name": filename}
        if suffix in (".md", ".markdown"):
            return {"kind": "markdown", "text": store.read_bytes(ref).decode("utf-8", errors="replace")}
        if suffix in (".txt", ".log", ".csv", ".tsv", ".json", ".yaml", ".yml"):
            text = store.read_bytes(ref).decode("utf-8", errors="replace")
            return {"kind": "text", "text": text[:MAX_CHARS], "note": "" if len(text) <= MAX_CHARS else "cut"}
        return {"kind": "meta", "fields": {"file": filename, "size": ref.size}}
    return {"kind": "meta", "fields": dict(schema)}


def json_value(ref: ArtifactRef) -> Any:
    """A JSON artifact's value (at most :data:`MAX_BYTES`; None otherwise or when unreadable)."""
    if ref.format != "json" or ref.size > MAX_BYTES:
        return None
    try:
        return json.loads(ObjectStore(root_of(ref.uri)).read_bytes(ref))
    except (RaypipeError, OSError, ValueError):
        return None


def png_bytes(ref: ArtifactRef) -> bytes:
    """A PNG file artifact's bytes (checked against its sha256), or a StorageError: only PNG
    images are served raw (anything else could run as a page of this origin)."""
    name = str((ref.schema or {}).get("name") or ref.uri)
    if ref.format != "file" or not name.lower().endswith(".png") or ref.size > MAX_BYTES:
        raise StorageError(f"artifact {ref.sha256[:12]} is not a PNG image of at most {MAX_BYTES:,} bytes")
    data = ObjectStore(root_of(ref.uri)).read_bytes(ref)
    if not data.startswith(PNG_MAGIC):
        raise StorageError(f"artifact {ref.sha256[:12]} is not a PNG image")
    return data


def read_log(storage: str, run_id: str, stage: str, attempt: int, tail_bytes: int = LOG_TAIL_BYTES) -> dict[str, Any]:
    """The end of a stage attempt's log (``logs/RUN/STAGE/ATTEMPT.log`` under the storage root,
    local or an object store): ``{"path", "exists", "size", "text", "truncated", "note"}``
    (colour codes removed)."""
    out: dict[str, Any] = {"attempt": attempt, "exists": False, "size": 0, "text": "", "truncated": False, "note": ""}
    if attempt < 1:
        out["note"] = "no log: the stage did not run in this run"
        return out
    try:
        out["path"] = log_location(storage, run_id, stage, attempt)
        chunk = read_log_chunk(storage, run_id, stage, attempt, offset=-tail_bytes)
    except FileNotFoundError:
        out["note"] = "no log file: the stage did not run in this attempt" + (
            "" if is_local(storage) else ", or it is still running (its log is uploaded when it ends)"
        )
        return out
    except RaypipeError as e:
        out["note"] = f"cannot read the log: {e}"
        return out
    text = chunk.data.decode("utf-8", errors="replace")
    truncated = chunk.offset > 0
    if truncated:
        text = text.partition("\n")[2]  # from the first whole line
    out.update(path=chunk.location, exists=True, size=chunk.size, text=strip_ansi(text), truncated=truncated)
    if truncated:
        out["note"] = f"the last {tail_bytes // 1024} KiB of {chunk.size:,} bytes"
    return out
