"""Preprocessing of mixed tables for the built-in models (raypipe.models.preprocess), the
feature choice of ``describe_data``, and the request fields serving accepts for them."""

from __future__ import annotations

import datetime as dt
import functools

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.exceptions import DataError
from raypipe.models.builtin import label_codes
from raypipe.models.builtin_spec import BuiltinTraining, describe_data
from raypipe.models.networks import build_net, load_weights
from raypipe.models.preprocess import (
    MISSING,
    OTHER,
    Preprocessor,
    category_keys,
    describe_inputs,
    parse_iso,
    to_day,
    to_days,
)
from raypipe.serving.validation import InputSchema, RequestError, rows_of
from raypipe.stages.data import profiling
from raypipe.stages.data.profile import _fit_partial


def loans(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    """A business table: an id, numbers with missing values, a low- and a high-cardinality
    category, a date with nulls, free text, a bool and a binary label."""
    rng = np.random.default_rng(seed)
    days = rng.integers(18000, 19500, n)
    return pd.DataFrame(
        {
            "loan_id": np.arange(10_000, 10_000 + n),
            "amount": np.where(rng.random(n) < 0.05, np.nan, rng.normal(1000, 300, n)),
            "income": rng.normal(50_000, 9_000, n),
            "region": rng.choice(["north", "south", "east", "west", "rare"], n, p=[0.3, 0.3, 0.2, 0.19, 0.01]),
            "city": [f"c{i}" for i in rng.integers(0, 60, n)],
            "applied": pd.Series(
                [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) if i % 9 else None for i, d in enumerate(days)],
                dtype=object,
            ),
            "note": [f"customer {i} wrote a long free-text note" for i in range(n)],
            "online": rng.random(n) < 0.4,
            "label": rng.integers(0, 2, n),
        }
    )


def fit(df: pd.DataFrame, **params: object) -> dict:
    table = pa.Table.from_pandas(df, preserve_index=False)
    types = {f.name: str(f.type) for f in table.schema}
    p = BuiltinTraining(model={"type": "mlp", "hidden": [8]}, **params)
    cats = [c for c in p.preprocessing.categorical if c in types]
    parts = [
        _fit_partial(table.slice(i, 400).to_pandas(), p.label, cats, p.preprocessing.max_levels, True)
        for i in range(0, len(df), 400)
    ]
    prof = profiling.finalize(functools.reduce(profiling.merge, [q for q, _ in parts]), None, None)
    labels = sorted({v for _, ls in parts for v in ls})
    return describe_data(p, prof, labels, types)


def test_automatic_features_leave_out_ids_and_free_text_and_say_why() -> None:
    data = fit(loans())
    assert data["features"] == ["amount", "income", "region", "city", "applied", "online"]
    assert set(data["excluded"]) == {"loan_id", "note"}
    assert "id" in data["excluded"]["loan_id"] and "free text" in data["excluded"]["note"]
    assert data["classes"] == [0, 1]
    kinds = {f["name"]: (f["kind"], f.get("encoding")) for f in data["preprocessing"]["features"]}
    assert kinds == {
        "amount": ("numeric", None),
        "income": ("numeric", None),
        "region": ("category", "onehot"),
        "city": ("category", "embedding"),
        "applied": ("datetime", None),
        "online": ("category", "onehot"),
    }


def test_encoding_uses_training_statistics_and_is_the_same_for_every_input_form() -> None:
    df = loans()
    data = fit(df)
    pre = Preprocessor.from_meta(data)
    amount = pre.features[0]
    finite = df["amount"].dropna()
    assert amount.missing and amount.mean == pytest.approx(finite.mean(), rel=1e-12)
    assert amount.median == pytest.approx(finite.median(), rel=1e-12)  # exact: few enough values
    table = pa.Table.from_pandas(df, preserve_index=False)
    a = pre.encode({c: table.column(c) for c in data["features"]})
    b = pre.encode({c: df[c] for c in data["features"]})
    rows = [[r[c] for c in data["features"]] for r in df.to_dict("records")]
    c = pre.encode_rows(rows)
    for other in (b, c):
        np.testing.assert_array_equal(a.dense, other.dense)
        np.testing.assert_array_equal(a.embedded, other.embedded)
    assert a.missing == {"amount": int(df["amount"].isna().sum()), "applied": int(df["applied"].isna().sum())}
    assert not np.isnan(a.dense).any()
    # amount: standardized value after median imputation, then its missing column
    x = df["amount"].fillna(amount.median).to_numpy()
    np.testing.assert_allclose(a.dense[:, 0], (x - amount.mean) / amount.std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.dense[:, 1], df["amount"].isna().to_numpy())


def test_unseen_and_missing_categories_and_dates_from_strings() -> None:
    data = fit(loans())
    pre = Preprocessor.from_meta(data)
    f = data["features"]
    row = {"amount": None, "income": 51_000.0, "region": "mars", "city": "c3", "applied": "2021-03-04", "online": True}
    enc = pre.encode_rows([[row[c] for c in f]])
    assert enc.unseen == {"region": 1} and enc.unseen_rows.tolist() == [1]
    assert enc.missing == {"amount": 1} and enc.missing_rows.tolist() == [1]
    region = next(x for x in pre.features if x.name == "region")
    start = 2 + 1  # amount (value, missing) + income
    onehot = enc.dense[0, start : start + region.width]
    assert onehot.tolist() == [0.0] * len(region.levels) + [1.0]  # the "other" level
    assert region.levels_out()[-1] == OTHER and MISSING not in region.levels_out()
    days = to_days(["2021-03-04", "2021-03-04T12:00:00+02:00", "bad", None, dt.date(2021, 3, 4)])
    assert days[0] == days[4] == 18690.0 and days[1] == pytest.approx(18690 + 10 / 24)
    assert np.isnan(days[2]) and np.isnan(days[3])
    assert to_day(dt.datetime(1970, 1, 2, 6)) == 1.25
    # parse_iso: the ISO 8601 grammar of validated text columns (data.validate) too
    date = parse_iso(" 2024-02-29 ")
    assert type(date) is dt.date and date == dt.date(2024, 2, 29)
    aware = parse_iso("2021-03-04t12:00:00,5+0200")
    assert aware == dt.datetime(2021, 3, 4, 10, 0, 0, 500_000, tzinfo=dt.timezone.utc)
    assert isinstance(aware, dt.datetime) and aware.utcoffset() == dt.timedelta(hours=2)
    assert parse_iso("2021-03-04T12:00z").tzinfo == dt.timezone.utc
    naive = parse_iso("2021-03-04 12:00:00.123456789")
    assert naive == dt.datetime(2021, 3, 4, 12, 0, 0, 123_456) and naive.tzinfo is None
    refused = ["2023-02-29", "2021-03-04T24:00", "2021-03-04T12", "2021-03-04T12:00+24:00", "20210304", "2021-03-04Z"]
    assert [parse_iso(t) for t in refused] == [None] * len(refused)
    assert np.isnan(to_days(["2021-03-04T24:00"])[0])


def test_month_and_weekday_columns() -> None:
    data = fit(loans())
    pre = Preprocessor.from_meta(data)
    applied = next(x for x in pre.features if x.name == "applied")
    col = sum(x.width for x in pre.features[: pre.names.index("applied")])
    enc = pre.encode({**{c: [None] for c in pre.names}, "applied": ["2024-07-01"], "region": ["north"]})
    month_sin, month_cos, wd_sin, wd_cos = enc.dense[0, col + 1 : col + 5]
    assert np.arctan2(month_sin, month_cos) == pytest.approx(2 * np.pi * 6 / 12, abs=1e-6)  # July = 6
    assert np.arctan2(wd_sin, wd_cos) == pytest.approx(0.0, abs=1e-6)  # a Monday
    assert applied.missing and enc.dense[0, col + 5] == 0.0


def test_package_round_trip_and_network_with_embeddings() -> None:
    import torch

    data = fit(loans())
    data["spec"] = {"type": "mlp", "hidden": [8], "dropout": 0.0, "activation": "relu"}
    net = build_net(data)
    assert len(net.embeddings) == 1  # city
    pre = Preprocessor.from_meta(data)
    enc = pre.encode({c: loans(20, 5)[c] for c in pre.names})
    out = net(torch.from_numpy(enc.dense), torch.from_numpy(enc.embedded))
    assert tuple(out.shape) == (20, 2)
    again = build_net(data)
    load_weights(again, net.state_dict())
    assert torch.equal(again(torch.from_numpy(enc.dense), torch.from_numpy(enc.embedded)), out)


def test_packages_of_earlier_versions_still_load() -> None:
    """A package written before mixed tables: numeric features, standardize stats, the
    network's weights without the ``body.`` prefix."""
    import torch

    from raypipe.models.networks import build_module

    meta = {
        "features": ["a", "b"],
        "input_schema": {"a": "double", "b": "int64"},
        "preprocessing": {"standardize": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}},
        "task": "regression",
        "classes": None,
        "spec": {"type": "mlp", "hidden": [4], "dropout": 0.0, "activation": "relu"},
    }
    old = build_module(meta["spec"], 2, 1)
    net = build_net(meta)
    load_weights(net, old.state_dict())
    pre = Preprocessor.from_meta(meta)
    assert pre.plain and [f.kind for f in pre.features] == ["numeric", "numeric"]
    enc = pre.encode_rows([[3.0, 6.0]])
    np.testing.assert_allclose(enc.dense, [[1.0, 1.0]])
    assert torch.equal(net(torch.from_numpy(enc.dense)), old(torch.from_numpy(enc.dense)))


def test_explicit_features_and_forced_categories() -> None:
    df = loans()
    df["zip"] = np.random.default_rng(1).choice([10115, 80331, 20095], len(df))
    data = fit(df, features=["zip", "note", "applied"], preprocessing={"categorical": ["zip"]})
    pre = Preprocessor.from_meta(data)
    zip_, note = pre.features[0], pre.features[1]
    assert zip_.kind == "category" and sorted(zip_.levels) == ["10115", "20095", "80331"]
    assert note.kind == "category" and note.encoding == "embedding"  # named explicitly: embedded
    enc = pre.encode({"zip": [80331, 99999], "note": ["x", None], "applied": [None, None]})
    assert enc.unseen == {"zip": 1, "note": 1}
    with pytest.raises(DataError, match="feature columns must be numeric, bool, text"):
        bad = df.assign(blob=[b"x"] * len(df))
        fit(bad, features=["blob"])
    with pytest.raises(DataError, match="feature columns include the label"):
        fit(df, features=["amount", "label"])
    with pytest.raises(DataError, match="preprocessing.categorical: not in the training data: nope"):
        fit(df, preprocessing={"categorical": ["nope"]})


def test_string_labels_and_label_codes() -> None:
    df = loans().assign(label=lambda d: np.where(d["label"] == 1, "approved", "rejected"))
    data = fit(df)
    assert data["classes"] == ["approved", "rejected"]
    codes = label_codes(data, pa.array(["rejected", None, "unknown", "approved"]))
    assert codes.tolist() == [1, -100, -100, 0]
    num = label_codes({"task": "classification", "classes": [0, 1]}, np.array([1.0, 0.0, np.nan, 2.0]))
    assert num.tolist() == [1, 0, -100, -100]


def test_category_keys_agree_for_every_input_form() -> None:
    values = ["a", None, "b"]
    for form in (pa.array(values), pa.array(values).dictionary_encode(), pd.Series(values), values):
        assert category_keys(form).tolist() == values
    assert category_keys(pa.array([True, None, False])).tolist() == ["True", None, "False"]
    assert category_keys(pa.array([3, None])).tolist() == ["3", None]
    assert category_keys([3.0, 2.5, float("nan")]).tolist() == ["3", "2.5", None]


# ----------------------------------------------------------------------------- serving
def test_serving_accepts_original_fields_and_names_bad_ones() -> None:
    data = fit(loans())
    meta = {**data, "spec": {"type": "mlp"}}
    schema = InputSchema.from_meta(meta)
    assert [f for f, o in zip(schema.features, schema.optional, strict=True) if o] == ["amount", "applied"]
    ok = {"income": 1.0, "region": "mars", "city": "c1", "applied": "2021-03-04", "online": False}
    rows, single = rows_of({"features": ok}, schema)  # amount left out: optional
    assert single and rows[0][0] is None and rows[0][4] == dt.date(2021, 3, 4)
    rows, _ = rows_of({"features": {**ok, "amount": None, "applied": None}}, schema)
    assert rows[0][0] is None and rows[0][4] is None
    with pytest.raises(RequestError) as e:
        rows_of({"features": {**ok, "applied": "2021-13-45"}}, schema)
    assert e.value.status == 422 and e.value.errors[0]["field"] == "features.applied"
    assert "ISO date" in e.value.errors[0]["reason"]
    with pytest.raises(RequestError) as e:
        rows_of({"features": {**ok, "region": 3}}, schema)
    assert e.value.errors[0]["field"] == "features.region" and "expected a string" in e.value.errors[0]["reason"]
    with pytest.raises(RequestError) as e:
        rows_of({"features": {**ok, "income": None}}, schema)
    assert e.value.errors == [
        {"field": "features.income", "reason": "got null; the model was trained without missing values here"}
    ]
    inputs = describe_inputs(meta)
    region = next(i for i in inputs if i["name"] == "region")
    assert region["kind"] == "category" and set(region["categories"]) >= {"north", "south"}
    assert region["dtype"] in ("string", "large_string")


def test_the_tune_loop_trains_on_mixed_frames_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Tune trial's loop (pandas frames as the tune stage writes them) encodes categories,
    dates and missing values with the package's preprocessing and reports finite losses."""
    from raypipe.models import builtin

    df = loans(600, 3)
    data = fit(df)
    params = BuiltinTraining(model={"type": "mlp", "hidden": [8]}, label="label", epochs=2, batch_size=50)
    config = builtin.prepare(params, {"train": None, "validation": None}, data)
    reports: list[dict] = []
    monkeypatch.setattr(builtin._TuneIO, "checkpoint", lambda self: None)
    monkeypatch.setattr(builtin._TuneIO, "report", lambda self, metrics, folder: reports.append(metrics))
    cols = builtin.model_columns(data)
    frames = {"train": df[cols].iloc[:500], "validation": df[cols].iloc[500:]}
    builtin.tune_trainable(config, frames)({"optimizer.lr": 0.01})
    assert [r["epoch"] for r in reports] == [0, 1]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in reports)
    assert reports[-1]["step"] == 2 * 10  # 500 rows in batches of 50, twice
