"""``data.validate``: check a dataset against a declared schema.

Column types and presence are checked from the schema; nullability, ranges, allowed
values and uniqueness row by row in Ray Data tasks (uniqueness in two passes: key
hashes, then the rows whose key occurs twice); row-count bounds on the total.  With
``on_error: fail`` (the default) any violation fails the stage with a report that
names each column, rule, count and example rows.  With ``on_error: quarantine`` the
rows that break a row rule go to the ``quarantine`` dataset, the others to ``data``,
and the counts to ``report``: no row is dropped silently.  Missing columns, wrong
types and row counts out of bounds fail in both modes.  A dataset that passes is
passed on unchanged (same version, nothing rewritten).
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
    duplicate_hashes,
    key_hashes,
    merge_reports,
)


def _batch_report(df: Any, params: ValidateParams, dup: dict[str, np.ndarray]) -> ValidationReport:
    return check_batch(df, params, dup_hashes=dup).report


def _unique_keys(df: Any, columns: list[str]) -> dict[str, np.ndarray]:
    return {c: key_hashes(df, c) for c in columns if c in df.columns}


def _keep(df: Any, params: ValidateParams, dup: dict[str, np.ndarray], bad: bool) -> Any:
    mask = check_batch(df, params, dup_hashes=dup).bad
    return df[mask if bad else ~mask]


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
        fatal = check_schema(input_schema(ctx, name, ds), p)
        if fatal:
            raise failure(ValidationReport(violations=fatal, max_examples=p.examples), what)
        unique = [c for c, rule in p.columns.items() if rule.unique]
        dup: dict[str, np.ndarray] = {}
        if unique:
            parts = gather(ds, _unique_keys, ctx, columns=unique)
            dup = {c: duplicate_hashes(part[c] for part in parts if c in part) for c in unique}
        report = merge_reports(gather(ds, _batch_report, ctx, params=p, dup=dup))
        report.max_examples = p.examples
        report.violations += check_row_count(report.rows_checked, p)
        if report.fatal or (not report.ok and p.on_error == "fail"):
            raise failure(report, what)
        out: dict[str, Any] = {}
        summary = {**report.to_dict(), "on_error": p.on_error, "rows_quarantined": 0}
        if report.ok:
            out["data"] = ctx.input_refs.get(name) or store_dataset(ctx, ds, what)
            if p.on_error == "quarantine":
                out["quarantine"] = store_dataset(ctx, ds.limit(0), "quarantine", allow_empty=True)
        else:
            kw = {"batch_format": "pandas", "batch_size": None, **task_args(ctx)}
            good = ds.map_batches(_keep, fn_kwargs={"params": p, "dup": dup, "bad": False}, **kw)
            bad = ds.map_batches(_keep, fn_kwargs={"params": p, "dup": dup, "bad": True}, **kw)
            out["data"] = store_dataset(ctx, good, f"{what} after quarantine (every row broke a rule)")
            out["quarantine"] = store_dataset(ctx, bad, "quarantine", allow_empty=True)
            summary["rows_quarantined"] = int(out["quarantine"].schema["num_rows"])
            ctx.log.warning("%s rows quarantined\n%s", summary["rows_quarantined"], report.format())
        out["report"] = summary
        return out
