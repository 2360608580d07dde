"""``data.validate``: check a dataset against a declared schema.

Column types and presence are checked from the schema; nullability, ranges, allowed
values and uniqueness row by row in Ray Data tasks (uniqueness in two passes: key
hashes, then the rows whose key occurs twice); row-count bounds on the total.  With
``on_error: fail`` (the default) any violation fails the stage with a report that
names each column, rule, count and example rows.  With ``on_error: quarantine`` the
rows that break a row rule go to the ``quarantine`` dataset, the others to ``data``,
and the counts to ``report``: no row is dropped silently.  Missing columns, wrong
types and row counts out of bounds fail in both modes.

A string column declared int, float, number, bool, date or timestamp (the CSV reader
makes a whole column a string when one value does not parse) is parsed: a value that
does not parse breaks the row rule ``type`` (fail, or quarantine, like ``min``), and
the ``data`` output has the column converted to the declared type (int64, float64,
bool, date32, timestamp[us, UTC]); ``quarantine`` keeps the rows as they were read.  A
dataset that passes with nothing to convert is passed on unchanged (same version,
nothing rewritten); one with a column to convert is stored converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from raypipe.exceptions import DataError
from raypipe.stages.base import StageContext
from raypipe.stages.data.common import DataStage, gather, input_schema, only_input, store_dataset, task_args
from raypipe.stages.data.rules import (
    ValidateParams,
    ValidationReport,
    check_batch,
    check_row_count,
    check_schema,
    convert_batch,
    duplicate_hashes,
    key_hashes,
    merge_reports,
    text_columns,
)


def _batch_report(df: Any, params: ValidateParams, dup: dict[str, np.ndarray], text: list[str]) -> ValidationReport:
    return check_batch(df, params, dup_hashes=dup, text=text).report


def _unique_keys(df: Any, columns: list[str], params: ValidateParams, text: list[str]) -> dict[str, np.ndarray]:
    return {c: key_hashes(df, c, params, text=text) for c in columns if c in df.columns}


def _keep(df: Any, params: ValidateParams, dup: dict[str, np.ndarray], text: list[str], bad: bool) -> Any:
    """The rows of a batch that break a rule as they are (``bad``), or the others converted."""
    mask = check_batch(df, params, dup_hashes=dup, text=text).bad
    return df[mask] if bad else convert_batch(df[~mask], params, text=text)


def _convert(df: Any, params: ValidateParams, text: list[str]) -> Any:
    return convert_batch(df, params, text=text)


def failure(report: ValidationReport, what: str) -> DataError:
    """The error a failed validation raises: a one-line summary naming each column and
    rule (what a run's summary shows), then the full report with example rows."""
    brief = "; ".join(
        f"{v.column or 'rows'}: {v.rule} ({v.count:,} {'rows' if v.column else ''})".replace(" )", ")")
        for v in report.violations
    )
    return DataError(f"{what} failed validation: {brief}\n{report.format()}")


class ValidateStage(DataStage):
    Params = ValidateParams
    params: ValidateParams

    def outputs(self) -> list[str]:
        return ["data", "report", "quarantine"] if self.params.on_error == "quarantine" else ["data", "report"]

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        name, ds = only_input(inputs)
        p = self.params
        what = f"input {name!r}"
        schema = input_schema(ctx, name, ds)
        fatal = check_schema(schema, p)
        if fatal:
            raise failure(ValidationReport(violations=fatal, max_examples=p.examples), what)
        # from the schema, not per batch: every block converts the same columns to the same types
        text = text_columns(schema, p)
        unique = [c for c, rule in p.columns.items() if rule.unique]
        dup: dict[str, np.ndarray] = {}
        if unique:
            parts = gather(ds, _unique_keys, ctx, columns=unique, params=p, text=text)
            dup = {c: duplicate_hashes(part[c] for part in parts if c in part) for c in unique}
        report = merge_reports(gather(ds, _batch_report, ctx, params=p, dup=dup, text=text))
        report.max_examples = p.examples
        report.violations += check_row_count(report.rows_checked, p)
        if report.fatal or (not report.ok and p.on_error == "fail"):
            raise failure(report, what)
        out: dict[str, Any] = {}
        summary = {**report.to_dict(), "on_error": p.on_error, "rows_quarantined": 0, "converted": text}
        kw = {"batch_format": "pandas", "batch_size": None, **task_args(ctx)}
        if report.ok:
            if text:
                converted = ds.map_batches(_convert, fn_kwargs={"params": p, "text": text}, **kw)
                out["data"] = store_dataset(ctx, converted, f"{what} converted")
            else:
                out["data"] = ctx.input_refs.get(name) or store_dataset(ctx, ds, what)
            if p.on_error == "quarantine":
                out["quarantine"] = store_dataset(ctx, ds.limit(0), "quarantine", allow_empty=True)
        else:
            args = {"params": p, "dup": dup, "text": text}
            good = ds.map_batches(_keep, fn_kwargs={**args, "bad": False}, **kw)
            bad = ds.map_batches(_keep, fn_kwargs={**args, "bad": True}, **kw)
            out["data"] = store_dataset(ctx, good, f"{what} after quarantine (every row broke a rule)")
            out["quarantine"] = store_dataset(ctx, bad, "quarantine", allow_empty=True)
            summary["rows_quarantined"] = int(out["quarantine"].schema["num_rows"])
            ctx.log.warning("%s rows quarantined\n%s", summary["rows_quarantined"], report.format())
        out["report"] = summary
        return out
