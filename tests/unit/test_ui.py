"""``raypipe ui`` on a small real store (no Ray): every page and its JSON twin, filters and
pagination, previews and logs, escaping of untrusted text, the SVG figures, the CLI's errors."""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from raypipe.cli import app as cli
from raypipe.runner.stage_log import capture
from raypipe.ui import UiSettings, create_app
from raypipe.ui.graphs import Node, _ticks, dag_svg, history_charts, layers
from raypipe.ui.markdown import render
from raypipe.ui.pages import parse_time
from tests.unit.ui_store import EVIL, DemoStore, build, png

FIRST, SECOND, BAD = "demo-20260101-000000-aaaaaa", "demo-20260102-000000-bbbbbb", "evil-1"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    return build(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def client(demo: DemoStore) -> TestClient:
    return TestClient(create_app(UiSettings(db=demo.db)))


def get_json(client: TestClient, path: str, status: int = 200) -> Any:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def page(client: TestClient, path: str, status: int = 200) -> str:
    r = client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


def test_runs_filter_by_pipeline_status_actor_and_time_and_paginate(client: TestClient) -> None:
    doc = get_json(client, "/api/runs")
    assert [r["run_id"] for r in doc["runs"]] == [BAD, SECOND, FIRST] and doc["total"] == 3
    second = doc["runs"][1]
    assert (second["status"], second["actor"], second["stages"], second["cache_hits"]) == ("failed", "bob", 6, 5)
    first = doc["runs"][2]
    assert (first["attempts"], first["failed_attempts"], first["cache_hits"]) == (7, 1, 0)

    def ids(query: str) -> list[str]:
        return [r["run_id"] for r in get_json(client, "/api/runs?" + query)["runs"]]

    assert ids("pipeline=demo") == [SECOND, FIRST]
    assert ids("status=failed") == [BAD, SECOND]
    assert ids("actor=alice") == [FIRST]
    assert ids("pipeline=demo&status=succeeded&actor=alice") == [FIRST]
    assert ids("since=1h") == [BAD, SECOND, FIRST] and ids("until=1h") == []
    assert ids("since=2000-01-01&until=2100-01-01T00:00") == [BAD, SECOND, FIRST]
    one = get_json(client, "/api/runs?limit=1&offset=1")
    assert [r["run_id"] for r in one["runs"]] == [SECOND] and (one["total"], one["limit"], one["offset"]) == (3, 1, 1)
    html = page(client, "/runs?limit=1&offset=1")
    assert "2–2 of 3" in html and 'rel="next"' in html and 'rel="prev"' in html
    assert 'href="/runs/demo-20260102-000000-bbbbbb"' in html
    html = page(client, "/runs?pipeline=demo")
    assert "<option selected>demo</option>" in html and BAD not in html


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("status=done", "status='done': expected one of running, succeeded"),
        ("limit=0", "limit=0: expected 1 to 500"),
        ("limit=x", "limit='x': expected a whole number"),
        ("since=last+tuesday", "since: 'last tuesday' is not a time"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(client: TestClient, query: str, says: str) -> None:
    assert says in get_json(client, "/api/runs?" + query, 400)["error"]
    assert says.replace("'", "&#39;") in page(client, "/runs?" + query, 400)


def test_unknown_runs_stages_and_models_are_404(client: TestClient) -> None:
    assert "no run 'nope'" in get_json(client, "/api/runs/nope", 404)["error"]
    assert "has no stage &#39;nope&#39;" in page(client, f"/runs/{FIRST}/stages/nope", 404)
    assert "no model 'nope'" in get_json(client, "/api/models/nope", 404)["error"]
    assert "has no version 7" in get_json(client, "/api/models/demo-model?version=7", 404)["error"]
    assert get_json(client, "/api/nothing-here", 404)["status"] == 404
    assert "404" in page(client, "/nothing-here", 404)


def test_the_run_page_draws_the_dag_with_each_stage_status_and_a_link(client: TestClient) -> None:
    html = page(client, f"/runs/{FIRST}")
    svg = html[html.index("<svg") : html.index("</svg>")]
    for stage in ("ingest", "prepare", "train", "evaluate", "register", "report"):
        assert f'href="/runs/{FIRST}/stages/{stage}"' in svg
    assert svg.count('class="node st-ok"') == 6 and "2 tries" in svg
    assert svg.count('class="edge"') == 8  # evaluate, register and report depend on two stages each
    doc = get_json(client, f"/api/runs/{FIRST}")
    by = {s["name"]: s for s in doc["stages"]}
    assert [s["name"] for s in doc["stages"]] == ["ingest", "prepare", "train", "evaluate", "register", "report"]
    assert by["evaluate"]["attempts"] == 2 and by["train"]["resources"] == {"cpu": 2}
    assert by["train"]["upstream"] == ["prepare"] and by["report"]["upstream"] == ["evaluate", "register"]
    assert set(by["train"]["outputs"]) == {"history", "model"} and by["train"]["node_id"] == "node0123456789abcdef"
    failed = [s for s in doc["stage_runs"] if s["status"] == "failed"]
    assert failed[0]["error"] == "RuntimeError: evaluation worker ran out of patience"
    assert failed[0]["error_category"] == "error" and "Traceback" in failed[0]["traceback"]
    second = {s["name"]: s for s in get_json(client, f"/api/runs/{SECOND}")["stages"]}
    assert [second[s]["status"] for s in ("train", "report")] == ["cached", "skipped"]
    assert sum(s["cache_hits"] for s in second.values()) == 5
    assert 'class="node st-cached"' in page(client, f"/runs/{SECOND}")


def test_the_stage_page_shows_attempts_the_log_and_previews(client: TestClient, demo: DemoStore) -> None:
    html = page(client, f"/runs/{FIRST}/stages/train")
    assert "epoch 1 loss=0.5" in html and "===== " in html  # the log the capture wrote
    assert "<polyline" in html and "val_loss" in html  # the history's curves
    log = get_json(client, f"/api/runs/{FIRST}/stages/train/log")
    assert log["exists"] and log["attempt"] == 1 and log["path"].endswith("logs/" + FIRST + "/train/1.log")
    assert "epoch 2 loss=0.25 " + EVIL in log["text"] and log["text"].rstrip().endswith("done")
    missing = get_json(client, f"/api/runs/{FIRST}/stages/train/log?attempt=9")
    assert not missing["exists"] and "no log file" in missing["note"]

    doc = get_json(client, f"/api/runs/{FIRST}/stages/evaluate")
    assert [(a["attempt"], a["status"]) for a in doc["attempts"]] == [(1, "failed"), (2, "succeeded")]
    assert doc["outputs"]["metrics"]["preview"] == {
        "kind": "json",
        "text": json.dumps({"accuracy": 0.9, "f1": 0.875, "rows": 40}, indent=2),
        "note": "",
    }
    prepare = get_json(client, f"/api/runs/{FIRST}/stages/prepare")["outputs"]["table"]["preview"]
    assert (prepare["kind"], prepare["columns"], prepare["num_rows"], len(prepare["rows"])) == (
        "table",
        ["x", "y", "z"],
        40,
        20,
    )
    assert prepare["rows"][3] == [3, 1, 7.5]

    report = page(client, f"/runs/{FIRST}/stages/report")
    assert "<h1>demo report</h1>" in report and "<strong>accuracy: 0.9</strong>" in report
    assert "<th>class</th>" in report
    src = re.search(r'<img class="artifact" src="(/artifacts/[0-9a-f]{64}\.png)"', report)
    assert src is not None
    r = client.get(src.group(1))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png()
    metrics_sha = doc["outputs"]["metrics"]["sha256"]
    assert client.get(f"/artifacts/{metrics_sha}.png").status_code == 404  # only PNG files are served raw


def test_a_cache_hit_names_the_run_it_came_from(client: TestClient) -> None:
    doc = get_json(client, f"/api/runs/{SECOND}/stages/train")
    [hit] = doc["attempts"]
    assert hit["status"] == "cached" and hit["cached_from_run"]["run_id"] == FIRST
    assert set(doc["outputs"]) == {"history", "model"}
    assert doc["log"]["from_run"] == FIRST and "epoch 1 loss=0.5" in doc["log"]["text"]  # the log that made them
    assert f'href="/runs/{FIRST}/stages/train"' in page(client, f"/runs/{SECOND}/stages/train")


def test_untrusted_names_errors_and_logs_are_escaped(client: TestClient) -> None:
    pages = [
        page(client, "/runs"),
        page(client, f"/runs/{BAD}"),
        page(client, f"/runs/{BAD}/stages/{quote(EVIL, safe='')}"),
        page(client, f"/runs/{FIRST}/stages/train"),
        page(client, "/runs?actor=" + quote(EVIL)),
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "&lt;script&gt;alert(" in html
    assert re.findall(r"<script[^>]*>", pages[1]) == ['<script src="/static/ui.js" defer>']


def test_every_response_forbids_inline_scripts_and_framing(client: TestClient) -> None:
    for path in ("/runs", "/api/runs", "/static/ui.css", "/nope"):
        r = client.get(path)
        assert "script-src 'self'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    css = client.get("/static/ui.css")
    assert css.status_code == 200 and ".st-bad" in css.text
    assert "http" not in client.get("/static/ui.js").text  # nothing fetched from elsewhere


def test_models_and_a_model_with_versions_aliases_lineage_and_curves(client: TestClient, demo: DemoStore) -> None:
    [m] = get_json(client, "/api/models")["models"]
    assert (m["name"], m["versions"], m["latest"], m["description"]) == ("demo-model", 1, 1, "predicts y")
    assert m["aliases"] == {"candidate": 1, "production": 1} and m["latest_metrics"] == {"accuracy": 0.9, "f1": 0.875}
    assert 'href="/models/demo-model"' in page(client, "/models")

    doc = get_json(client, "/api/models/demo-model")
    [v] = doc["versions"]
    assert (v["version"], v["aliases"], v["run_id"], v["metrics"]["f1"]) == (
        1,
        ["candidate", "production"],
        FIRST,
        0.875,
    )
    assert [(e["alias"], e["new_version"], e["reason"]) for e in doc["alias_history"]][0] == (
        "production",
        1,
        "first good model",
    )
    sel = doc["selected"]
    assert sel["version"]["version"] == 1 and len(sel["history"]) == 10
    lineage = sel["lineage"]
    assert lineage["produced_by"]["stage"] == "train"
    [src] = lineage["produced_by"]["inputs"][0]["produced_by"]["inputs"][0]["produced_by"]["inputs"]
    assert src["format"] == "source" and src["path"].endswith("raw.csv")

    html = page(client, "/models/demo-model?version=1")
    lineage_svg = html[html.index('id="lineage"') :]
    lineage_svg = lineage_svg[: lineage_svg.index("</svg>")]
    assert "raw.csv" in lineage_svg and "prepare.table" in lineage_svg and "ingest.data" in lineage_svg
    assert f'href="/runs/{FIRST}/stages/train"' in lineage_svg
    assert html.count('<svg class="chart"') == 2  # loss + val_loss, val_accuracy
    assert "first good model" in html and "predicts y" in html


def test_the_pages_read_a_postgresql_store_too(tmp_path: Path, metadata_db: str) -> None:
    demo = build(tmp_path, metadata_db)
    client = TestClient(create_app(UiSettings(db=demo.db)))
    runs = get_json(client, "/api/runs?status=failed")["runs"]
    assert [r["run_id"] for r in runs] == [BAD, SECOND] and runs[1]["cache_hits"] == 5
    assert get_json(client, f"/api/runs/{FIRST}")["stages"][3]["attempts"] == 2
    assert get_json(client, "/api/models")["models"][0]["aliases"] == {"candidate": 1, "production": 1}
    for path in ("/runs", f"/runs/{FIRST}", f"/runs/{FIRST}/stages/train", "/models", "/models/demo-model"):
        page(client, path)


def test_cluster_pages_say_to_connect_and_bench_shows_results(tmp_path: Path, demo: DemoStore) -> None:
    client = TestClient(create_app(UiSettings(db=demo.db)))
    assert "connect with --address" in page(client, "/scheduler")
    assert get_json(client, "/api/scheduler")["connected"] is False
    assert "connect with --address" in page(client, "/apps")
    bench = tmp_path / "bench" / "ui"
    bench.mkdir(parents=True)
    doc = {"benchmark": "ui", "goals": {"runs p95": {"value": 12.5, "limit": 300, "unit": "ms", "met": True}}}
    (bench / "results.json").write_text(json.dumps(doc))
    (bench / "plot.png").write_bytes(png())
    (tmp_path / "secret.png").write_bytes(png())
    client = TestClient(create_app(UiSettings(db=demo.db, bench=str(tmp_path / "bench"))))
    [found] = get_json(client, "/api/bench")["results"]
    assert found["benchmark"] == "ui" and found["plots"] == ["ui/plot.png"]
    assert "runs p95" in page(client, "/bench")
    assert client.get("/bench/files/ui/plot.png").content == png()
    assert client.get("/bench/files/../secret.png").status_code == 404
    assert client.get("/bench/files/ui/results.json").status_code == 404


def test_the_cli_refuses_a_missing_store_and_a_taken_port(tmp_path: Path, demo: DemoStore) -> None:
    runner = CliRunner()
    r = runner.invoke(cli, ["ui", "--db", str(tmp_path / "none.db")])
    assert r.exit_code == 2 and "no metadata store" in r.output
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        r = runner.invoke(cli, ["ui", "--db", demo.db, "--port", str(port)])
    assert r.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.output
    r = runner.invoke(cli, ["ui", "--db", demo.db, "--bench", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "is not a folder" in r.output


def test_markdown_renders_a_safe_subset() -> None:
    html = render(
        "# Title <b>\n\nSome *it* and **bold** and `x<y>`.\n\n- one\n- two\n\n1. first\n\n"
        "| a | b |\n|---|---|\n| 1 | <i>2</i> |\n\n```\n<script>x</script>\n```\n"
        "<img src=x onerror=alert(1)> [link](javascript:alert(1))\n"
    )
    assert "<h1>Title &lt;b&gt;</h1>" in html
    assert "<em>it</em>" in html and "<strong>bold</strong>" in html and "<code>x&lt;y&gt;</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li></ol>" in html
    assert "<td>&lt;i&gt;2&lt;/i&gt;</td>" in html and "<pre><code>&lt;script&gt;x&lt;/script&gt;</code></pre>" in html
    assert "<img" not in html and "<a " not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_dag_layers_lanes_and_cycles() -> None:
    assert layers(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("a", "c")]) == {"a": 0, "b": 1, "c": 2, "d": 0}
    svg = dag_svg(
        [Node("a", "A"), Node("b", "B <b>"), Node("c", "C", href="/x?a=1&b=2")], [("a", "b"), ("b", "c"), ("a", "c")]
    )
    assert svg.count("<path class=") == 3 and svg.count('class="node ') == 3
    assert "B &lt;b&gt;" in svg and 'href="/x?a=1&amp;b=2"' in svg
    long_edge = re.findall(r'<path class="edge" d="([^"]+)"', svg)[2]
    assert long_edge.count("C") == 2  # through the lane in b's layer, not under b
    looped = layers(["a", "b", "c"], [("a", "b"), ("b", "a"), ("c", "a")])
    assert looped["c"] == 0 and looped["a"] == looped["b"] == 1
    assert "<svg" in dag_svg([Node("a", "A"), Node("b", "B")], [("a", "b"), ("b", "a")])


def test_history_charts_group_splits_and_skip_gaps() -> None:
    charts = history_charts(
        [
            {"epoch": 1, "loss": 1.0, "val_loss": 2.0, "acc": 0.5, "note": "x"},
            {"epoch": 2, "loss": None, "val_loss": 1.0},
        ]
    )
    assert [(t, xs, sorted(s)) for t, xs, s in charts] == [
        ("loss", [1.0, 2.0], ["loss", "val_loss"]),
        ("acc", [1.0, 2.0], ["acc"]),
    ]
    assert charts[0][2]["loss"] == [1.0, None]


@pytest.mark.parametrize(
    ("lo", "hi", "ends"),
    [
        (0.0008, 1.0, (0.0, 1.0)),  # p-values: 0, 0.5, 1 (not -0.04918, 0.5004, 1.05)
        (0.0467, 2.3, (0.0, 2.5)),
        (-3.0, 7.0, (-3.0, 7.0)),
        (100.0, 12345.0, (0.0, 15000.0)),
        (5.0, 5.0, (4.75, 5.25)),  # one value: around it
        (float("nan"), 1.0, (0.0, 1.0)),
    ],
)
def test_chart_y_ends_are_round_and_hold_the_values(lo: float, hi: float, ends: tuple[float, float]) -> None:
    y0, y1 = _ticks(lo, hi)
    assert (y0, y1) == pytest.approx(ends)
    if math.isfinite(lo):
        assert y0 <= lo and hi <= y1


def test_times_relative_absolute_and_epoch() -> None:
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("1700000000") == 1_700_000_000.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon")


def test_the_stage_log_keeps_prints_log_records_and_the_exception(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "logs" / "r" / "s.1.log"
    with capture(path, "stage s attempt 1"):
        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("raypipe.stage.s").info("an info record")
    with pytest.raises(ValueError, match="boom"), capture(path, "stage s attempt 1 again"):
        raise ValueError("boom")
    text = path.read_text()
    assert "stage s attempt 1" in text and "to stdout\n" in text and "to stderr\n" in text
    assert "INFO raypipe.stage.s: an info record" in text and text.count(" done\n") == 1
    assert "failed: ValueError" in text and 'raise ValueError("boom")' in text
    out = capsys.readouterr()
    assert "to stdout" in out.out and "to stderr" in out.err  # the console still gets it
    assert sys.stdout is not None and not type(sys.stdout).__name__ == "Tee"
