"""raypipe: run ML pipelines inside a Ray cluster.

The CLI is thin: it parses arguments, validates configs before touching Ray, and
prints.  User errors print one line each, no traceback, and exit with code 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.tree import Tree

from raypipe import api
from raypipe.exceptions import RaypipeError, RunStopped
from raypipe.failures import Failure, next_step, strip_ansi
from raypipe.runner.executor import RunResult, StageEvent
from raypipe.runner.plan import Plan

app = typer.Typer(
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Metadata store (path, sqlite:/// or postgresql:// URL); default $RAYPIPE_DB, else the project's "
        "(.raypipe/raypipe.db here or in a folder above, or under $RAYPIPE_HOME).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray address to connect to (default: the pipeline's, $RAY_ADDRESS, the cluster `ray start` left on "
        "this machine, else a new local Ray).",
    ),
]


def _guard(fn: Callable[[], T], run_hint: Callable[[], str | None] = lambda: None) -> T:
    """Run ``fn``; a RaypipeError becomes a clean message and exit code 2, Ctrl-C exit 130."""
    try:
        return fn()
    except RaypipeError as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, RunStopped) as e:
        _shutdown_ray()
        run_id = run_hint()
        hint = f"; continue with: raypipe resume {run_id}" if run_id else ""
        err_console.print(f"[yellow]{'stopped' if isinstance(e, RunStopped) else 'interrupted'}[/]{hint}")
        raise typer.Exit(143 if isinstance(e, RunStopped) else 130) from None


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While inside, SIGTERM (``loop stop``, a supervisor) stops the run cleanly: its stages
    are cancelled and it is recorded ``stopped`` (not left ``running``)."""
    import signal

    from raypipe.runner.executor import request_stop

    def handler(signum: int, frame: Any) -> None:
        request_stop("SIGTERM")  # the run loop stops at its next turn (never inside a Ray call)

    handler.raypipe_stop = True  # type: ignore[attr-defined] # kept when Ray connects (ray_session.ensure_ray)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shutdown_ray() -> None:
    """Leave Ray cleanly after Ctrl-C (its exit hooks can crash on an interrupted driver)."""
    mod = sys.modules.get("ray")
    if mod is not None and mod.is_initialized():
        try:
            mod.shutdown()
        except Exception:  # noqa: BLE001 - best effort while exiting
            pass


_ICONS = {
    "started": "[cyan]▶[/]",
    "succeeded": "[green]✓[/]",
    "cached": "[green]↺[/]",
    "reused": "[green]↺[/]",
    "retrying": "[yellow]↻[/]",
    "failed": "[red]✗[/]",
    "skipped": "[dim]–[/]",
    "queued": "[dim]…[/]",
    "waiting": "[dim]…[/]",
    "requeued": "[yellow]⟲[/]",
    "stale": "[yellow]⟳[/]",
    "preempting": "[yellow]⏸[/]",
}


class _Reporter:
    """Shows a progress bar over the stages and one line per stage event."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None
        self.plan: Plan | None = None
        self.run_id: str | None = None

    def on_start(self, run_id: str, plan: Plan) -> None:
        self.plan = plan
        self.run_id = run_id
        from raypipe.runner.ray_session import ray_target

        where = ray_target(plan.config.ray, self.address)[1]
        console.print(f"run [bold]{run_id}[/] · pipeline {plan.config.name} · {len(plan.order)} stages · {escape(where)}")
        self.task = self.progress.add_task(plan.config.name, total=len(plan.order))

    def on_event(self, e: StageEvent) -> None:
        dur = f" ({e.duration_s:.1f}s)" if e.duration_s is not None else ""
        attempt = f" attempt {e.attempt}" if e.attempt > 1 else ""
        shown = ("failed", "retrying", "skipped", "waiting", "requeued", "queued", "preempting", "stale")
        msg = f": {escape(e.message)}" if e.message and e.status in shown else ""
        if e.message and e.status in ("succeeded", "cached", "reused"):
            # A kind's after_success note (e.g. "registered digits v3 @candidate"); for cache
            # hits and reuse it follows "from stage run N; ".
            note = e.message if e.status == "succeeded" else e.message.partition("; ")[2]
            msg = f": {escape(note)}" if note else ""
        label = e.status if e.status != "cached" else "cache hit"
        self.progress.console.print(
            f"  {_ICONS.get(e.status, '·')} {e.stage} {label}{attempt}{dur}{msg}", soft_wrap=True
        )
        if e.status in ("succeeded", "cached", "reused", "failed", "skipped") and self.task is not None:
            self.progress.advance(self.task)

    @contextmanager
    def running(self) -> Iterator[None]:
        with self.progress:
            yield


def _print_failures(errors: Mapping[str, str], failures: Mapping[str, Failure]) -> None:
    """Each failed stage's whole message (a validation's report too; never a traceback), and for a
    failure that would happen again, what to change."""
    for stage, short in errors.items():
        failure = failures.get(stage)
        lines = (failure.message if failure is not None else strip_ansi(short)).splitlines() or [""]
        console.print(f"  {escape(stage)}: {escape(lines[0])}", soft_wrap=True)
        for line in lines[1:]:
            console.print(f"    {escape(line)}", soft_wrap=True)
        advice = failure.advice(stage) if failure is not None else None
        if advice:
            console.print(f"    [yellow]→ {escape(advice)}[/]", soft_wrap=True)


def _rerun_text(file: str, overrides: list[str] | None, db: str | None) -> str:
    """The command that runs a pipeline again as it was run."""
    args = ["raypipe", "run", file]
    for o in overrides or ():
        args += ["--set", o]
    return shlex.join(args + (["--db", db] if db else []))


def _finish(result: RunResult, plan: Plan | None, rerun: str | None = None) -> None:
    if result.ok:
        if plan is not None:
            for stage, outs in api.final_outputs(plan, result).items():
                for name, value in outs.items():
                    console.rule(f"{stage}.{name}", style="dim")
                    console.print(value if isinstance(value, str) else json.dumps(value, indent=2), markup=False)
        console.print(f"[green]run {result.run_id} succeeded[/] in {result.wall_s:.1f}s")
        return
    console.print(f"[red]run {result.run_id} {result.status}[/] in {result.wall_s:.1f}s")
    _print_failures(result.errors, result.failures)
    console.print(escape(next_step(result.failures, result.run_id, rerun)), soft_wrap=True)
    raise typer.Exit(1)


LocalOpt = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Start a new local Ray for this run, even where `ray start` left a cluster on this machine "
        "(which a run joins by default, as Ray's own commands do).",
    ),
]


def _local_or(address: str | None, local: bool) -> str | None:
    if local and address and address != "local":
        raise typer.BadParameter("give --address or --local, not both")
    return "local" if local else address


def _cwd_importable() -> None:
    """Let ``module:function`` name modules in the current directory, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


@app.command("run")
def run_cmd(
    file: Annotated[str, typer.Argument(help="Pipeline YAML file.")],
    address: AddressOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field: PATH=VALUE, e.g. stages.train.params.args.epochs=3."),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run every stage even if a cached result exists.")
    ] = False,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="The new run's id (default: NAME-DATE-TIME-RANDOM).")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Metadata store (path, sqlite:/// or postgresql:// URL); default $RAYPIPE_DB, then the "
            "pipeline's `metadata:`, then <storage>/raypipe.db for an absolute storage path, else the project's.",
        ),
    ] = None,
    local: LocalOpt = False,
) -> None:
    """Run a pipeline: every stage, its artifacts and lineage are recorded."""
    _cwd_importable()
    address = _local_or(address, local)
    rep = _Reporter(address)

    def go() -> RunResult:
        with rep.running(), _stop_on_sigterm():
            return api.run(
                file,
                overrides=set_ or (),
                address=address,
                use_cache=not no_cache,
                on_event=rep.on_event,
                on_start=rep.on_start,
                run_id=run_id,
                db=db,
            )

    _finish(_guard(go, lambda: rep.run_id), rep.plan, _rerun_text(file, set_, db))


@app.command("resume")
def resume_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    address: AddressOpt = None,
    local: LocalOpt = False,
) -> None:
    """Continue a failed, crashed or killed run without redoing finished stages."""
    _cwd_importable()
    address = _local_or(address, local)
    rep = _Reporter(address)
    before = _guard(lambda: api.run_failures(run_id, db))
    rerun = f"raypipe run {shlex.quote(before.config_path)}" if before.config_path else None
    if before.deterministic:
        err_console.print(
            "[yellow]warning:[/] these failures happen again on the same inputs and config: "
            "resuming will fail the same way unless something the stages read changed",
            soft_wrap=True,
        )
        for stage, f in before.failures.items():
            err_console.print(f"  {escape(stage)}: {escape(f.summary)}", soft_wrap=True)

    def go() -> RunResult:
        with rep.running(), _stop_on_sigterm():
            return api.resume(run_id, db=db, address=address, on_event=rep.on_event, on_start=rep.on_start)

    _finish(_guard(go, lambda: rep.run_id), rep.plan, rerun)


@app.command("validate")
def validate_cmd(files: Annotated[list[str], typer.Argument(help="Pipeline YAML files.")]) -> None:
    """Check pipeline files (schema, graph, stage kinds, functions) without starting Ray."""
    _cwd_importable()
    plans = _guard(lambda: api.validate(files))
    for f, p in zip(files, plans, strict=True):
        if not isinstance(p, Plan):  # a rollout spec
            console.print(
                f"[green]ok[/] {f}: rollout of app {p.app}, candidate {p.candidate}, steps {_steps_text(p.steps)}",
                soft_wrap=True,
            )
            continue
        console.print(f"[green]ok[/] {f}: pipeline {p.config.name}, {len(p.order)} stages")


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@app.command("runs")
def runs_cmd(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs."""
    runs = _guard(lambda: api.list_runs(db, limit))
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    table = Table("pipeline", "status", "started", "duration")
    table.columns.insert(0, Column("run id", no_wrap=True))
    for r in runs:
        dur = f"{r.ended_at - r.created_at:.1f}s" if r.ended_at else "-"
        table.add_row(r.run_id, r.pipeline, _status(r.status), _ts(r.created_at), dur)
    console.print(table)


def _status(s: str) -> str:
    color = {"succeeded": "green", "cached": "green", "failed": "red", "timeout": "red", "running": "cyan"}.get(
        s, "yellow"
    )
    return f"[{color}]{s}[/]"


@app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: stages, attempts, status, durations, cache hits, artifacts."""
    detail = _guard(lambda: api.show_run(run_id, db))
    if as_json:
        print(json.dumps(detail.to_dict(), indent=2))
        return
    r = detail.run
    console.print(
        f"run [bold]{r.run_id}[/] · pipeline {r.pipeline} · {_status(r.status)} · started {_ts(r.created_at)}"
    )
    failures = detail.failures
    if r.error and not failures:
        console.print(f"error: {escape(strip_ansi(r.error))}", soft_wrap=True)
    table = Table("stage", "attempt", "status", "duration", "outputs", "error")
    for s in detail.stages:
        outs = detail.outputs.get(s.id, {})
        out_text = "\n".join(f"{k}: {v['format']} {v['size']:,} B {v['sha256'][:10]}" for k, v in outs.items())
        f = detail.failure_of(s)
        err = f.summary if f is not None else strip_ansi(s.error or "").strip()
        dur = f"{s.duration_s:.2f}s" if s.duration_s is not None else "-"
        status = s.status + (f" (from #{s.cached_from})" if s.cached_from else "")
        err = err if len(err) <= 80 else err[:79] + "…"
        table.add_row(escape(s.stage), str(s.attempt), _status(status), dur, out_text, escape(err))
    console.print(table)
    if failures:
        console.print("failed:")
        _print_failures({k: f.summary for k, f in failures.items()}, failures)
        if r.status != "running":
            rerun = f"raypipe run {shlex.quote(r.config_path)}" if r.config_path else None
            console.print(escape(next_step(failures, r.run_id, rerun)), soft_wrap=True)


def _metrics_text(metrics: dict[str, Any], limit: int = 4) -> str:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


@app.command("models")
def models_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models: versions, the latest one, aliases and the latest metrics."""
    models = _guard(lambda: api.list_models(db))
    if as_json:
        print(json.dumps([m.to_dict() for m in models], indent=2, default=str))
        return
    if not models:
        console.print("no models registered yet; a `register` stage adds them")
        return
    table = Table("model", "versions", "latest", "aliases", "latest metrics", "registered")
    for m in models:
        aliases = ", ".join(f"{a} -> v{v}" for a, v in m.aliases.items())
        table.add_row(
            escape(m.name),
            str(m.versions),
            f"v{m.latest.version}",
            escape(aliases),
            escape(_metrics_text(m.latest.metrics)),
            _ts(m.latest.created_at),
        )
    console.print(table)


model_app = typer.Typer(
    help="The model registry: show a model version with its lineage, move aliases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")


def _artifact_label(node: Any) -> str:
    head = f"[bold]{escape(node.as_input)}[/]: " if node.as_input else ""
    if node.format == "source":
        text = f"raw file {escape(node.uri)} · {node.size:,} B"
    elif node.format == "dataset":
        rows = f" · {node.rows:,} rows" if node.rows is not None else ""
        text = f"dataset v{node.sha256[:12]}{rows}"
    else:
        text = f"{escape(node.format)} {node.sha256[:12]} · {node.size:,} B"
    return head + text + (" [dim](shown above)[/]" if node.repeated else "")


def _producer_label(p: Any) -> str:
    status = p.status + (f" from #{p.cached_from}" if p.cached_from else "")
    return f"[cyan]<- {escape(p.stage)}[/] · run {escape(p.run_id)} · stage run #{p.stage_run_id} · {_status(status)}"


def _lineage_tree(node: Any, tree: Tree | None = None) -> Tree:
    branch = Tree(_artifact_label(node)) if tree is None else tree.add(_artifact_label(node))
    if node.produced_by is not None:
        step = branch.add(_producer_label(node.produced_by))
        for child in node.produced_by.inputs:
            _lineage_tree(child, step)
    return branch


@model_app.command("show")
def model_show_cmd(
    ref: Annotated[str, typer.Argument(help="NAME (latest version), NAME:VERSION or NAME@ALIAS.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model version: metrics, params, datasets, code, aliases and its lineage to the raw files."""
    detail = _guard(lambda: api.show_model(ref, db))
    if as_json:
        print(json.dumps(detail.to_dict(), indent=2, default=str))
        return
    v = detail.version
    here = "".join(f" @{a}" for a in v.aliases)
    console.print(f"model [bold]{escape(v.name)}[/] v{v.version}{escape(here)} · registered {_ts(v.created_at)}")
    if detail.description:
        console.print(f"  description: {escape(detail.description)}", soft_wrap=True)
    console.print(f"  artifact: {escape(v.uri)} ({v.size:,} B, sha256 {v.sha256[:16]})", soft_wrap=True)
    console.print(
        f"  produced by: stage {escape(str(v.stage))} of run {escape(str(v.run_id))} (stage run #{v.stage_run_id})"
    )
    if v.model.get("task") or v.model.get("label"):
        feats = v.model.get("features") or []
        console.print(
            f"  task: {v.model.get('task')} · label {v.model.get('label')} · {len(feats)} feature"
            + ("" if len(feats) == 1 else "s"),
            soft_wrap=True,
        )
    console.print(f"  metrics: {escape(json.dumps(v.metrics, default=str))}", soft_wrap=True)
    console.print(f"  params: {escape(json.dumps(v.params, default=str))}", soft_wrap=True)
    console.print(f"  code: {escape(str(v.code))}")
    for d in v.datasets:
        rows = f", {d['rows']:,} rows" if d.get("rows") is not None else ""
        console.print(f"  dataset: v{d['sha256'][:12]} (stage {escape(str(d['stage']))}{rows})")
    if detail.aliases:
        console.print("  aliases: " + escape(", ".join(f"{a} -> v{n}" for a, n in detail.aliases.items())))
    for link in v.links:
        console.print(f"  {escape(link['kind'])}: {escape(_link_text(link['kind'], link['value']))}")
    console.print("lineage:")
    console.print(_lineage_tree(detail.lineage), soft_wrap=True)


@model_app.command("alias")
def model_alias_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number the alias points at.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. production or candidate.")],
    remove: Annotated[
        bool, typer.Option("--remove", help="Remove ALIAS instead (only if it points at VERSION).")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the alias history.")] = "",
    db: DbOpt = None,
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it from the version it pointed at)."""
    event = _guard(lambda: api.set_model_alias(name, version, alias, remove=remove, reason=reason, db=db))
    if event is None:
        console.print(f"{escape(name)}@{escape(alias)} already points at v{version}")
    elif event.new_version is None:
        console.print(f"removed {escape(name)}@{escape(alias)} (was v{event.old_version})")
    else:
        was = f" (was v{event.old_version})" if event.old_version is not None else ""
        console.print(f"{escape(name)}@{escape(alias)} -> v{event.new_version}{was}")


@app.command("queue")
def queue_cmd(address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """List the scheduler's queued and running jobs, and why each waiting job waits."""
    data = _guard(lambda: api.scheduler_queue(address))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    st = data["stats"]
    console.print(
        f"policy {st['policy']} · {st['nodes']} nodes · " + ", ".join(f"{n} {s}" for s, n in st["jobs"].items() if n)
    )
    table = Table("job", "state", "team", "prio", "demand", "nodes", "preempted", "why")
    for j in data["jobs"]:
        if j["state"] == "done":
            continue
        nodes = ",".join(n[:8] for n in j["nodes"])
        table.add_row(
            j["job_id"],
            _status(j["state"]),
            j["team"],
            str(j["priority"]),
            j["demand"],
            nodes,
            str(j["preemptions"]),
            j["reason"],
        )
    console.print(table)


bench_app = typer.Typer(
    help="Benchmarks: replay job traces through raypipe's scheduling policies.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("scheduling")
def bench_scheduling_cmd(
    fmt: Annotated[str, typer.Option("--format", help="Trace format: philly, alibaba or synthetic.")],
    trace: Annotated[
        str | None,
        typer.Option("--trace", help="Trace file (philly CSV; alibaba pod CSV or its directory). Not for synthetic."),
    ] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="Cluster GPUs (with --gpus-per-node).")] = None,
    gpus_per_node: Annotated[int | None, typer.Option("--gpus-per-node", help="GPUs per node.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="Cluster YAML: node_groups of count, gpus, cpus, memory_mb, gpu_type."),
    ] = None,
    cluster_fraction: Annotated[
        float, typer.Option("--cluster-fraction", help="Keep this fraction of each node group (0-1], e.g. 0.1.")
    ] = 1.0,
    policies: Annotated[
        str, typer.Option("--policies", help="Comma-separated policies to compare.")
    ] = "fifo,priority,backfill,fair_share,las",
    mode: Annotated[str, typer.Option("--mode", help="sim (simulator), ray (live replay) or both.")] = "sim",
    jobs: Annotated[
        int | None, typer.Option("--jobs", help="Jobs to replay (synthetic: to generate; default 1000).")
    ] = None,
    window_h: Annotated[
        float | None, typer.Option("--window-h", help="Keep arrivals within H hours of the first.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic trace and of --sample random.")] = 0,
    sample: Annotated[str, typer.Option("--sample", help="Which --jobs of a real trace: first or random.")] = "first",
    time_scale: Annotated[
        float, typer.Option("--time-scale", help="Live replay: trace seconds per wall second.")
    ] = 3600.0,
    load: Annotated[
        float | None,
        typer.Option("--load", help="Synthetic: offered load (default 0.85). Real traces: rescale arrivals to it."),
    ] = None,
    round_s: Annotated[float, typer.Option("--round-s", help="Scheduling round, s (0: decide on every event).")] = 0.0,
    restart_cost_s: Annotated[
        float, typer.Option("--restart-cost-s", help="Seconds a preempted job loses when it restarts.")
    ] = 0.0,
    spread_slowdown: Annotated[
        float, typer.Option("--spread-slowdown", help="Slowdown of a gang spread over several nodes (>= 1).")
    ] = 1.0,
    max_duration_s: Annotated[float | None, typer.Option("--max-duration-s", help="Cap job durations.")] = None,
    durations_known: Annotated[
        bool, typer.Option("--durations-known/--durations-unknown", help="Tell the policies each job's duration.")
    ] = False,
    skip_bad_rows: Annotated[
        bool, typer.Option("--skip-bad-rows", help="Skip bad trace rows (counted) instead of failing.")
    ] = False,
    out: Annotated[
        str | None, typer.Option("--out", help="Directory for results.json, summary.md and PNG plots.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare scheduling policies on a job trace: JCT, makespan, utilization, fairness, lower bounds."""
    config = {
        "trace": trace,
        "format": fmt,
        "gpus": gpus,
        "gpus_per_node": gpus_per_node,
        "cluster": cluster,
        "cluster_fraction": cluster_fraction,
        "policies": [p.strip() for p in policies.split(",") if p.strip()],
        "mode": mode,
        "jobs": jobs,
        "window_h": window_h,
        "seed": seed,
        "sample": sample,
        "time_scale": time_scale,
        "load": load,
        "round_s": round_s,
        "restart_cost_s": restart_cost_s,
        "spread_slowdown": spread_slowdown,
        "max_duration_s": max_duration_s,
        "durations_known": durations_known,
        "skip_bad_rows": skip_bad_rows,
        "out": out,
    }
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    )
    tasks: dict[str, Any] = {}

    def on_progress(policy: str, done: int, total: int) -> None:
        if not tasks:
            progress.start()
        if policy not in tasks:
            tasks[policy] = progress.add_task(policy, total=total)
        progress.update(tasks[policy], completed=done, total=total)

    def on_start(tr: Any, cl: Any) -> None:
        if not as_json:
            load_ = tr.offered_load(cl.total_gpus)
            err_console.print(
                f"trace {tr.meta.source} · {len(tr):,} jobs"
                + (f" · offered load {load_:.2f}" if load_ is not None else "")
                + f" · cluster {cl.num_nodes} nodes, {cl.total_gpus:g} GPUs"
            )

    def go() -> dict[str, Any]:
        try:
            return api.bench_scheduling(config, on_progress=on_progress, on_start=on_start)
        finally:
            progress.stop()

    doc = _guard(go)
    if as_json:
        from raypipe.bench.scheduling import jsonable

        print(json.dumps(jsonable(doc), indent=2, allow_nan=False))
        return
    _print_bench_table(doc)
    if out:
        console.print(f"results: {os.path.join(out, 'results.json')}, summary.md and plots in {out}")


def _print_bench_table(doc: dict[str, Any]) -> None:
    from raypipe.bench.scheduling import fmt_value, summary_rows

    out = console if console.is_terminal else Console(highlight=False, width=160)

    table = Table(
        "policy",
        "mode",
        "avg JCT h",
        "p99 JCT h",
        "avg queue h",
        "makespan h",
        "util",
        "JCT/LB",
        "vs fifo",
        "preempt/job",
        "decide p99 ms",
        "wall s",
        title="scheduling benchmark",
    )
    h = 1 / 3600
    for name, mode, m, vs in summary_rows(doc):
        table.add_row(
            name,
            mode,
            fmt_value(m.get("avg_jct_s"), h),
            fmt_value(m.get("p99_jct_s"), h),
            fmt_value(m.get("avg_queue_s"), h),
            fmt_value(m.get("makespan_s"), h),
            fmt_value(m.get("utilization")),
            fmt_value(m.get("avg_jct_ratio_to_bound")),
            fmt_value(vs),
            fmt_value(m.get("preemptions_per_job")),
            fmt_value(m.get("decision_latency_p99_ms")),
            fmt_value(m.get("wall_s")),
        )
    out.print(table)
    rejected = {n: m.get("rejected") for n, m in doc["policies"].items() if m.get("rejected")}
    if rejected:
        out.print(f"[yellow]jobs rejected (can never fit the cluster):[/] {max(rejected.values())}")
    stuck = {n: m.get("unfinished") for n, m in doc["policies"].items() if m.get("unfinished")}
    if stuck:
        out.print(f"[yellow]jobs that never finished:[/] {stuck}")


# --------------------------------------------------------------------------- A/B tests and canary rollouts

ab_app = typer.Typer(
    help="A/B statistics of a deployed app's variants.", no_args_is_help=True, pretty_exceptions_enable=False
)
app.add_typer(ab_app, name="ab")


def _pct(v: float | None, digits: int = 2, sign: str = "") -> str:
    return "-" if v is None else f"{v:{sign}.{digits}%}"


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def _wide() -> Console:
    """The console, or a 160-column one when the output is not a terminal (tables stay readable in logs)."""
    return console if console.is_terminal else Console(highlight=False, width=160)


def _p_text(p: float | None) -> str:
    return "-" if p is None else ("<1e-300" if p == 0 else f"{p:.3g}")


_VERDICT_STYLE = {"B better": "green", "B worse": "red", "no significant difference": "yellow"}


@ab_app.command("report")
def ab_report_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The deployed app.")],
    since: Annotated[
        float | None, typer.Option("--since", help="Only the last SECONDS of traffic (default: all).")
    ] = None,
    control: Annotated[
        str | None, typer.Option("--control", help="Variant A (default: the production variant, else the oldest).")
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="Outcome metric: auto, conversion or mean_outcome.")] = "auto",
    min_samples: Annotated[
        int, typer.Option("--min-samples", help="Per variant, before any verdict (outcomes / requests).")
    ] = 100,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (two-sided).")] = 0.05,
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per-variant counts, outcome (conversion or mean), error rate and latency; each variant
    against the control with a confidence interval and a verdict; the sample-ratio-mismatch check."""
    rep = _guard(
        lambda: api.ab_report(
            name,
            since_s=since,
            control=control,
            metric=metric,
            min_samples=min_samples,
            alpha=alpha,
            db=db,
            address=address,
        )
    )
    if as_json:
        print(json.dumps(rep, indent=2, allow_nan=False))
        return
    out = _wide()
    window = f"last {rep['window_s']:g} s" if rep.get("window_s") else "all traffic"
    out.print(
        f"app [bold]{escape(name)}[/] · model {escape(str(rep.get('model')))} · {window} · control {rep.get('control')}"
    )
    outcome_label = "conversion" if rep["metric"] == "conversion" else "mean outcome"
    table = Table(
        "variant", "weight", "requests", "errors", "error rate", "p50 ms", "p99 ms", "outcomes", outcome_label
    )
    for v in rep["variants"]:
        value = _pct(v["conversion"]) if rep["metric"] == "conversion" else _num(v["mean_outcome"])
        table.add_row(
            v["label"],
            f"{rep['weights'].get(v['label'], 0):g}%",
            f"{v['requests']:,}",
            f"{v['errors']:,}",
            _pct(v["error_rate"]),
            _num(v["p50_ms"]),
            _num(v["p99_ms"]),
            f"{v['outcomes']:,}",
            value,
        )
    out.print(table)
    conf = f"{1 - rep['alpha']:.0%}"
    comp = Table("B vs A", "metric", "A", "B", "B - A", f"{conf} interval", "p", "verdict", title="comparisons")
    for c in rep["comparisons"]:
        for m in (c["outcome"], c["error_rate"]):
            as_pct = m["metric"] != "mean_outcome"
            show = _pct if as_pct else _num
            r = m["result"] or {}
            diff = _pct(r.get("diff"), sign="+") if as_pct else _num(r.get("diff"), "+.4g")
            verdict = m["verdict"]
            if verdict == "insufficient data":
                more = ", ".join(f"{k} +{n}" for k, n in m["needed"].items() if n)
                verdict = f"insufficient data (needs {more})"
            style = _VERDICT_STYLE.get(m["verdict"], "dim")
            ci = f"[{show(r.get('ci_low'))}, {show(r.get('ci_high'))}]" if r else "-"
            comp.add_row(
                f"{c['b']} vs {c['a']}",
                m["metric"],
                show(m["value_a"]),
                show(m["value_b"]),
                diff if r else "-",
                ci,
                _p_text(r.get("p_value")) if r else "-",
                f"[{style}]{escape(verdict)}[/]",
            )
    if rep["comparisons"]:
        out.print(comp)
    s = rep["srm"]
    if s["p_value"] is not None:
        flag = "[red]MISMATCH[/]" if s["flagged"] else "[green]ok[/]"
        out.print(
            f"sample ratio: chi-square {s['chi2']:.3g}, df {s['df']}, p {_p_text(s['p_value'])} "
            f"(flagged below {s['threshold']:g}) {flag}"
        )
    for w in rep["warnings"]:
        out.print(f"[yellow]warning:[/] {escape(w)}", soft_wrap=True)


rollout_app = typer.Typer(
    help="Canary rollouts: move traffic to a candidate step by step behind guardrails.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(rollout_app, name="rollout")


def _steps_text(steps: list[float]) -> str:
    return " -> ".join(f"{s:g}%" for s in steps)


@rollout_app.command("start")
def rollout_start_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The deployed app.")],
    candidate: Annotated[
        str | None,
        typer.Option("--candidate", help="The variant to roll out: v4, 4, MODEL:4 or MODEL@ALIAS (deployed at 0%)."),
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Compare against this variant (default: the production one).")
    ] = None,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Candidate percentages, ending at 100 (default 5,25,50,100).")
    ] = None,
    interval: Annotated[float | None, typer.Option("--interval", help="Seconds per step (default 60).")] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="A rollout YAML (`rollout:` spec); flags override its fields.")
    ] = None,
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a canary rollout; it runs in a detached actor (the command returns at once)."""
    from raypipe.serve.rollout import parse_steps

    def go() -> dict[str, Any]:
        spec = api.rollout_spec(
            name,
            candidate=candidate,
            baseline=baseline,
            steps=parse_steps(steps) if steps else None,
            interval_s=interval,
            config=config,
        )
        return api.rollout_start(spec, db=db, address=address)

    st = _guard(go)
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    console.print(
        f"started rollout [bold]{st['rollout_id']}[/] of app {escape(name)}: {st['baseline']} -> {st['candidate']}, "
        f"steps {_steps_text(st['steps'])}, {st['interval_s']:g} s each; now {st['candidate']} at {st['percent']:g}%"
    )
    console.print(f"follow it with: raypipe rollout status {escape(name)}")


_EVENT_STYLE = {"promoted": "green", "rolled_back": "red", "aborted": "yellow", "paused": "yellow", "error": "red"}


def _event_text(e: dict[str, Any]) -> str:
    d = e["detail"]
    if e["event"] == "started":
        return f"{d.get('baseline')} -> {d.get('candidate')}, steps {_steps_text(d.get('steps') or [])}"
    if e["event"] == "step":
        w = ", ".join(f"{k} {v:g}%" for k, v in (d.get("weights") or {}).items())
        return f"step {d.get('step')}: {w} · {d.get('reason', '')}"
    if e["event"] == "promoted":
        prev = d.get("previous_production")
        moved = f"production v{prev} -> v{d.get('production')}" if d.get("production") else d.get("note", "")
        return f"{moved} · {d.get('reason', '')}"
    if e["event"] == "rolled_back":
        return f"{d.get('guardrail')}: {d.get('reason', '')}"
    if e["event"] == "error":
        return str(d.get("error", ""))
    return str(d.get("reason", ""))


@rollout_app.command("status")
def rollout_status_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The app.")],
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The app's latest rollout: state, step, weights, last decision and its event timeline."""
    st = _guard(lambda: api.rollout_status(name, db=db, address=address))
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    from raypipe.serve.rollout import ACTIVE, PROMOTE, ROLLBACK, progress_text, status_from_events

    live = st["live"]
    # no controller to ask (the cluster restarted, or the driver aborted it): what the events say
    view = live or status_from_events(st["events"])
    out = _wide()
    state = view["state"] if view else st["state"]
    if view and view.get("stopping"):
        state = f"{state}, {'aborting' if view['stopping'] == 'aborted' else 'rolling back'}"
    style = _EVENT_STYLE.get(st["state"], "cyan")
    out.print(f"rollout [bold]{st['rollout_id']}[/] of app {escape(name)} · [{style}]{escape(state)}[/]")
    if view:
        out.print(f"  {escape(progress_text(view))}", soft_wrap=True)
        w = ", ".join(f"{k} {v:g}%" for k, v in (view.get("weights") or {}).items())
        out.print(f"  weights: {escape(w or '-')}")
        d = view.get("last_decision")
        # a decision made before the rollout ended ("step 1 in progress") no longer holds
        if d and (view["state"] in ACTIVE or d.get("action") in (ROLLBACK, PROMOTE)):
            out.print(f"  last decision: {d['action']} · {escape(d['reason'])}", soft_wrap=True)
        elif view["state"] not in ACTIVE and view.get("end_reason"):
            out.print(f"  {view['state'].replace('_', ' ')}: {escape(view['end_reason'])}", soft_wrap=True)
        if view.get("last_error"):
            out.print(f"  [red]last error:[/] {escape(view['last_error'])}", soft_wrap=True)
    if st.get("note"):
        out.print(f"  [yellow]note:[/] {escape(st['note'])}", soft_wrap=True)
    table = Table("time", "event", "detail", title="events")
    for e in st["events"]:
        style = _EVENT_STYLE.get(e["event"], "")
        table.add_row(
            _ts(e["at"]),
            f"[{style}]{e['event']}[/]" if style else e["event"],
            escape(_event_text(e)),
        )
    out.print(table)


@rollout_app.command("abort")
def rollout_abort_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The app.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the event.")] = "",
    db: DbOpt = None,
    address: AddressOpt = None,
) -> None:
    """Abort the app's rollout: the candidate's weight goes to 0; the event is recorded."""
    st = _guard(lambda: api.rollout_abort(name, reason=reason, db=db, address=address))
    w = ", ".join(f"{k} {v:g}%" for k, v in (st.get("weights") or {}).items())
    console.print(f"aborted rollout {st['rollout_id']} of app {escape(name)}; weights: {w}")


# --------------------------------------------------------------------------- the closed loop

loop_app = typer.Typer(
    help="The closed loop: drift -> retraining through the scheduler -> gate -> canary -> promote or roll back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(loop_app, name="loop")


def _link_text(kind: str, value: dict[str, Any]) -> str:
    """One line per registry link (``model show``)."""
    if kind == "reference_profile":
        return f"profile {str(value.get('sha256'))[:12]} (the drift monitor's reference)"
    if kind == "drift_event":
        stats = value.get("statistics") or {}
        feats = ", ".join(
            f"{f} p={stats[f]['p_value']:.1e}" if (stats.get(f) or {}).get("p_value") is not None else f
            for f in value.get("drifted_features") or []
        )
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value["detected_at"]))
            if value.get("detected_at")
            else "?"
        )
        return (
            f"event {value.get('monitor_event_id')} of app {value.get('app')} on {value.get('variant')} at {when}: "
            f"{value.get('kind')} ({feats or '-'}); cycle {value.get('cycle_id')}"
        )
    if kind == "retraining":
        return f"run {value.get('run_id')} (cycle {value.get('cycle_id')} of app {value.get('app')})"
    return json.dumps(value, default=str)


@loop_app.command("status")
def loop_status_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The deployed app.")],
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The loop's state and the timeline of its cycles: drift events (features and statistics),
    retraining runs, gates, canary steps, promotions and rollbacks."""
    from raypipe.examples.closed_loop import print_timeline

    st = _guard(lambda: api.loop_status(name, db=db, address=address))
    if as_json:
        print(json.dumps(st, indent=2, default=str))
        return
    live = st.get("live")
    state = live["state"] if live else "not running"
    console.print(
        f"app [bold]{escape(name)}[/] · loop {state}" + (f" · {escape(st['note'])}" if st.get("note") else "")
    )
    if live and live.get("cycle"):
        c = live["cycle"]
        console.print(f"  cycle {c['cycle_id']}: {c['phase']} (run {c.get('run_id')}, rollout {c.get('rollout_id')})")
    if live and live.get("last_error"):
        console.print(f"  [red]last error:[/] {escape(live['last_error'])}")
    t0 = st["timeline"][0]["at"] if st["timeline"] else 0.0
    print_timeline(st["timeline"], t0, console)


@loop_app.command("stop")
def loop_stop_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The deployed app.")],
    db: DbOpt = None,
    address: AddressOpt = None,
) -> None:
    """Disarm the loop and stop a retraining run in flight (recorded `stopped`); serving and
    monitoring go on."""
    _guard(lambda: api.loop_stop(name, db=db, address=address))
    console.print(f"the closed loop of app {escape(name)} is stopped")


@loop_app.command("demo")
def loop_demo_cmd(
    config: Annotated[str, typer.Option("--config", help="The pipeline.")] = "configs/closed_loop.yaml",
    out: Annotated[
        str, typer.Option("--out", help="Where timeline.json and timeline.png go.")
    ] = "bench-out/closed_loop",
    num_cpus: Annotated[int, typer.Option("--num-cpus", help="Logical CPUs of the local Ray.")] = 4,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the cycle.")] = 900.0,
    shift: Annotated[float, typer.Option("--shift", help="The calibration fault, in standard deviations.")] = 0.5,
) -> None:
    """The whole loop on this machine: a local Ray, the pipeline (v1 served with a monitor and the
    loop armed), clean then shifted traffic, drift -> retrain -> canary -> promote, the timeline."""
    _cwd_importable()
    code = _guard(lambda: _loop_demo(config, Path(out), num_cpus, timeout, shift))
    raise typer.Exit(code)


def _loop_demo(config: str, out: Path, num_cpus: int, timeout: float, shift: float) -> int:
    import logging
    import shutil

    import ray

    from raypipe.examples.closed_loop import SHIFTED, Traffic, plot, print_timeline, wait_cycle, wait_windows
    from raypipe.serve import app as serve_app
    from raypipe.serve.loop import loop_status
    from raypipe.serve.monitor import get_monitor
    from raypipe.store.metadata import MetadataStore

    # A store of its own, new each time: the demo starts from "no model yet" (v1 becomes production).
    store = out / "store"
    overrides = [f"storage={store.resolve()}"]
    cfg = api.load(config, overrides).config
    deploys = [s for s in cfg.stages if s.kind == "deploy" and (s.params.get("retrain") and s.params.get("monitor"))]
    if not deploys:
        raise RaypipeError(f"{config}: no deploy stage with `monitor` and `retrain`; the demo needs the loop armed")
    app_name = str(deploys[0].params["app"])
    shutil.rmtree(store, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,  # Serve's and the stages' own logs; the events below say what happens
    )
    traffic = None
    try:
        console.rule("1. train v1, register it as production, serve it with a monitor; the loop is armed")
        rep = _Reporter()
        with rep.running():
            res = api.run(config, overrides=overrides, on_event=rep.on_event, on_start=rep.on_start)
        if not res.ok:
            raise RaypipeError(f"the pipeline failed: {res.errors}")
        url = serve_app.url(app_name)
        meta = MetadataStore(api.metadata_url(cfg))
        monitor = get_monitor(app_name)
        t0 = time.time()
        traffic = Traffic(url).start()
        console.rule(f"2. clean traffic to {url}/predict: no drift expected")
        wait_windows(monitor, 3, console, traffic)
        clean = ray.get(monitor.status.remote())
        console.print(f"  drift events after 3 clean windows: {clean['events_total']} (expected 0)")
        console.rule(f"3. calibration fault: {', '.join(SHIFTED)} read {shift:g} sigma high")
        traffic.shift = shift
        outcome = wait_cycle(app_name, meta, console, traffic, timeout)
        console.rule("4. after the cycle: the same shifted traffic against the new reference")
        wait_windows(monitor, 3, console, traffic)
        traffic.stop()
        st = loop_status(app_name, meta)
        print_timeline(st["timeline"], t0, console)
        windows = ray.get(monitor.windows.remote(None, 0, 1000))
        mon = ray.get(monitor.status.remote())
        summary = {
            "outcome": outcome,
            "requests": traffic.sent,
            "request_errors": traffic.errors,
            "by_variant": traffic.by_variant,
            "drift_events": mon["events_total"],
            "cycles": st["cycles"],
            "production": serve_app.status(app_name).aliases.get("production"),
        }
        doc = {**summary, "timeline": st["timeline"], "windows": windows}
        (out / "timeline.json").write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        plot(windows, st["timeline"], t0, out / "timeline.png")
        console.print(json.dumps(summary, indent=1, default=str))
        console.print(f"wrote {out / 'timeline.json'} and {out / 'timeline.png'}")
        return 0 if outcome == "promoted" else 1
    finally:
        if traffic is not None:
            traffic.stop()
        ray.shutdown()


# --------------------------------------------------------------------------- drift monitoring

monitor_app = typer.Typer(
    help="Drift monitoring of deployed apps: live traffic against the training data's profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(monitor_app, name="monitor")


def _g(v: float | None, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _drift_test_text(f: dict[str, Any]) -> str:
    """``p 0.003 < 0.01`` for a p-value test, ``psi 0.25 > 0.2`` for PSI."""
    if f.get("statistic") is None:
        return escape(f.get("note") or "-")
    if f.get("p_value") is not None:
        p = f["p_value"]
        return f"p {('<1e-300' if p == 0 else format(p, '.3g'))} {'<' if f.get('drifted') else '≥'} {_g(f.get('threshold'))}"
    return f"psi {_g(f['statistic'])} {'>' if f.get('drifted') else '≤'} {_g(f.get('threshold'))}"


def _drifted_text(d: bool | None) -> str:
    return "-" if d is None else ("[red]drifted[/]" if d else "[green]ok[/]")


@monitor_app.command("status")
def monitor_status_cmd(
    name: Annotated[str, typer.Argument(metavar="APP", help="The deployed app.")],
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per variant and feature: method, statistic, p-value or PSI against its threshold, whether
    it drifted in the last window and how often over the kept windows; then the drift events."""
    st = _guard(lambda: api.monitor_status(name, db=db, address=address))
    if as_json:
        print(json.dumps(st, indent=2, allow_nan=False))
        return
    spec = st["spec"]
    window = " or ".join(
        w
        for w in (
            f"{spec['window_rows']} rows" if spec.get("window_rows") else "",
            f"{spec['window_seconds']:g} s" if spec.get("window_seconds") else "",
        )
        if w
    )
    correction = " / features tested (Bonferroni)" if spec.get("correction") == "bonferroni" else ""
    console.print(
        f"app [bold]{escape(name)}[/] · {len(st['reference']['features'])} features · windows of {window} · "
        f"sampling {spec['sample_rate']:.0%}"
    )
    console.print(
        f"  drift: p < {spec['alpha']:g}{correction} or psi > {spec['psi_threshold']:g} (unless set per feature); "
        f"dataset drift at >= {spec['drift_share']:.0%} of features; an event after {spec['consecutive']} "
        "drifted windows in a row",
        soft_wrap=True,
    )
    if not st["variants"]:
        console.print("  no traffic logged yet")
    for vname, v in st["variants"].items():
        last = v.get("last_window")
        verdict = "-"
        if last:
            share = last.get("drift_share")
            verdict = (
                f"last window {last['window_id']}: {last['drifted_features']}/{last['tested']} features drifted"
                + (f" ({share:.0%})" if share is not None else "")
                + (" · [red]dataset drifted[/]" if last["dataset_drifted"] else " · [green]dataset ok[/]")
            )
        console.print(
            f"\nvariant [bold]{escape(vname)}[/]: {v['rows_logged']:,} rows logged, {v['rows_sampled']:,} sampled · "
            f"{v['windows']} windows · open window {v['open_window']['rows']:,} rows · {verdict}",
            soft_wrap=True,
        )
        recent = v["recent_windows"]
        table = Table("feature", "method", "statistic", "test", "psi", "last window", f"drifted (last {recent})")
        for fname, f in v["features"].items():
            table.add_row(
                escape(fname),
                f["method"],
                _g(f.get("statistic")),
                _drift_test_text(f),
                _g(f.get("psi")),
                _drifted_text(f.get("drifted")),
                f"{f['drift_count']}/{recent}",
            )
        p = v.get("prediction") or {}
        if p.get("method"):
            table.add_row(
                "[italic](prediction)[/]",
                p["method"],
                _g(p.get("statistic")),
                _drift_test_text(p),
                _g(p.get("psi")),
                _drifted_text(p.get("drifted")),
                f"{p.get('drift_count', 0)}/{recent}",
            )
        console.print(table)
        perf = v.get("performance") or {}
        lp = perf.get("last")
        if perf.get("metric") and (lp or perf.get("labels_in_window")):
            text = f"performance ({perf['metric']}, reference {_g(perf.get('reference'), '.4g')}): "
            if lp:
                text += f"last labelled window {_g(lp.get('value'), '.4g')} on {lp['n']} labels, "
                text += (
                    "[red]drifted[/]" if lp.get("drifted") else ("[green]ok[/]" if lp.get("drifted") is False else "-")
                )
            text += f" · {perf['labels_in_window']} labels in the open window"
            console.print(text, soft_wrap=True)
    events = Table("id", "time", "variant", "kind", "windows", "trigger", "detail", title="drift events")
    for e in st["events"]:
        if e["kind"] == "performance_drift":
            pr = e.get("performance") or {}
            detail = f"{pr.get('metric')} {_g(pr.get('value'), '.4g')} vs {_g(pr.get('reference'), '.4g')}"
        else:
            detail = ", ".join(e.get("drifted_features") or []) or ", ".join(e.get("signals") or [])
        events.add_row(
            str(e["event_id"]),
            _ts(e["at"]),
            escape(e["variant"]),
            e["kind"],
            ",".join(str(w) for w in e["windows"]),
            "[red]yes[/]" if e["trigger"] else "no",
            escape(detail if e["trigger"] else f"{detail} ({e['note']})"),
        )
    if st["events"]:
        console.print(events)
    else:
        console.print("no drift events")
    inflight = (st.get("debounce") or {}).get("in_flight")
    if inflight:
        console.print(f"retraining in flight for event {inflight.get('event_id')} since {_ts(inflight.get('since'))}")
    if st.get("last_error"):
        console.print(f"[yellow]last error:[/] {escape(st['last_error'])}", soft_wrap=True)


# ---------------------------------------------------------------------- serving
AppArg = Annotated[str, typer.Argument(metavar="APP", help="Name of the served app.")]


def _print_app(st: Any, verb: str = "app") -> None:
    key = ", ".join(f"{k} {v}" for k, v in (st.key or {}).items() if v) or "none (random per request)"
    console.print(
        f"{verb} [bold]{escape(st.app)}[/] · {_status(st.status.lower())} · {escape(st.url)} · model {escape(st.model)}"
        f" · sticky key: {escape(key)}" + (f" · shadow: {st.shadow}" if st.shadow else ""),
        soft_wrap=True,
        emoji=False,
    )
    table = Table("variant", "version", "aliases", "weight", "replicas", "status", "per replica")
    by_label: dict[str, list[str]] = {}
    for alias, label in st.aliases.items():
        by_label.setdefault(label, []).append(alias)
    for v in st.variants.values():
        opts = ", ".join(f"{k}={val}" for k, val in v.ray_actor_options.items() if k != "label_selector")
        extra = " (shadow)" if v.shadow else ""
        extra += f" fail_rate={v.fail_rate:g}" if v.fail_rate else ""
        table.add_row(
            v.label + extra,
            str(v.version),
            escape(", ".join(f"@{a}" for a in by_label.get(v.label, []))),
            f"{v.weight:g}%",
            f"{v.running_replicas}/{v.target_replicas}",
            _status(v.status.lower()),
            escape(opts),
        )
    ing = st.ingress or {}
    if ing:
        table.add_row(
            "router",
            "-",
            "",
            "",
            f"{ing.get('running_replicas')}/{ing.get('target_replicas')}",
            _status(str(ing.get("status", "")).lower()),
            "",
        )
    console.print(table, emoji=False)
    r = st.reservation
    if r:
        nodes = len(set(r.get("nodes") or []))
        console.print(
            f"reservation {escape(r['job_id'])}: {r.get('state')} · {escape(str(r.get('demand')))} on {nodes} node"
            + ("" if nodes == 1 else "s")
            + (f" · {escape(str(r['reason']))}" if r.get("reason") else ""),
            emoji=False,
        )
    else:
        console.print("reservation: none (reserve: false)")


@app.command("deploy")
def deploy_cmd(
    file: Annotated[
        str, typer.Argument(help="An app spec YAML (app, model, variants) or a pipeline with deploy stages.")
    ],
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve registered model versions behind one HTTP endpoint with a weighted, sticky split."""
    _cwd_importable()
    statuses = _guard(lambda: api.deploy(file, db=db, address=address))
    if as_json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2, default=str))
        return
    for st in statuses:
        _print_app(st, "deployed")
        hdr = f" -H '{st.key['header']}: u42'" if (st.key or {}).get("header") else ""
        console.print(
            f"  try: curl -X POST {escape(st.url)}/predict{escape(hdr)} -d '{{\"features\": {{...}}}}'",
            emoji=False,
            soft_wrap=True,
        )


@app.command("split")
def split_cmd(
    app_name: AppArg,
    weights: Annotated[list[str], typer.Argument(metavar="VARIANT=WEIGHT...", help="e.g. v3=50 v4=50 (sum 100).")],
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a served app's traffic split live (no request is dropped)."""
    st = _guard(lambda: api.split(app_name, weights, address=address))
    if as_json:
        print(json.dumps(st.to_dict(), indent=2, default=str))
        return
    console.print(f"{escape(st.app)} split: " + ", ".join(f"{k} {w:g}%" for k, w in st.weights.items()), emoji=False)


serve_app = typer.Typer(
    help="Served models: status and shutdown (deploy with `raypipe deploy`, re-weight with `raypipe split`).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(serve_app, name="serve")


@serve_app.command("status")
def serve_status_cmd(
    app_name: Annotated[str | None, typer.Argument(metavar="[APP]", help="A served app (default: all).")] = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a served app: variants, versions, aliases, weights, replicas, URL and reservation."""
    statuses = _guard(lambda: api.serve_status(app_name, address=address))
    if as_json:
        doc = [s.to_dict() for s in statuses]
        print(json.dumps(doc[0] if app_name else doc, indent=2, default=str))
        return
    if not statuses:
        console.print("no served apps on this cluster; deploy one with `raypipe deploy SPEC.yaml`")
    for st in statuses:
        _print_app(st)


@serve_app.command("shutdown")
def serve_shutdown_cmd(app_name: AppArg, address: AddressOpt = None) -> None:
    """Stop a served app: its deployments, its resource reservation and its metrics collector."""
    _guard(lambda: api.serve_shutdown(app_name, address=address))
    console.print(f"stopped {escape(app_name)}", emoji=False)


def main() -> None:
    from raypipe.runner.ray_session import use_token_auth

    use_token_auth()  # before anything imports Ray: commands that join a `ray start` cluster need it
    app()


if __name__ == "__main__":
    main()
