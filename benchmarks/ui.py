"""``raypipe ui`` under a full store: p50/p95 of each page and JSON endpoint, on SQLite and PostgreSQL.

    python -m benchmarks.ui --out bench-out/ui [--runs 10000] [--stages 10] [--models 10]
        [--versions 100] [--requests 40] [--postgres | --db postgresql://...] [--skip-sqlite]

Fills a metadata store (no Ray) with ``--runs`` runs of ``--stages`` stage runs each
(100,000 by default; with their artifacts, inputs, outputs and lineage rows) and
``--models`` x ``--versions`` model versions (1,000) with alias history, written with bulk
SQL matching the schema; a few artifacts are real files (a parquet table, a training
history, metrics, a report) that the stage pages preview.  Serves the UI in this process
(uvicorn on a thread, 127.0.0.1) and times ``--requests`` sequential HTTP requests per
page and endpoint (after 3 warm-up ones), on one kept-alive connection.

Backends: a SQLite file always (unless ``--skip-sqlite``); PostgreSQL as well with
``--postgres`` (a throwaway server started on 127.0.0.1 from Debian's ``postgresql``
package, :mod:`tools.pg_server`) or ``--db URL`` (an empty database of yours, filled).
Each backend gets the same store and the same requests; ``results.json`` keeps each under
its name (``sqlite``, ``postgresql``).

The baseline of each page is its main statement run bare on the same database (sqlite3 or
psycopg, fetchall): what the page costs beyond the query.  Goal: every page <= 300 ms p95
(and, as the issue puts it, <= 3x the bare query).  The schema is the store's own, with the
indexes the UI's run lists use (migration 4); ``ANALYZE`` runs after the fill.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import base_parser, goal, print_table, ratio, write_results
from tools.pg_server import PostgresServer, pg_bindir

GOAL_P95_MS = 300.0
GOAL_RATIO = 3.0
PIPELINES = [f"pipeline-{i}" for i in range(10)]
ACTORS = [f"user{i}" for i in range(8)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def stage_names(n: int) -> list[str]:
    base = ["ingest", "prepare", "train", "evaluate", "register", "report"]
    return (base + [f"extra{i}" for i in range(n)])[:n] if n > len(base) else base[:n]


def config_json(storage: str, names: list[str]) -> str:
    stages: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        inputs = {"data": f"{names[i - 1]}.out"} if i else {}
        if name == "evaluate":
            inputs = {"model": "train.model", "data": "prepare.table"}
        stages.append({"name": name, "kind": "python", "inputs": inputs, "resources": {"cpu": 1}})
    return json.dumps({"name": "bench", "storage": storage, "stages": stages})


def fill(db: str, root: str, runs: int, per_run: int, models: int, versions: int) -> dict[str, Any]:
    """The store, written with bulk SQL in one transaction; what the pages will ask for."""
    import pandas as pd

    from raypipe.store.artifacts import ArtifactStore
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.sql import Database

    MetadataStore(db).close()  # the schema, as raypipe creates it
    conn = Database(db)
    have = int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    if have:
        conn.close()
        raise SystemExit(f"--db: the database already holds {have} runs; give an empty one (the benchmark fills it)")
    art = ArtifactStore(root)
    rng = random.Random(0)
    frame = pd.DataFrame({f"c{i}": [rng.random() for _ in range(1000)] for i in range(20)})
    real = {
        "table": art.put_value(frame),
        "history": art.put_value([{"epoch": e, "loss": 1 / (e + 1), "val_loss": 1.1 / (e + 1)} for e in range(50)]),
        "metrics": art.put_value({"accuracy": 0.93, "f1": 0.91}),
        "report": art.put_value("# report\n\n- accuracy: 0.93\n"),
    }
    names = stage_names(per_run)
    cfg = config_json(root, names)
    now = time.time()
    arts = [(r.sha256, r.uri, r.size, r.format, json.dumps(r.schema) if r.schema else None, now) for r in real.values()]
    src = ("f" * 64, "/data/raw.csv", 1_000_000, "source", json.dumps({"mtime_ns": 1}), now)
    arts.append(src)
    run_rows, sr_rows, io_rows, lin_rows = [], [], [], []
    sid = 0
    train_of: dict[int, tuple[str, int, str]] = {}
    for i in range(runs):
        run_id = f"{PIPELINES[i % len(PIPELINES)]}-{i:06d}"
        created = now - (runs - i) * 60.0
        status = "failed" if i % 17 == 0 else "succeeded"
        run_rows.append(
            (
                run_id,
                PIPELINES[i % len(PIPELINES)],
                status,
                cfg,
                None,
                root,
                created,
                created + 50,
                None,
                1,
                "bench-host",
            )
            + (ACTORS[i % len(ACTORS)],)
        )
        prev_sha = src[0]
        for k, name in enumerate(names):
            sid += 1
            cached = i % 3 == 0 and k < 3
            sha = real["table"].sha256 if name == "prepare" else f"{i:08d}{k:04d}".ljust(64, "0")
            if name == "evaluate":
                sha = real["metrics"].sha256
            if name == "report":
                sha = real["report"].sha256
            if sha not in {a[0] for a in arts[:5]}:
                fmt = "model" if name == "train" else "json"
                schema = (
                    json.dumps({"task": "classification", "label": "y", "features": ["a", "b"]})
                    if fmt == "model"
                    else None
                )
                arts.append((sha, f"{root}/objects/{sha[:2]}/{sha}.json", 100 + k, fmt, schema, now))
            st = "cached" if cached else ("failed" if status == "failed" and k == len(names) - 1 else "succeeded")
            sr_rows.append(
                (
                    sid,
                    run_id,
                    name,
                    0 if cached else 1,
                    st,
                    f"key-{i}-{k}",
                    None,
                    created + k,
                    created + k + 3,
                    None,
                    "node-1",
                )
            )
            if st != "failed":
                io_rows.append((sid, "out", "model" if name == "train" else "out", sha))
                io_rows.append((sid, "in", "source:0" if k == 0 else "data", prev_sha))
                lin_rows.append((prev_sha, sha, sid))
                if name == "train":
                    io_rows.append((sid, "out", "history", real["history"].sha256))
                    train_of[i] = (run_id, sid, sha)
            prev_sha = sha
    with conn.transaction():
        write(conn, arts, run_rows, sr_rows, io_rows, lin_rows)
        trained = sorted(train_of)
        mv_rows, alias_rows, event_rows = versions_rows(models, versions, train_of, now)
        for m in range(models):
            conn.execute(
                "INSERT INTO models(name, created_at, description) VALUES (?, ?, ?)", (f"model-{m}", now, "bench")
            )
        many(conn, "INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", mv_rows)
        many(conn, "INSERT INTO model_aliases VALUES (?, ?, ?, ?)", alias_rows)
        many(
            conn,
            "INSERT INTO alias_events(name, alias, old_version, new_version, at, reason) VALUES (?, ?, ?, ?, ?, ?)",
            event_rows,
        )
    conn.execute("ANALYZE")
    conn.close()
    some_run = train_of[trained[len(trained) // 2]][0]
    return {
        "run": some_run,
        "stage_runs": len(sr_rows),
        "model_versions": len(mv_rows),
        "artifacts": len(arts),
        "model": "model-0",
        "versions": versions,
    }


def many(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """``executemany`` on the store's connection, in its dialect (see raypipe.store.sql)."""
    from raypipe.store.sql import to_postgres

    if conn.backend == "sqlite":
        conn._raw.executemany(sql, rows)
        return
    with conn._raw.cursor() as cur:
        cur.executemany(to_postgres(sql), rows)


def write(
    conn: Any, arts: list[Any], run_rows: list[Any], sr_rows: list[Any], io_rows: list[Any], lin_rows: list[Any]
) -> None:
    many(conn, "INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?, ?, ?)", arts)
    many(
        conn,
        "INSERT INTO runs(run_id, pipeline, status, config_json, config_path, storage, created_at, ended_at, error,"
        " driver_pid, driver_host, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        run_rows,
    )
    many(
        conn,
        "INSERT INTO stage_runs(id, run_id, stage, attempt, status, cache_key, cached_from, started_at, ended_at,"
        " error, node_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        sr_rows,
    )
    many(conn, "INSERT OR IGNORE INTO stage_io VALUES (?, ?, ?, ?)", io_rows)
    many(conn, "INSERT OR IGNORE INTO lineage VALUES (?, ?, ?)", lin_rows)


def versions_rows(
    models: int, versions: int, train_of: dict[int, tuple[str, int, str]], now: float
) -> tuple[list[Any], list[Any], list[Any]]:
    """The model versions (each on a train stage run), the aliases and the alias history."""
    trained = sorted(train_of)
    mv_rows: list[Any] = []
    alias_rows: list[Any] = []
    event_rows: list[Any] = []
    for m in range(models):
        name = f"model-{m}"
        for v in range(1, versions + 1):
            run_id, train_sid, sha = train_of[trained[(m * versions + v - 1) % len(trained)]]
            metrics = json.dumps(
                {"accuracy": 0.8 + v / (10 * versions), "f1": 0.7 + v / (10 * versions), "loss": 1 / v}
            )
            mv_rows.append((name, v, sha, run_id, "train", train_sid, metrics, "{}", "[]", "code", now - versions + v))
            event_rows.append(
                (name, "candidate", v - 1 or None, v, now - versions + v, f"registered from run {run_id}")
            )
            if v % 10 == 0:
                event_rows.append((name, "production", v - 10 or None, v, now - versions + v, "promoted"))
        alias_rows += [(name, "candidate", versions, now), (name, "production", versions - versions % 10 or 1, now)]
    return mv_rows, alias_rows, event_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(db: str) -> tuple[Any, int]:
    import uvicorn

    from raypipe.ui import UiSettings, create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(UiSettings(db=db)), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the UI server did not start")
        time.sleep(0.02)
    return server, port


def endpoints(info: dict[str, Any]) -> list[tuple[str, str, str | None, tuple[Any, ...]]]:
    """(name, path, the bare statement, its arguments) of each page and endpoint measured."""
    from raypipe.ui.queries import MODELS_SQL, RUNS_SQL, VERSIONS_SQL

    run, model = info["run"], info["model"]
    runs_sql = RUNS_SQL.format(where="")
    filtered = RUNS_SQL.format(where=" WHERE pipeline = ? AND status = ?")
    run_sql = "SELECT * FROM stage_runs WHERE run_id = ? ORDER BY id"
    stage_sql = "SELECT * FROM stage_runs WHERE run_id = ? AND stage = ? ORDER BY id"
    out: list[tuple[str, str, str | None, tuple[Any, ...]]] = []
    for prefix in ("", "/api"):
        kind = "api" if prefix else "page"
        out += [
            (f"{kind} runs", f"{prefix}/runs", runs_sql, (50, 0)),
            (
                f"{kind} runs filtered",
                f"{prefix}/runs?pipeline=pipeline-3&status=succeeded",
                filtered,
                ("pipeline-3", "succeeded", 50, 0),
            ),
            (f"{kind} runs offset 5000", f"{prefix}/runs?offset=5000", runs_sql, (50, 5000)),
            (f"{kind} run", f"{prefix}/runs/{run}", run_sql, (run,)),
            (f"{kind} stage train", f"{prefix}/runs/{run}/stages/train", stage_sql, (run, "train")),
            (f"{kind} stage prepare", f"{prefix}/runs/{run}/stages/prepare", stage_sql, (run, "prepare")),
            (f"{kind} models", f"{prefix}/models", MODELS_SQL, (50, 0)),
            (f"{kind} model", f"{prefix}/models/{model}", VERSIONS_SQL, (model, 50, 0)),
            (f"{kind} compare", f"{prefix}/models/{model}/compare?a=1&b={info['versions']}", None, ()),
        ]
    out.append(("api stage log", f"/api/runs/{run}/stages/train/log", stage_sql, (run, "train")))
    return out


def time_pages(port: int, eps: list[tuple[str, str, str | None, tuple[Any, ...]]], n: int) -> dict[str, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = {}
    for name, path, _, _ in eps:
        times = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            dt = (time.perf_counter() - t0) * 1e3
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
            if i >= 3:
                times.append(dt)
        out[name] = {
            "p50_ms": statistics.median(times),
            "p95_ms": pct(times, 0.95),
            "bytes": len(body),
            "samples": times,
        }
        print(f"  {name}: p95 {out[name]['p95_ms']:.1f} ms", file=sys.stderr)
    conn.close()
    return out


def time_bare(db: str, eps: list[tuple[str, str, str | None, tuple[Any, ...]]], n: int) -> dict[str, dict[str, float]]:
    """Each page's statement run bare: sqlite3 on the file, or psycopg on the database (the
    statement in PostgreSQL's placeholders, as the store sends it)."""
    from raypipe.store.sql import is_postgres, to_postgres

    if is_postgres(db):
        import psycopg

        conn: Any = psycopg.connect(db, autocommit=True)
    else:
        conn = sqlite3.connect(db)
    out = {}
    for name, _, sql, args in eps:
        if sql is None:
            continue
        stmt = to_postgres(sql) if is_postgres(db) else sql
        times = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            conn.execute(stmt, args).fetchall()
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"p50_ms": statistics.median(times), "p95_ms": pct(times, 0.95)}
    conn.close()
    return out


def bench_backend(backend: str, db: str, root: str, args: Any) -> dict[str, Any]:
    """Fill the store on ``db``, serve the UI on it and time every page and its bare statement."""
    t0 = time.perf_counter()
    info = fill(db, root, args.runs, args.stages, args.models, args.versions)
    fill_s = time.perf_counter() - t0
    print(
        f"[{backend}] filled {args.runs:,} runs, {info['stage_runs']:,} stage runs, "
        f"{info['model_versions']:,} versions in {fill_s:.1f} s",
        file=sys.stderr,
    )
    eps = endpoints(info)
    server, port = serve(db)
    try:
        pages = time_pages(port, eps, args.requests)
    finally:
        server.should_exit = True
    bare = time_bare(db, eps, args.requests)
    return {"info": {**info, "fill_s": fill_s}, "pages": pages, "bare": bare}


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--stages", type=int, default=10, help="stage runs per run")
    p.add_argument("--models", type=int, default=10)
    p.add_argument("--versions", type=int, default=100, help="versions per model")
    p.add_argument("--requests", type=int, default=40, help="timed requests per page")
    pg = p.add_mutually_exclusive_group()
    pg.add_argument("--postgres", action="store_true", help="also on a PostgreSQL server started for the run")
    pg.add_argument("--db", metavar="URL", help="also on this (empty) PostgreSQL database")
    p.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = p.parse_args()
    if args.db is not None and not args.db.startswith(("postgresql://", "postgres://")):
        p.error(f"--db {args.db!r}: expected a postgresql:// URL (SQLite runs on its own file)")
    if args.skip_sqlite and not (args.postgres or args.db):
        p.error("--skip-sqlite needs --postgres or --db URL")
    work = Path(tempfile.mkdtemp(prefix="raypipe-bench-ui-"))
    server: PostgresServer | None = None
    done: dict[str, dict[str, Any]] = {}
    try:
        if not args.skip_sqlite:
            root = str(work / "sqlite")
            os.makedirs(root, exist_ok=True)
            done["sqlite"] = bench_backend("sqlite", str(Path(root) / "raypipe.db"), root, args)
        if args.postgres or args.db:
            url = args.db
            if url is None:
                bindir = pg_bindir()
                if bindir is None:
                    raise SystemExit("--postgres: PostgreSQL is not installed (apt-get install postgresql)")
                server = PostgresServer(bindir)
                url = server.new_database()
            root = str(work / "postgresql")
            os.makedirs(root, exist_ok=True)
            done["postgresql"] = bench_backend("postgresql", url, root, args)
    finally:
        if server is not None:
            server.stop()
    report(args, done)


def report(args: Any, done: dict[str, dict[str, Any]]) -> None:
    """results.json (each section keyed by backend) and a table per backend."""
    results, baseline, ratios, goals, samples, fills = {}, {}, {}, {}, {}, {}
    for backend, d in done.items():
        pages, bare = d["pages"], d["bare"]
        results[backend] = {k: {kk: v[kk] for kk in ("p50_ms", "p95_ms", "bytes")} for k, v in pages.items()}
        baseline[backend] = bare
        ratios[backend] = {k: ratio(pages[k]["p95_ms"], bare[k]["p95_ms"]) for k in pages if k in bare}
        goals.update({f"{backend} {k} p95": goal(v["p95_ms"], GOAL_P95_MS, "ms") for k, v in pages.items()})
        goals.update(
            {
                f"{backend} {k} vs bare query": goal(r, GOAL_RATIO, "x")
                for k, r in ratios[backend].items()
                if r is not None
            }
        )
        samples[backend] = {k: v["samples"] for k, v in pages.items()}
        fills[backend] = d["info"]["fill_s"]
    info = next(iter(done.values()))["info"]
    path = write_results(
        args.out,
        "ui",
        params={
            "runs": args.runs,
            "stage_runs": info["stage_runs"],
            "model_versions": info["model_versions"],
            "artifacts": info["artifacts"],
            "requests": args.requests,
            "backends": list(done),
            "fill_s": fills,
        },
        results=results,
        baseline={**baseline, "goal_p95_ms": GOAL_P95_MS},
        ratios=ratios,
        goals=goals,
        samples=samples,
    )
    for backend, d in done.items():
        pages, bare = d["pages"], d["bare"]
        rows = [
            (k, v["p50_ms"], v["p95_ms"], bare.get(k, {}).get("p95_ms"), ratios[backend].get(k))
            for k, v in pages.items()
        ]
        print_table(
            f"raypipe ui on {backend}: {args.runs:,} runs, {info['stage_runs']:,} stage runs, "
            f"{info['model_versions']:,} versions",
            ["page", "p50 ms", "p95 ms", "bare query p95 ms", "x bare"],
            rows,
            caption=f"goal: p95 <= {GOAL_P95_MS:g} ms; {path}",
        )


if __name__ == "__main__":
    main()
