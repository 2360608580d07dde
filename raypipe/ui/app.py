"""The web app of ``raypipe ui``: read-only pages on the metadata store, each with a JSON twin.

=====================================  =====================================================
page                                   JSON twin
=====================================  =====================================================
``/runs?pipeline&status&actor&since``  ``/api/runs`` (same parameters, ``limit``, ``offset``)
``/runs/RUN``                          ``/api/runs/RUN``
``/runs/RUN/stages/STAGE?attempt=N``   ``/api/runs/RUN/stages/STAGE``, ``.../log?attempt=N``
``/models``                            ``/api/models``
``/models/NAME?version=N&sort&order``  ``/api/models/NAME``, ``.../trials?version=N``
``/models/NAME/compare?a=N&b=M``       ``/api/models/NAME/compare``
``/apps``, ``/apps/APP``               ``/api/apps``, ``/api/apps/APP``
``/scheduler``, ``/bench``             ``/api/scheduler``, ``/api/bench``
=====================================  =====================================================

Actions (POST, a form or JSON, see :mod:`raypipe.ui.actions` and :mod:`raypipe.ui.auth`):
``/models/NAME/alias``, ``/apps/APP/split``, ``/apps/APP/rollout/abort``,
``/apps/APP/loop/stop`` (each also under ``/api/``); ``/login``, ``/logout``.

Server-rendered HTML (Jinja2, autoescaped), one stylesheet and one small script served from
the package (nothing from a CDN), figures as inline SVG.  Every response forbids framing and
inline scripts (``Content-Security-Policy``).  Requests share a few store connections
(:class:`StorePool`); each reads what its page shows, one page at a time.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from raypipe import api
from raypipe._json import json_safe
from raypipe.exceptions import ModelNotFoundError, RaypipeError, RunNotFoundError, StorageError
from raypipe.runner.states import RunStatus
from raypipe.store.metadata import MetadataStore, open_existing
from raypipe.store.objects import ArtifactRef
from raypipe.store.registry import ModelRegistry
from raypipe.ui import apps as app_pages
from raypipe.ui import models as model_pages
from raypipe.ui import pages, previews, queries
from raypipe.ui.actions import Actions
from raypipe.ui.auth import SIGNED_IN, Guard, has_login_cookie
from raypipe.ui.markdown import render as render_markdown
from raypipe.ui.queries import BadRequest, RunFilter

STATIC = Path(__file__).parent / "static"

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


#: A template -> the menu entry it belongs under.
NAV = {
    "runs": "/runs",
    "run": "/runs",
    "stage": "/runs",
    "models": "/models",
    "model": "/models",
    "compare": "/models",
    "scheduler": "/scheduler",
    "apps": "/apps",
    "bench": "/bench",
}


class StorePool:
    """Up to ``size`` open connections to one metadata store, lent one per request."""

    def __init__(self, first: MetadataStore, size: int = 4) -> None:
        self.url = first.url
        self._free: queue.LifoQueue[MetadataStore] = queue.LifoQueue()
        self._free.put(first)
        self._made = 1
        self._size = size
        self._lock = threading.Lock()
        self._all = [first]

    @contextmanager
    def store(self) -> Iterator[MetadataStore]:
        try:
            meta = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._made < self._size
                if make:
                    self._made += 1
            if make:
                meta = MetadataStore(self.url, upgrade=False)
                with self._lock:
                    self._all.append(meta)
            else:
                meta = self._free.get(timeout=60)
        try:
            yield meta
        finally:
            self._free.put(meta)

    def close(self) -> None:
        for meta in self._all:
            meta.close()


@dataclass(frozen=True)
class UiSettings:
    """What ``raypipe ui`` was started with."""

    db: str | None = None
    address: str | None = None
    bench: str | None = None
    page_size: int = 50
    #: Who may act (move an alias, change a split...): admins, users or none (see raypipe.ui.auth).
    actions: str = "admins"
    #: How long a page waits for the cluster before it says it is unreachable.
    cluster_timeout_s: float = 2.0


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("raypipe.ui", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=pages.ts,
        dur=pages.dur,
        size=pages.size,
        num=pages.num,
        cell=pages.cell,
        pretty=pages.pretty,
        markdown=render_markdown,
        status_class=pages.status_class,
        resources=pages.resources_text,
    )
    env.globals.update(url=pages.url, stage_url=pages.stage_url, query=pages.query)
    return env


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int = 10**9) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name}={raw!r}: expected a whole number") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name}={value}: expected {lo} to {hi}")
    return value


def _version(request: Request, name: str) -> int:
    """A required version number in the query (``?a=1&b=3``)."""
    value = _int(request, name, 0, 0)
    if value < 1:
        raise BadRequest(f"query parameter {name}: give a version number (e.g. ?a=1&b=3)")
    return value


def _order(request: Request) -> str:
    order = request.query_params.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise BadRequest(f"query parameter order={order!r}: expected asc or desc")
    return order


def _run_filter(request: Request) -> RunFilter:
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in {s.value for s in RunStatus}:
        raise BadRequest(f"query parameter status={status!r}: expected one of {', '.join(RunStatus)}")
    times = {}
    for name in ("since", "until"):
        raw = q.get(name)
        if raw:
            try:
                times[name] = pages.parse_time(raw)
            except ValueError as e:
                raise BadRequest(f"query parameter {name}: {e}") from None
    return RunFilter(q.get("pipeline") or None, status, q.get("actor") or None, times.get("since"), times.get("until"))


class UiApp:
    """The routes, over one store (:class:`StorePool`) and the settings."""

    def __init__(self, settings: UiSettings, meta: MetadataStore) -> None:
        self.settings = settings
        self.pool = StorePool(meta)
        self.location = meta.location
        self.env = _env()
        self.guard = Guard(settings.actions)
        self.cluster = app_pages.Cluster(settings.address, settings.cluster_timeout_s)

    # ------------------------------------------------------------------ helpers
    def html(self, template: str, status_code: int = 200, **context: Any) -> Response:
        nav = NAV.get(template.split(".")[0], "")
        page = self.env.get_template(template)
        body = page.render(settings=self.settings, store=self.location, nav=nav, signed_in=SIGNED_IN.get(), **context)
        return Response(body, status_code=status_code, media_type="text/html; charset=utf-8")

    @staticmethod
    def json(doc: Any, status_code: int = 200) -> Response:
        return JSONResponse(json_safe(doc), status_code=status_code)

    # ------------------------------------------------------------------ runs
    def runs_doc(self, request: Request) -> dict[str, Any]:
        flt = _run_filter(request)
        limit = _int(request, "limit", self.settings.page_size, 1, queries.MAX_LIMIT)
        offset = _int(request, "offset", 0)
        with self.pool.store() as meta:
            doc = queries.runs_page(meta, flt, limit, offset)
            choices = queries.run_choices(meta)
        return {**doc, "filter": {k: v for k, v in request.query_params.items() if k not in ("offset",)}, **choices}

    def runs(self, request: Request) -> Response:
        doc = self.runs_doc(request)
        return self.html("runs.html", doc=doc, statuses=[s.value for s in RunStatus], title="Runs")

    def api_runs(self, request: Request) -> Response:
        doc = self.runs_doc(request)
        return self.json({k: doc[k] for k in ("runs", "total", "limit", "offset")})

    def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        with self.pool.store() as meta:
            doc = queries.run_detail(meta, run_id)
        dag = pages.run_dag(run_id, doc["stages"])
        return self.html("run.html", doc=doc, dag=dag, title=f"Run {run_id}")

    def api_run(self, request: Request) -> Response:
        with self.pool.store() as meta:
            return self.json(queries.run_detail(meta, request.path_params["run_id"]))

    def stage_doc(self, request: Request, with_previews: bool = True) -> dict[str, Any]:
        run_id, stage = request.path_params["run_id"], request.path_params["stage"]
        with self.pool.store() as meta:
            doc = queries.stage_detail(meta, run_id, stage)
        ran = [a["attempt"] for a in doc["attempts"] if a["attempt"] > 0]
        origin = doc["attempts"][-1].get("cached_from_run") if doc["attempts"] else None
        if ran or origin is None or "attempt" in request.query_params:
            attempt = _int(request, "attempt", ran[-1] if ran else 0, 0)
            doc["log"] = previews.read_log(doc["run"]["storage"], run_id, stage, attempt)
        else:  # a cache hit: the log of the attempt that made its outputs
            doc["log"] = previews.read_log(origin["storage"], origin["run_id"], origin["stage"], origin["attempt"])
            doc["log"]["from_run"] = origin["run_id"]
        if with_previews:
            for group in ("outputs", "inputs"):
                for name, art in doc[group].items():
                    ref = ArtifactRef(art["uri"], art["sha256"], art["size"], art["format"], art["schema"])
                    art["preview"] = previews.preview(ref, name)
        return doc

    def stage(self, request: Request) -> Response:
        doc = self.stage_doc(request)
        history = doc["outputs"].get("history")
        if history is not None:  # a training history: its curves above its table
            ref = ArtifactRef(history["uri"], history["sha256"], history["size"], history["format"], history["schema"])
            history["curves"] = pages.curves(previews.json_value(ref))
        return self.html("stage.html", doc=doc, title=f"{doc['stage']} · {doc['run']['run_id']}")

    def api_stage(self, request: Request) -> Response:
        return self.json(self.stage_doc(request))

    def api_log(self, request: Request) -> Response:
        return self.json(self.stage_doc(request, with_previews=False)["log"])

    def artifact_png(self, request: Request) -> Response:
        with self.pool.store() as meta:
            ref = queries.artifact_ref(meta, request.path_params["sha256"])
        try:
            data = previews.png_bytes(ref)
        except StorageError as e:
            raise HTTPException(404, str(e)) from None
        return Response(data, media_type="image/png", headers={"cache-control": "max-age=86400"})

    # ------------------------------------------------------------------ models
    def models_doc(self, request: Request) -> dict[str, Any]:
        limit = _int(request, "limit", self.settings.page_size, 1, queries.MAX_LIMIT)
        with self.pool.store() as meta:
            return queries.models_page(meta, limit, _int(request, "offset", 0))

    def models(self, request: Request) -> Response:
        return self.html("models.html", doc=self.models_doc(request), title="Models")

    def api_models(self, request: Request) -> Response:
        return self.json(self.models_doc(request))

    def model_doc(self, request: Request) -> dict[str, Any]:
        name = request.path_params["name"]
        limit = _int(request, "limit", self.settings.page_size, 1, queries.MAX_LIMIT)
        with self.pool.store() as meta:
            doc = queries.model_detail(meta, name, limit, _int(request, "offset", 0))
            chosen = _int(request, "version", queries.latest_version(meta, name), 0)
            if chosen:
                doc["selected"] = sel = queries.version_detail(meta, name, chosen)
                sort = request.query_params.get("sort") or None
                sel["trials"] = model_pages.trials_doc(meta, sel["version"], sort, _order(request))
        return doc

    def model(self, request: Request) -> Response:
        doc = self.model_doc(request)
        sel = doc.get("selected")
        figures: dict[str, Any] = {}
        if sel is not None:
            with self.pool.store() as meta:
                nodes, edges = queries.lineage_graph(meta, sel.pop("lineage_tree"))
            figures["lineage"] = pages.lineage_dag(nodes, edges)
            figures["sources"] = [n for n in nodes if n["format"] == "source"]
            figures["datasets"] = [n for n in nodes if n["format"] == "dataset"]
            ref = sel.get("history_ref")
            history = previews.json_value(ref) if ref is not None else None
            figures["curves"] = pages.curves(history)
            figures["trials"] = model_pages.trials_figure(sel["trials"]) if sel.get("trials") else None
        cols = pages.metric_columns(doc["versions"])
        return self.html(
            "model.html",
            doc=doc,
            figures=figures,
            metric_cols=cols,
            title=f"Model {doc['name']}",
            csrf=self.guard.csrf(request),
        )

    def api_model(self, request: Request) -> Response:
        doc = self.model_doc(request)
        sel = doc.get("selected")
        if sel is not None:
            sel.pop("lineage_tree")
            ref = sel.pop("history_ref")
            sel["history"] = previews.json_value(ref) if ref is not None else None
        return self.json(doc)

    def compare_doc(self, request: Request) -> dict[str, Any]:
        name, a, b = request.path_params["name"], _version(request, "a"), _version(request, "b")
        with self.pool.store() as meta:
            return model_pages.compare_doc(meta, name, a, b)

    def compare(self, request: Request) -> Response:
        doc = self.compare_doc(request)
        return self.html(
            "compare.html", doc=doc, title=f"{doc['name']}: v{doc['a']['version']} vs v{doc['b']['version']}"
        )

    def api_compare(self, request: Request) -> Response:
        return self.json(self.compare_doc(request))

    def api_trials(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self.pool.store() as meta:
            latest = queries.latest_version(meta, name)
            if not latest:
                queries.model_detail(meta, name, 1, 0)  # a 404 naming the model
            version = _int(request, "version", latest, 1)
            mv = ModelRegistry(meta).get(f"{name}:{version}").to_dict()  # a 404 naming what is missing
            doc = model_pages.trials_doc(meta, mv, request.query_params.get("sort") or None, _order(request))
        if doc is None:
            raise HTTPException(
                404, f"version {version} of model {name!r} was not trained by a sweep (no trials output)"
            )
        return self.json({"name": name, "version": version, **doc})

    # ------------------------------------------------------------------ cluster, bench
    def scheduler_doc(self) -> dict[str, Any]:
        if not self.settings.address:
            return {
                "connected": False,
                "note": "No cluster given: connect with --address ADDR to see the scheduler's queue.",
            }
        address = self.settings.address
        data, note = self.cluster.read(lambda: api.scheduler_queue(address))
        if data is None:
            return {"connected": False, "note": note}
        return {"connected": True, **data}

    def scheduler(self, request: Request) -> Response:
        return self.html("scheduler.html", doc=self.scheduler_doc(), title="Scheduler")

    def api_scheduler(self, request: Request) -> Response:
        return self.json(self.scheduler_doc())

    def apps_doc(self) -> dict[str, Any]:
        with self.pool.store() as meta:
            return app_pages.apps_doc(self.cluster, meta)

    def apps(self, request: Request) -> Response:
        return self.html("apps.html", doc=self.apps_doc(), title="Apps")

    def api_apps(self, request: Request) -> Response:
        return self.json(self.apps_doc())

    def app_doc(self, request: Request) -> dict[str, Any]:
        with self.pool.store() as meta:
            doc = app_pages.app_doc(request.path_params["app"], self.cluster, meta, self.pool.url)
        doc["drift"] = app_pages.drift_series(doc["monitor"])
        doc["drift_notes"] = app_pages.drift_notes(doc["drift"])
        return doc

    def app(self, request: Request) -> Response:
        doc = self.app_doc(request)
        charts = app_pages.drift_charts(doc["drift"])
        return self.html("app.html", doc=doc, charts=charts, title=f"App {doc['app']}", csrf=self.guard.csrf(request))

    def api_app(self, request: Request) -> Response:
        return self.json(self.app_doc(request))

    def bench_doc(self) -> dict[str, Any]:
        if not self.settings.bench:
            return {
                "folder": None,
                "results": [],
                "note": "No folder given: start raypipe ui with --bench DIR to see results.",
            }
        return {"folder": self.settings.bench, "results": pages.find_bench(self.settings.bench)}

    def bench(self, request: Request) -> Response:
        return self.html("bench.html", doc=self.bench_doc(), title="Benchmarks")

    def api_bench(self, request: Request) -> Response:
        return self.json(self.bench_doc())

    def bench_png(self, request: Request) -> Response:
        if not self.settings.bench:
            raise HTTPException(404)
        try:
            path = pages.bench_file(self.settings.bench, request.path_params["path"])
            data = path.read_bytes()
        except OSError:
            raise HTTPException(404) from None
        if not data.startswith(previews.PNG_MAGIC):
            raise HTTPException(404)
        return Response(data, media_type="image/png")

    # ------------------------------------------------------------------ errors
    def error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            code, message = exc.status_code, str(exc.detail)
        elif isinstance(exc, (RunNotFoundError, ModelNotFoundError)):
            code, message = 404, str(exc)
        elif isinstance(exc, BadRequest):
            code, message = 400, str(exc)
        else:
            code, message = 500, str(exc)
        if request.url.path.startswith("/api/"):
            return self.json({"error": message, "status": code}, status_code=code)
        return self.html("error.html", status_code=code, code=code, message=message, title=f"Error {code}")


def _headers(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    async def wrapped(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        SIGNED_IN.set(has_login_cookie(scope.get("headers") or ()))

        async def send_with(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await app(scope, receive, send_with)

    return wrapped


def create_app(settings: UiSettings | None = None, meta: MetadataStore | None = None) -> Any:
    """The ASGI app on ``settings.db`` (as every command finds its store: ``--db``,
    ``$RAYPIPE_DB``, the project's), or on ``meta`` if given.  Opening checks the store is
    there (a RaypipeError naming where it looked)."""
    settings = settings or UiSettings()
    meta = meta or open_existing(settings.db, hint="run a pipeline first or pass --db")
    ui = UiApp(settings, meta)
    acts = Actions(ui)

    def handler(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            try:
                return fn(request)
            except (RaypipeError, HTTPException) as e:
                return ui.error(request, e)

        return endpoint

    routes = [
        Route("/", lambda r: RedirectResponse("/runs")),
        Route("/healthz", lambda r: PlainTextResponse("ok")),
        Route("/runs", handler(ui.runs)),
        Route("/runs/{run_id}", handler(ui.run)),
        Route("/runs/{run_id}/stages/{stage:path}", handler(ui.stage)),
        Route("/models", handler(ui.models)),
        Route("/models/{name}", handler(ui.model)),
        Route("/models/{name}/compare", handler(ui.compare)),
        Route("/scheduler", handler(ui.scheduler)),
        Route("/apps", handler(ui.apps)),
        Route("/apps/{app}", handler(ui.app)),
        Route("/login", acts.login_form, methods=["GET"]),
        Route("/login", acts.login, methods=["POST"]),
        Route("/logout", acts.logout, methods=["POST"]),
        Route("/models/{name}/alias", acts.move_alias, methods=["POST"]),
        Route("/apps/{app}/split", acts.split, methods=["POST"]),
        Route("/apps/{app}/rollout/abort", acts.abort_rollout, methods=["POST"]),
        Route("/apps/{app}/loop/stop", acts.stop_loop, methods=["POST"]),
        Route("/api/models/{name}/alias", acts.move_alias, methods=["POST"]),
        Route("/api/apps/{app}/split", acts.split, methods=["POST"]),
        Route("/api/apps/{app}/rollout/abort", acts.abort_rollout, methods=["POST"]),
        Route("/api/apps/{app}/loop/stop", acts.stop_loop, methods=["POST"]),
        Route("/bench", handler(ui.bench)),
        Route("/bench/files/{path:path}", handler(ui.bench_png)),
        Route("/artifacts/{sha256}.png", handler(ui.artifact_png)),
        Route("/api/runs", handler(ui.api_runs)),
        Route("/api/runs/{run_id}", handler(ui.api_run)),
        Route("/api/runs/{run_id}/stages/{stage:path}/log", handler(ui.api_log)),
        Route("/api/runs/{run_id}/stages/{stage:path}", handler(ui.api_stage)),
        Route("/api/models", handler(ui.api_models)),
        Route("/api/models/{name}", handler(ui.api_model)),
        Route("/api/models/{name}/compare", handler(ui.api_compare)),
        Route("/api/models/{name}/trials", handler(ui.api_trials)),
        Route("/api/scheduler", handler(ui.api_scheduler)),
        Route("/api/apps", handler(ui.api_apps)),
        Route("/api/apps/{app}", handler(ui.api_app)),
        Route("/api/bench", handler(ui.api_bench)),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ui.cluster.close()
        ui.pool.close()

    app = Starlette(
        routes=routes,
        exception_handlers={404: ui.error, 405: ui.error},
        lifespan=lifespan,
    )
    app.state.ui = ui
    return _headers(app)


def check_port(host: str, port: int) -> None:
    """A RaypipeError naming the address when it cannot be listened on (in use, no such interface)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except OSError as e:
        raise RaypipeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8600, log_level: str = "warning") -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    check_port(host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def serve(settings: UiSettings, host: str = "127.0.0.1", port: int = 8600) -> None:
    """Serve the UI on ``settings`` until interrupted."""
    run_server(create_app(settings), host, port)


__all__ = ["StorePool", "UiSettings", "create_app", "run_server", "serve"]
