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

import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from raypipe.exceptions import DataError, ValidationFailed
from raypipe.stages.base import StageContext
from raypipe.stages.data.common import DataStage, gather, input_schema, only_input, task_args
from raypipe.stages.data.rules import (
    ValidateParams,
    check_batch,
    check_row_count,
    check_schema,
    duplicate_hashes,
    key_hashes,
    text_columns,
)
from raypipe.stages.data.violations import ValidationReport, merge_reports
from raypipe.store.artifacts import ArtifactStore
from raypipe.store.datasets import DATASET_FORMAT, StagedDataset, part_stats, read_dataset, stats_table, write_dataset


def _frame(table: Any) -> Any:
    """A block as a pandas frame of Arrow-backed columns (``pd.ArrowDtype``): no copy, where
    Ray Data's pandas batches turn dictionary columns into Categoricals (a slow
    conversion); the rules give the same results on both."""
    import pandas as pd

    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _unique_keys(df: Any, columns: list[str], params: ValidateParams, text: list[str]) -> dict[str, np.ndarray]:
    return {c: key_hashes(df, c, params, text=text) for c in columns if c in df.columns}


def _check_block(table: Any, params: ValidateParams, dup: dict[str, np.ndarray], text: list[str]) -> Any:
    """One block's report (nothing written)."""
    import pyarrow as pa

    report = check_batch(_frame(table), params, dup_hashes=dup, text=text).report
    return pa.table({"report": pa.array([pickle.dumps(report)], pa.binary())})


def _split_block(
    table: Any,
    params: ValidateParams,
    dup: dict[str, np.ndarray],
    text: list[str],
    root: str,
    data_staging: str,
    quarantine_staging: str | None,
) -> Any:
    """One block, checked once: the rows that pass (their text columns converted to the
    declared types) written to ``data_staging``, the others as they were read to
    ``quarantine_staging``; the block's report and both parts' stats as one row."""
    import pyarrow as pa

    check = check_batch(_frame(table), params, dup_hashes=dup, text=text)
    keep = ~check.bad
    good = table.filter(pa.array(keep)) if check.bad.any() else table
    for name, values in check.parsed.items():
        good = good.set_column(good.schema.get_field_index(name), name, pa.array(values[keep]))
    cols = {"report": pa.array([pickle.dumps(check.report)], pa.binary())}
    cols.update(stats_table(part_stats(good, root, data_staging), "d_"))
    if quarantine_staging is not None:
        cols.update(stats_table(part_stats(table.filter(pa.array(check.bad)), root, quarantine_staging), "q_"))
    return pa.table(cols)


def _part(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}


def failure(report: ValidationReport, what: str) -> ValidationFailed:
    """The error a failed validation raises: a one-line summary naming each column and
    rule (what a run's summary shows), then the full report with example rows."""
    brief = "; ".join(
        f"{v.column or 'rows'}: {v.rule} ({v.count:,} {'rows' if v.column else ''})".replace(" )", ")")
        for v in report.violations
    )
    return ValidationFailed(f"{what} failed validation: {brief}\n{report.format()}")


class ValidateStage(DataStage):
    Params = ValidateParams
    params: ValidateParams

    def outputs(self) -> list[str]:
        return ["data", "report", "quarantine"] if self.params.on_error == "quarantine" else ["data", "report"]

    def run(self, ctx: StageContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Schema checks, then (with ``unique``) a pass over the unique columns alone, then
        one pass that checks every row once: with nothing to write (``fail``, nothing to
        convert) it only reports; else it also writes the rows that pass (converted) and,
        with ``quarantine``, the ones that do not, in the same task.  A dataset that
        passes with nothing to convert is passed on unchanged (what was written is
        dropped)."""

        name, ds = only_input(inputs)
        p = self.params
        what = f"input {name!r}"
        schema = input_schema(ctx, name, ds)
        fatal = check_schema(schema, p)
        if fatal:
            raise failure(ValidationReport(violations=fatal, max_examples=p.examples), what)
        # from the schema, not per batch: every block converts the same columns to the same types
        text = text_columns(schema, p)
        store = ArtifactStore(ctx.storage)
        ref = ctx.input_refs.get(name)
        unique = [c for c, rule in p.columns.items() if rule.unique]
        dup: dict[str, np.ndarray] = {}
        if unique:  # only these columns are read for it
            keys_ds = read_dataset(store, ref, columns=unique) if ref and ref.format == DATASET_FORMAT else ds
            parts = gather(keys_ds, _unique_keys, ctx, columns=unique, params=p, text=text)
            dup = {c: duplicate_hashes(part[c] for part in parts if c in part) for c in unique}
        kw = {"batch_format": "pyarrow", "batch_size": None, **task_args(ctx)}
        if not text and p.on_error == "fail":
            rows = ds.map_batches(_check_block, fn_kwargs={"params": p, "dup": dup, "text": text}, **kw).take_all()
            report = self._report(rows, what)
            out: dict[str, Any] = {"data": ref or self._stored(store, ds, what)}
            return {**out, "report": self._summary(report, text, 0)}
        data = StagedDataset(store, f"{what} after validation")
        quarantine = StagedDataset(store, "quarantine") if p.on_error == "quarantine" else None
        try:
            args = {"params": p, "dup": dup, "text": text, "root": store.root, "data_staging": data.staging}
            args["quarantine_staging"] = quarantine.staging if quarantine is not None else None
            rows = ds.map_batches(_split_block, fn_kwargs=args, **kw).take_all()
            report = self._report(rows, what)
            if report.ok and not text and ref is not None:
                out = {"data": ref}  # nothing changed: the same version
            else:
                out = {"data": data.commit([_part(r, "d_") for r in rows], schema)}
                if not out["data"].schema["num_rows"]:
                    raise DataError(f"empty dataset: {what} after quarantine (every row broke a rule)")
            quarantined = 0
            if quarantine is not None:
                out["quarantine"] = quarantine.commit([_part(r, "q_") for r in rows], schema)
                quarantined = int(out["quarantine"].schema["num_rows"])
        finally:
            data.discard()
            if quarantine is not None:
                quarantine.discard()
        if quarantined:
            ctx.log.warning("%s rows quarantined\n%s", quarantined, report.format())
        return {**out, "report": self._summary(report, text, quarantined)}

    def _report(self, rows: list[Mapping[str, Any]], what: str) -> ValidationReport:
        """The blocks' reports merged, with the row count rules; raises when the stage fails."""
        p = self.params
        report = merge_reports(pickle.loads(r["report"]) for r in rows)
        report.max_examples = p.examples
        report.violations += check_row_count(report.rows_checked, p)
        if report.fatal or (not report.ok and p.on_error == "fail"):
            raise failure(report, what)
        return report

    def _summary(self, report: ValidationReport, text: list[str], quarantined: int) -> dict[str, Any]:
        p = self.params
        return {**report.to_dict(), "on_error": p.on_error, "rows_quarantined": quarantined, "converted": text}

    @staticmethod
    def _stored(store: Any, ds: Any, what: str) -> Any:
        return write_dataset(store, ds, what=what)
