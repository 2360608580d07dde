"""raypipe's split ingress, colocated and routed, against a plain single Serve deployment of the same model.

On one local Ray (``--num-cpus``, default 2) the benchmark registers two versions of a
digits MLP (two hidden layers of 128, the quickstart's input format: 64 named pixels),
deploys them with raypipe (``raypipe.serving.app.deploy``: ``v1``/``v2`` at 90/10, sticky on
an ``X-User-Id`` header, scheduler reservation, per-variant metrics) in the modes of
``--mode`` (``both``: two apps, ``bench-colocated`` with the variants in the router's
replica, ``bench-routed`` with a router and a deployment per variant) and, beside them on
the same Serve instance, a plain deployment (``benchmarks._serve_plain:PlainModel``: one
replica that parses the body and predicts with the same model code, no validation,
routing or metrics).  An HTTP load generator (aiohttp, closed loop, keep-alive, in this
process) sends the same bodies (``{"features": {...}}`` of real digits rows) to all:

- **latency**: in pairs, each mode beside plain (and the auth app beside its mode), 1
  connection to each for ``--latency-s`` seconds, one request to each in turn (so both see
  the same machine load; a third target's tail work would land on them) -> p50 / p99, and
  the added p50 as the per-round difference within the pair (median over rounds);
- **throughput**: ``--concurrency`` connections for ``--duration`` seconds -> requests/s
  (and p50 / p99 under load).

The throughput runs alternate (plain, colocated, routed, plain...); ``--repeat`` rounds
after a warm-up; medians are reported.  Goals, colocated: added p50 latency (raypipe - plain,
1 connection) <= 0.5 ms, throughput raypipe / plain >= 0.95; routed: <= 2 ms, >= 0.7.

**The cost of auth** (unless ``--skip-auth``): one more raypipe app, the same two versions,
split and mode (the first of ``--mode``), with a bearer token for ``/predict`` (and ``/feedback``), is paired
with that mode's app in the 1-connection latency rounds: p50/p99 with auth on vs off, the added ms and
the ratio.  Request ids are signed in both apps (always on), so their cost is measured
in-process too: microseconds per token check, id issued, id verified, sampling decision.
Goal: added p50 of auth <= 0.2 ms.

    .venv/bin/python -m benchmarks.serving --out bench-out/serving [--mode both] [--duration 10] [--repeat 2] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import bar_chart, base_parser, goal, median, print_table, ratio, write_results

#: Per mode: added p50 at 1 connection (ms) and throughput ratio to plain Serve.
GOALS = {"colocated": (0.5, 0.95), "routed": (2.0, 0.7)}
GOAL_AUTH_ADDED_P50_MS = 0.2
#: The benchmark's predict token (in the environment of this process, where the deploy resolves it).
TOKEN_ENV = "RAYPIPE_BENCH_TOKEN"
TOKEN = "bench-token-8d1f3a6c9e2b4f70a5c7"


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def _load(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, warmup_s: float, keyed: bool
) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` connections, each sending its next request when
    the last one answered.  Only requests started after the warm-up count."""
    import aiohttp

    lat: list[float] = []
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    t_start = time.perf_counter()
    t_warm = t_start + warmup_s
    t_end = t_warm + seconds
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(i: int) -> None:
            k = i
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                headers = {"Content-Type": "application/json"}
                if keyed:
                    headers["X-User-Id"] = f"user-{k % 10_000}"
                body = bodies[k % len(bodies)]
                k += concurrency
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = r.status
                except Exception:  # noqa: BLE001 - counted as a failure
                    status = -1
                t1 = time.perf_counter()
                if t0 >= t_warm:
                    lat.append((t1 - t0) * 1e3)
                    statuses[status] += 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    n = len(lat)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": _pct(lat, 0.99),
        "failed": sum(c for s, c in statuses.items() if s != 200),
    }


async def _paired(
    targets: dict[str, str],
    bodies: list[bytes],
    seconds: float,
    extra_headers: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency at 1 connection per target, one request to each in turn (the order reversed
    every round), so all see the same machine load at the same moments."""
    import aiohttp

    lat: dict[str, list[float]] = {name: [] for name in targets}
    failed: Counter[str] = Counter()
    sessions = {name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) for name in targets}
    try:
        names = list(targets)
        k = 0
        t_warm = time.perf_counter() + 0.5
        t_end = t_warm + seconds
        while time.perf_counter() < t_end:
            for name in names if k % 2 == 0 else names[::-1]:
                headers = {"Content-Type": "application/json", "X-User-Id": f"user-{k % 10_000}"}
                headers.update((extra_headers or {}).get(name) or {})
                t0 = time.perf_counter()
                try:
                    async with sessions[name].post(targets[name], data=bodies[k % len(bodies)], headers=headers) as r:
                        await r.read()
                        ok = r.status == 200
                except Exception:  # noqa: BLE001 - counted as a failure
                    ok = False
                if t0 >= t_warm:
                    lat[name].append((time.perf_counter() - t0) * 1e3)
                    failed[name] += 0 if ok else 1
            k += 1
    finally:
        for sess in sessions.values():
            await sess.close()
    return {
        name: {
            "requests": len(xs),
            "rps": len(xs) / seconds,
            "p50_ms": statistics.median(xs) if xs else float("nan"),
            "p99_ms": _pct(xs, 0.99),
            "failed": failed[name],
        }
        for name, xs in lat.items()
    }


def _auth_cpu_us(repeat: int = 20_000) -> dict[str, float]:
    """Microseconds per call of the router's auth work, in this process (no HTTP, no Ray)."""
    from raypipe.serving.auth import RequestIds, TokenCheck, token_hash

    check = TokenCheck([token_hash(TOKEN)])
    ids = RequestIds("bench", os.urandom(32))
    header = f"Bearer {TOKEN}"
    issued = [ids.issue() for _ in range(1000)]

    def per_call(fn: Any) -> float:
        t0 = time.perf_counter()
        for i in range(repeat):
            fn(i)
        return (time.perf_counter() - t0) / repeat * 1e6

    out = {
        "token_check_us": per_call(lambda i: check.bearer(header, "POST /predict")),
        "id_issue_us": per_call(lambda i: ids.issue()),
        "id_verify_us": per_call(lambda i: ids.verify(issued[i % 1000], window_s=86400.0)),
        "id_sample_us": per_call(lambda i: ids.sample(issued[i % 1000], 0.2)),
    }
    out["predict_path_us"] = out["token_check_us"] + out["id_issue_us"] + out["id_sample_us"]
    return out


def _deploy_apps(args: Any, db: str, port: int, modes: list[str]) -> tuple[dict[str, str], dict[str, float], str]:
    """The raypipe apps of ``modes`` (``bench-<mode>``) and, unless --skip-auth, ``bench-auth``
    in the first mode: {target: predict URL}, {mode: deploy seconds}, the auth app's URL or ""."""
    from raypipe.serving import app as serving
    from raypipe.serving.spec import ServeSpec

    def app_spec(app: str, opts: dict[str, float], mode: str, **extra: Any) -> ServeSpec:
        """The digits app (90% production, 10% candidate, sticky by user) in ``mode``."""
        return ServeSpec.model_validate(
            {
                "app": app,
                "model": "digits",
                "port": port,
                "key": {"header": "X-User-Id"},
                "variants": [
                    {"version": "@production", "weight": 90, "ray_actor_options": opts},
                    {"version": "@candidate", "weight": 10, "ray_actor_options": opts},
                ],
                "ingress": {"ray_actor_options": opts},
                "serving": {"mode": mode},
                **extra,
            }
        )

    # logical CPUs sized so that both apps, the auth app and plain fit on 2 CPUs
    opts = {"num_cpus": 0.25}
    targets: dict[str, str] = {}
    deploy_s: dict[str, float] = {}
    for mode in modes:
        spec = app_spec(f"bench-{mode}", opts, mode)
        t0 = time.perf_counter()
        st = serving.deploy(spec, db=db)
        deploy_s[mode] = time.perf_counter() - t0
        targets[mode] = f"{st.url}/predict"
        _progress(f"raypipe app ({mode}) deployed in {deploy_s[mode]:.1f}s at {st.url}")
    auth_url = ""
    if not args.skip_auth:
        # the same app with a predict token (and a feedback token); logical CPUs kept small
        # to fit beside the others, not booked with the scheduler
        os.environ[TOKEN_ENV] = TOKEN
        auth_spec = app_spec(
            "bench-auth",
            {"num_cpus": 0.05},
            modes[0],
            reserve=False,
            auth={"predict_tokens": [f"${{env:{TOKEN_ENV}}}"], "feedback_tokens": [f"${{env:{TOKEN_ENV}}}"]},
        )
        auth_url = serving.deploy(auth_spec, db=db).url
        _progress(f"raypipe app with auth ({modes[0]}) deployed at {auth_url}")
    return targets, deploy_s, auth_url


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["colocated", "routed", "both"], default="both", help="raypipe's serving modes")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput measurement")
    p.add_argument("--latency-s", type=float, default=5.0, help="seconds of each 1-connection latency measurement")
    p.add_argument("--concurrency", type=int, default=16, help="connections of the throughput measurement")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--skip-auth", action="store_true", help="no auth app beside the others")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short measurements: --duration 3 --latency-s 4 --repeat 1 (overrides them)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.latency_s, args.repeat = 3.0, 4.0, 1
    modes = ["colocated", "routed"] if args.mode == "both" else [args.mode]

    import ray
    from ray import serve

    from benchmarks._serve_plain import FEATURES, PlainModel, digits, mlp_package
    from raypipe.runner.ray_session import quiet_ray_logging
    from raypipe.serving import app as serving
    from raypipe.serving.metrics import get_collector
    from raypipe.store.artifacts import ArtifactStore
    from raypipe.store.metadata import MetadataStore
    from raypipe.store.registry import ModelRegistry

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="raypipe-bench-serving-"))
    try:
        _progress("training and registering two digits MLPs")
        store = ArtifactStore(str(tmp / "store"))
        meta = MetadataStore(str(tmp / "raypipe.db"))
        reg = ModelRegistry(meta)
        refs = []
        for i in range(2):
            ref = store.put_value(mlp_package(tmp / f"m{i}", seed=i))
            refs.append(ref)
            reg.register("digits", ref, None, None, None, aliases=["production" if i == 0 else "candidate"])
        meta.close()

        _progress(f"starting Ray ({args.num_cpus} CPUs) and Serve")
        # quiet like the CLI: Ray's warnings in its log folder, the replicas' output not forwarded here
        quiet_ray_logging()
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        port = _free_port()
        apps, deploy_s, auth_url = _deploy_apps(args, str(tmp / "raypipe.db"), port, modes)
        targets_auth = {"raypipe_auth": f"{auth_url}/predict"} if auth_url else {}
        ref = refs[0]
        plain_cfg = {"label": "v1", "uri": ref.uri, "sha256": ref.sha256, "size": ref.size, "fail_rate": 0.0}
        serve.run(
            serve.deployment(PlainModel)
            .options(name="plain", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
            .bind(plain_cfg),
            name="plain",
            route_prefix="/plain",
            logging_config={"enable_access_log": False, "log_level": "WARNING"},
        )
        targets = {"plain": f"http://127.0.0.1:{port}/plain", **apps}
        x, _ = digits()
        bodies = [
            json.dumps({"features": dict(zip(FEATURES, map(float, row), strict=True))}).encode() for row in x[:500]
        ]

        latency_targets = {**targets, **targets_auth}
        auth_headers = {"raypipe_auth": {"Authorization": f"Bearer {TOKEN}"}}
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {
            t: {"latency": [], "throughput": []} for t in latency_targets
        }
        _progress("warm-up")
        for name, u in targets.items():
            asyncio.run(_load(u, bodies, 4, 2.0, 0.5, name != "plain"))
        if targets_auth:
            asyncio.run(_paired(targets_auth, bodies, 2.0, auth_headers))
        # Latency in pairs: each mode beside plain, the auth app beside its mode (two targets
        # taking turns; with more, a target's request lands on the previous one's tail work).
        pairs = [("plain", mode) for mode in modes] + ([(modes[0], "raypipe_auth")] if targets_auth else [])
        for rnd in range(args.repeat):
            for a, b in pairs:
                _progress(
                    f"round {rnd + 1}/{args.repeat}: latency, {a} and {b}, 1 connection each, "
                    f"alternating, {args.latency_s:g}s"
                )
                t_phase = time.time()
                pair = {a: latency_targets[a], b: latency_targets[b]}
                paired = asyncio.run(_paired(pair, bodies, args.latency_s, auth_headers))
                if a == "plain":
                    samples["plain"]["latency"].append(paired["plain"])
                    time.sleep(0.3)  # the router sends its events every 0.1 s
                    snap = ray.get(get_collector(f"bench-{b}").snapshot.remote(t_phase + 1))
                    samples[b]["latency"].append(
                        {
                            **paired[b],
                            "plain_p50_ms": paired["plain"]["p50_ms"],
                            "plain_p99_ms": paired["plain"]["p99_ms"],
                            # the router's own view: validation, routing and the call of the variant
                            "router_p50_ms": snap.get("v1", {}).get("latency_ms", {}).get("p50"),
                        }
                    )
                else:  # the auth app and its mode without auth
                    samples[b]["latency"].append(
                        {**paired[b], "off_p50_ms": paired[a]["p50_ms"], "off_p99_ms": paired[a]["p99_ms"]}
                    )
            for name, u in targets.items():
                _progress(
                    f"round {rnd + 1}/{args.repeat}: {name}, {args.concurrency} connections for {args.duration:g}s"
                )
                samples[name]["throughput"].append(
                    asyncio.run(_load(u, bodies, args.concurrency, args.duration, 1.0, name != "plain"))
                )

        def figures(name: str) -> dict[str, Any]:
            lat, thr = samples[name]["latency"], samples[name]["throughput"]
            return {
                "p50_ms": median([s["p50_ms"] for s in lat]),
                "p99_ms": median([s["p99_ms"] for s in lat]),
                "rps": median([s["rps"] for s in thr]),
                "loaded_p50_ms": median([s["p50_ms"] for s in thr]),
                "loaded_p99_ms": median([s["p99_ms"] for s in thr]),
                "failed": sum(s["failed"] for s in lat + thr),
            }

        base = figures("plain")
        per_mode: dict[str, dict[str, Any]] = {}
        goals: dict[str, Any] = {}
        for mode in modes:
            res = figures(mode)
            snap = ray.get(get_collector(f"bench-{mode}").snapshot.remote())
            res["deploy_s"] = deploy_s[mode]
            res["router_p50_ms"] = median(
                [s["router_p50_ms"] for s in samples[mode]["latency"] if s.get("router_p50_ms")]
            )
            res["split_requests"] = {v: s["requests"] for v, s in snap.items()}
            # per round, the mode minus plain beside it (the same moments), then the median
            res["added_p50_ms"] = median([x["p50_ms"] - x["plain_p50_ms"] for x in samples[mode]["latency"]])
            res["throughput_ratio"] = ratio(res["rps"], base["rps"])
            res["ratios"] = {
                k: ratio(res[k], base[k]) for k in ("p50_ms", "p99_ms", "rps", "loaded_p50_ms", "loaded_p99_ms")
            }
            added_goal, thr_goal = GOALS[mode]
            goals[f"{mode}_added_p50_ms"] = goal(res["added_p50_ms"], added_goal, "ms")
            goals[f"{mode}_throughput_ratio"] = goal(
                res["throughput_ratio"] or 0.0, thr_goal, "x", lower_is_better=False
            )
            per_mode[mode] = res
        first = modes[0]
        res = {k: v for k, v in per_mode[first].items() if k != "ratios"}
        res["mode"] = first
        ratios = dict(per_mode[first]["ratios"])
        res.update({f"auth_cpu_{k}": v for k, v in _auth_cpu_us().items()})
        if targets_auth:
            lat = samples["raypipe_auth"]["latency"]
            res["auth_p50_ms"] = median([s["p50_ms"] for s in lat])
            res["auth_p99_ms"] = median([s["p99_ms"] for s in lat])
            res["auth_failed"] = sum(s["failed"] for s in lat)
            # per round, auth on minus off (the same round's alternating requests, the same mode), then the median
            res["auth_added_p50_ms"] = median([x["p50_ms"] - x["off_p50_ms"] for x in lat])
            res["auth_added_p99_ms"] = median([x["p99_ms"] - x["off_p99_ms"] for x in lat])
            res["auth_off_p50_ms"] = median([x["off_p50_ms"] for x in lat])
            ratios["auth_p50_ms"] = ratio(res["auth_p50_ms"], res["p50_ms"])
            ratios["auth_p99_ms"] = ratio(res["auth_p99_ms"], res["p99_ms"])
            goals["auth_added_p50_ms"] = goal(res["auth_added_p50_ms"], GOAL_AUTH_ADDED_P50_MS, "ms")
        params = {k: getattr(args, k) for k in ("mode", "duration", "latency_s", "concurrency", "repeat", "num_cpus")}
        params["quick"] = bool(args.quick)
        params["auth"] = bool(targets_auth)
        params["load_avg_1m_before"] = load_before
        params["load_avg_1m_after"] = os.getloadavg()[0]
        path = write_results(
            args.out,
            "serving",
            params=params,
            results=res,
            modes=per_mode,
            baseline=base,
            ratios=ratios,
            goals=goals,
            samples=samples,
        )
        rows = [["plain", base["p50_ms"], base["p99_ms"], base["rps"], base["loaded_p50_ms"], base["loaded_p99_ms"],
                 "", "", base["failed"]]]  # fmt: skip
        captions = []
        for mode, r in per_mode.items():
            rows.append(
                [mode, r["p50_ms"], r["p99_ms"], r["rps"], r["loaded_p50_ms"], r["loaded_p99_ms"], r["added_p50_ms"],
                 r["throughput_ratio"] or 0.0, r["failed"]]
            )  # fmt: skip
            a, t = goals[f"{mode}_added_p50_ms"], goals[f"{mode}_throughput_ratio"]
            captions.append(
                f"{mode}: added p50 {r['added_p50_ms']:.2f} ms (goal <= {a['limit']:g}: {'met' if a['met'] else 'MISSED'}), "
                f"throughput {r['throughput_ratio'] or 0:.2f}x plain (goal >= {t['limit']:g}: "
                f"{'met' if t['met'] else 'MISSED'}), split {r['split_requests']}"
            )
        print_table(
            "serving: raypipe's ingress (colocated, routed) vs a plain Serve deployment",
            [
                "",
                "p50 ms (1 conn)",
                "p99 ms (1 conn)",
                f"req/s ({args.concurrency} conn)",
                "p50 ms loaded",
                "p99 ms loaded",
                "added p50 ms",
                "x plain req/s",
                "failed",
            ],
            rows,
            caption="; ".join(captions),
        )
        names = ["plain", *modes]
        bar_chart(
            args.out / "serving.png",
            [
                {
                    "title": "latency, 1 connection",
                    "ylabel": "ms",
                    "groups": ["p50", "p99"],
                    "series": {n: [figures(n)["p50_ms"], figures(n)["p99_ms"]] for n in names},
                },
                {
                    "title": f"throughput, {args.concurrency} connections",
                    "ylabel": "requests/s",
                    "groups": ["req/s"],
                    "series": {n: [figures(n)["rps"]] for n in names},
                    "hline": (
                        base["rps"] * GOALS["colocated"][1],
                        f"goal {GOALS['colocated'][1]:g}x plain (colocated)",
                    ),
                },
            ],
            title="raypipe serving (colocated, routed) vs a plain Serve deployment",
        )
        if targets_auth:
            print(
                f"auth on vs off ({first}, 1 connection): p50 {res['auth_p50_ms']:.2f} vs {res['auth_off_p50_ms']:.2f} ms, "
                f"added p50 {res['auth_added_p50_ms']:+.2f} ms (goal <= {GOAL_AUTH_ADDED_P50_MS:g}: "
                f"{'met' if goals['auth_added_p50_ms']['met'] else 'MISSED'}), added p99 "
                f"{res['auth_added_p99_ms']:+.2f} ms; in-process: token check {res['auth_cpu_token_check_us']:.1f} us, "
                f"id issued {res['auth_cpu_id_issue_us']:.1f} us, verified {res['auth_cpu_id_verify_us']:.1f} us, "
                f"sampled {res['auth_cpu_id_sample_us']:.1f} us"
            )
            serving.shutdown("bench-auth")
        _progress(f"results: {path}")
        for mode in modes:
            serving.shutdown(f"bench-{mode}")
        serve.delete("plain")
        return 0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
