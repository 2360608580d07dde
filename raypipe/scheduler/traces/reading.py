"""Reading trace CSVs: rows with line numbers, typed fields, the bad-row policy, windowing and sampling.

Shared by the readers of each source (:mod:`.philly`, :mod:`.alibaba`).
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from raypipe.scheduler.errors import TraceError
from raypipe.scheduler.traces.model import SHOWN_BAD_ROWS, BadRow, Trace, TraceJob, TraceMeta, TraceOptions


class RowError(ValueError):
    """A row that cannot become a job (the message says why)."""


def open_csv(path: str) -> Iterator[tuple[int, dict[str, str], list[str]]]:
    """Yield ``(line number, row, header)``; header problems raise TraceError."""
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a directory, expected a CSV file")
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: empty file; expected a CSV header")
            header = [h.strip().lstrip("\ufeff") for h in header]
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                values = dict(zip(header, (c.strip() for c in row), strict=False))
                if len(row) != len(header):
                    values["__width__"] = f"{len(row)} fields, header has {len(header)}"
                yield reader.line_num, values, header
        except UnicodeDecodeError as e:
            raise TraceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise TraceError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None


def field(row: Mapping[str, str], *names: str) -> str:
    for n in names:
        v = row.get(n)
        if v is not None and v != "":
            return v
    raise RowError(f"missing {names[0]}")


def number(row: Mapping[str, str], *names: str) -> float:
    raw = field(row, *names)
    try:
        x = float(raw)
    except ValueError:
        raise RowError(f"{names[0]}: not a number: {raw!r}") from None
    if not math.isfinite(x):
        raise RowError(f"{names[0]}: not a finite number: {raw!r}")
    return x


def timestamp(row: Mapping[str, str], *names: str) -> float:
    raw = field(row, *names)
    try:
        x = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise RowError(f"{names[0]}: neither seconds nor an ISO date: {raw!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if not math.isfinite(x):
        raise RowError(f"{names[0]}: not a finite number: {raw!r}")
    return x


def optional_number(row: Mapping[str, str], *names: str, default: float = 0.0) -> float:
    if all(row.get(n) in (None, "") for n in names):
        return default
    return number(row, *names)


def gpu_types(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(sorted({t.strip() for t in raw.split("|") if t.strip()}))


def require_columns(path: str, header: Sequence[str], groups: Sequence[Sequence[str]], hint: str = "") -> None:
    missing = [" or ".join(g) for g in groups if not any(c in header for c in g)]
    if missing:
        raise TraceError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(header)}"
            + (f" ({hint})" if hint else "")
        )


def bad_rows_error(path: str, bad: Sequence[BadRow]) -> TraceError:
    shown = "\n".join(f"  {b}" for b in bad[:SHOWN_BAD_ROWS])
    more = f"\n  ... and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
    return TraceError(
        f"{path}: {len(bad)} bad row(s):\n{shown}{more}\n"
        "fix them, or skip them with skip_bad_rows=True (CLI: --skip-bad-rows)"
    )


def finish(
    jobs: list[TraceJob],
    bad: list[BadRow],
    opts: TraceOptions,
    *,
    source: str,
    fmt: str,
    rows_read: int,
    filtered: dict[str, int],
    params: Mapping[str, Any] | None = None,
) -> Trace:
    """Bad-row policy, window, sampling, duration cap, shift to t=0."""
    if bad and not opts.skip_bad_rows:
        raise bad_rows_error(source, bad)
    jobs.sort(key=lambda j: j.submit_s)  # stable: file order among equal times
    filtered = dict(filtered)
    if jobs and opts.window_h is not None:
        end = jobs[0].submit_s + opts.window_h * 3600.0
        kept = [j for j in jobs if j.submit_s < end]
        if len(kept) < len(jobs):
            filtered["outside_window"] = len(jobs) - len(kept)
        jobs = kept
    if opts.max_jobs is not None and len(jobs) > opts.max_jobs:
        if opts.sample == "first":
            kept = jobs[: opts.max_jobs]
        else:
            idx = sorted(random.Random(opts.seed).sample(range(len(jobs)), opts.max_jobs))
            kept = [jobs[i] for i in idx]
        filtered["sampled_out"] = len(jobs) - len(kept)
        jobs = kept
    capped = 0
    if opts.max_duration_s is not None:
        cap = opts.max_duration_s
        out = []
        for j in jobs:
            if j.duration_s > cap:
                capped += 1
                j = replace(j, duration_s=cap)
            out.append(j)
        jobs = out
    offset = jobs[0].submit_s if jobs else 0.0
    if offset:
        jobs = [replace(j, submit_s=j.submit_s - offset) for j in jobs]
    if not jobs:
        raise TraceError(f"{source}: no jobs left" + (" after the window and filters" if rows_read else ""))
    meta = TraceMeta(
        source=source,
        format=fmt,
        rows_read=rows_read,
        rows_skipped=len(bad),
        rows_filtered={k: v for k, v in filtered.items() if v},
        bad_rows=tuple(bad[:SHOWN_BAD_ROWS]),
        window_h=opts.window_h,
        max_jobs=opts.max_jobs,
        sample=opts.sample,
        seed=opts.seed,
        max_duration_s=opts.max_duration_s,
        durations_capped=capped,
        durations_known=opts.durations_known,
        time_offset_s=offset,
        params=dict(params or {}),
    )
    return Trace(tuple(jobs), meta)
