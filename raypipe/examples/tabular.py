"""A table like users' tables, for ``configs/tabular.yaml`` and the tests: loan applications.

Columns: ``loan_id`` (an integer id), ``applicant_ref`` (a 64-bit unsigned reference, most
values above 2**63), six numbers with missing values (``amount``, ``income``, ``age``,
``term_months``, ``debt_ratio``, ``credit_score``), ``region`` (text, with rare levels),
``channel`` (text), ``applied`` (an ISO date, some missing), ``employed`` (true/false),
``notes`` (free text) and the label ``default`` (0/1, learnable from the others).

About 2% of the rows are broken the way real exports are: a date that does not exist,
a negative amount, an age of 999, a missing id.  :func:`broken_rows` says which.

``raypipe/examples/data/loans.csv`` is ``write_csv(make_loans())``; run this module to
write it again (``python -m raypipe.examples.tabular``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROWS = 4000
SEED = 7
SHIPPED = Path(__file__).parent / "data" / "loans.csv"
REGIONS = ["north", "south", "east", "west", "islands", "overseas"]
REGION_P = [0.32, 0.28, 0.2, 0.17, 0.02, 0.01]
CHANNELS = ["web", "branch", "broker", "phone"]


def make_loans(rows: int = ROWS, seed: int = SEED, broken: float = 0.02, start: str = "2022-01-01") -> pd.DataFrame:
    """The table, with its problems as text (a bad date is the string ``2023-02-30``)."""
    rng = np.random.default_rng(seed)
    n = rows
    income = np.round(rng.lognormal(10.8, 0.45, n), 2)
    amount = np.round(rng.gamma(2.2, 6000, n), 2)
    age = rng.integers(19, 80, n).astype(float)
    term = rng.choice([12, 24, 36, 48, 60], n).astype(float)
    debt = np.round(np.clip(rng.beta(2, 5, n) + amount / income / 4, 0, 3), 4)
    score = np.round(rng.normal(680, 60, n))
    region = rng.choice(REGIONS, n, p=REGION_P)
    channel = rng.choice(CHANNELS, n, p=[0.5, 0.25, 0.15, 0.1])
    employed = rng.random(n) < 0.82
    day0 = dt.date.fromisoformat(start)
    offsets = rng.integers(0, 730, n)
    applied = np.array([(day0 + dt.timedelta(days=int(d))).isoformat() for d in offsets], dtype=object)
    month = np.array([(day0 + dt.timedelta(days=int(d))).month for d in offsets])
    logit = (
        -1.5
        + 4.0 * (debt - 0.45)
        - 0.02 * (score - 680)
        - 1.3 * employed
        + 1.2 * (region == "overseas")
        + 0.6 * (region == "south")
        + 0.8 * np.isin(month, [11, 12, 1])
        + 0.5 * (channel == "broker")
        + 0.02 * (term - 36)
    )
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    notes = np.array(
        [
            f"applicant {i} asked about {rng.choice(['rates', 'terms', 'fees', 'timing'])} on the phone"
            for i in range(n)
        ],
        dtype=object,
    )
    df = pd.DataFrame(
        {
            "loan_id": np.arange(100_001, 100_001 + n).astype(object),
            "applicant_ref": (np.uint64(2**63) + rng.integers(0, 2**62, n, dtype=np.uint64)).astype(object),
            "amount": amount,
            "income": income,
            "age": age,
            "term_months": term,
            "debt_ratio": debt,
            "credit_score": score,
            "region": region,
            "channel": channel,
            "applied": applied,
            "employed": np.where(employed, "true", "false"),
            "notes": notes,
            "default": label,
        }
    )
    # missing values, as exports have them
    for col, share in (("income", 0.03), ("debt_ratio", 0.02), ("credit_score", 0.05), ("age", 0.01)):
        df.loc[rng.random(n) < share, col] = np.nan
    df.loc[rng.random(n) < 0.04, "applied"] = None
    df.loc[rng.random(n) < 0.01, "region"] = None
    # broken rows
    bad = rng.choice(n, size=int(round(broken * n)), replace=False)
    kinds = rng.integers(0, 4, len(bad))
    for i, k in zip(bad.tolist(), kinds.tolist(), strict=True):
        if k == 0:
            df.at[i, "applied"] = "2023-02-30"
        elif k == 1:
            df.at[i, "amount"] = -abs(df.at[i, "amount"])
        elif k == 2:
            df.at[i, "age"] = 999.0
        else:
            df.at[i, "loan_id"] = None
    return df


def broken_rows(df: pd.DataFrame) -> np.ndarray:
    """Which rows break the rules of ``configs/tabular.yaml``'s validate stage."""
    bad_date = df["applied"].notna() & (df["applied"].astype(str) == "2023-02-30")
    return (
        bad_date.to_numpy()
        | (df["amount"] < 0).to_numpy()
        | (df["age"] > 120).to_numpy()
        | df["loan_id"].isna().to_numpy()
    )


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def report(metrics: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
    """The tabular pipeline's summary: rows quarantined and the evaluation's headline numbers."""
    keys = ("rows", "accuracy", "f1_macro", "roc_auc", "pr_auc", "log_loss")
    summary = {"rows_checked": validation.get("rows_checked"), "rows_quarantined": validation.get("rows_quarantined")}
    summary.update(
        {f"test_{k}": round(metrics[k], 4) if isinstance(metrics.get(k), float) else metrics.get(k) for k in keys}
    )
    return {"summary": summary}


if __name__ == "__main__":  # pragma: no cover
    print(write_csv(make_loans(), SHIPPED))  # noqa: T201 - a script: the path it wrote
