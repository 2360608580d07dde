"""What validation finds: :class:`Violation`, the mergeable :class:`ValidationReport` and its text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["ValidationReport", "Violation", "merge_reports"]

#: Order of rules in :meth:`ValidationReport.format` (within a column).
_RULE_ORDER = ("missing", "type", "extra", "nullable", "min", "max", "allowed", "unique", "rows_min", "rows_max")


@dataclass
class Violation:
    """One broken rule: of a column (``column``) or of the row count (``column=None``)."""

    column: str | None
    #: missing, type, extra, nullable, min, max, allowed, unique, rows_min or rows_max.
    rule: str
    #: What was expected, as text: ">= 0", "in ['DE', 'FR']", "a float column, got string".
    expected: str
    #: Rows breaking the rule (row rules), the row count (rows_min/rows_max), 0 for schema problems.
    count: int
    #: Example rows (JSON-able dicts, the checked column first).
    examples: list[dict[str, Any]] = field(default_factory=list)
    #: A dataset-level problem that dropping rows cannot fix.
    fatal: bool = False


@dataclass
class ValidationReport:
    """Violations found in some rows; mergeable across batches."""

    rows_checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    #: Rows breaking at least one row rule (a row breaking two rules counts once).
    rows_bad: int = 0
    #: Examples kept per (column, rule).
    max_examples: int = 5

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def fatal(self) -> bool:
        """Whether a violation cannot be fixed by dropping rows (quarantine cannot help)."""
        return any(v.fatal for v in self.violations)

    def merge(self, other: ValidationReport) -> ValidationReport:
        """Sum the counts per (column, rule) and keep the first examples, in merge order.
        Fatal violations are not per row: the first one of a (column, rule) is kept."""
        limit = max(self.max_examples, other.max_examples)
        merged: dict[tuple[str | None, str], Violation] = {}
        for v in [*self.violations, *other.violations]:
            key = (v.column, v.rule)
            cur = merged.get(key)
            if cur is None:
                merged[key] = replace(v, examples=list(v.examples[:limit]))
            elif not (cur.fatal or v.fatal):
                cur.count += v.count
                cur.examples.extend(v.examples[: max(0, limit - len(cur.examples))])
        return ValidationReport(
            rows_checked=self.rows_checked + other.rows_checked,
            violations=list(merged.values()),
            rows_bad=self.rows_bad + other.rows_bad,
            max_examples=limit,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``allow_nan=False`` safe)."""
        return {
            "ok": self.ok,
            "rows_checked": self.rows_checked,
            "rows_bad": self.rows_bad,
            "max_examples": self.max_examples,
            "violations": [asdict(v) for v in self._sorted()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationReport:
        return cls(
            rows_checked=int(d["rows_checked"]),
            violations=[Violation(**v) for v in d.get("violations", [])],
            rows_bad=int(d.get("rows_bad", 0)),
            max_examples=int(d.get("max_examples", 5)),
        )

    def format(self, max_examples: int = 3) -> str:
        """A human-readable report, one line per violation."""
        if self.ok:
            return f"validation passed: {_rows(self.rows_checked)} checked"
        k = len(self.violations)
        lines = [
            f"validation failed: {k} rule{'' if k == 1 else 's'} broken in {_rows(self.rows_checked)}"
            f" ({_rows(self.rows_bad)} bad)"
        ]
        for v in self._sorted():
            lines.append("  " + _format_violation(v, max_examples))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def _sorted(self) -> list[Violation]:
        def key(v: Violation) -> tuple[int, str, int]:
            rank = _RULE_ORDER.index(v.rule) if v.rule in _RULE_ORDER else len(_RULE_ORDER)
            return (v.column is None, "" if v.column is None else str(v.column), rank)

        return sorted(self.violations, key=key)


def merge_reports(reports: Iterable[ValidationReport]) -> ValidationReport:
    """Merge any number of reports, in order (an empty iterable gives an empty report)."""
    out: ValidationReport | None = None
    for r in reports:
        out = r if out is None else out.merge(r)
    return out if out is not None else ValidationReport()


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _format_example(ex: Mapping[str, Any], width: int = 100) -> str:
    parts: list[str] = []
    used = 0
    for k, v in ex.items():
        part = f"{k!r}: {v!r}"
        if parts and used + len(part) > width:
            parts.append("...")
            break
        parts.append(part)
        used += len(part) + 2
    return "{" + ", ".join(parts) + "}"


def _format_violation(v: Violation, max_examples: int) -> str:
    if v.column is None:
        return f"rows: {_rows(v.count)}; expected {v.expected}"
    col = f"column {v.column!r}"
    if v.rule == "missing":
        return f"{col}: missing (expected {v.expected})"
    if v.rule == "type" and v.fatal:
        return f"{col}: wrong type (expected {v.expected})"
    if v.rule == "extra":
        return f"{col}: extra column ({v.expected})"
    if v.rule == "unique":
        label = "rule unique"
    elif v.rule in ("nullable", "type"):
        label = f"rule {v.rule} ({v.expected})"
    else:
        label = f"rule {v.rule} {v.expected}".rstrip()
    line = f"{col}: {label}: {_rows(v.count)}"
    shown = v.examples[: max(0, max_examples)]
    if shown:
        line += ", e.g. " + ", ".join(_format_example(e) for e in shown)
    return line
