"""Everything the CLI shows goes through here: the consoles, JSON for ``--json``, the
formatters and the views several commands share (a run's progress, failures, a served app,
a model's lineage).

stdout carries what a command reports (a table, or one JSON document with ``--json``);
stderr carries errors, warnings and, in ``--json`` mode, progress.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from raypipe.failures import Failure, strip_ansi
from raypipe.runner.events import StageEvent
from raypipe.runner.plan import Plan
from raypipe.runner.ray_session import ray_target

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def wide() -> Console:
    """The console, or a 160-column one when the output is not a terminal (tables stay readable in logs)."""
    return console if console.is_terminal else Console(highlight=False, width=160)


def emit_json(doc: Any, **dumps: Any) -> None:
    """``--json``: one JSON document on stdout, nothing else."""
    typer.echo(json.dumps(doc, indent=2, **dumps))


def progress_bar(out: Console, *, disable: bool = False) -> Progress:
    """A transient bar per task: spinner, name, bar, done/total, elapsed."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=disable,
    )


# --------------------------------------------------------------------------- formatters


def ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def status(s: str) -> str:
    color = {"succeeded": "green", "cached": "green", "failed": "red", "timeout": "red", "running": "cyan"}.get(
        s, "yellow"
    )
    return f"[{color}]{s}[/]"


def pct(v: float | None, digits: int = 2, sign: str = "") -> str:
    return "-" if v is None else f"{v:{sign}.{digits}%}"


def num(v: float | None, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def p_text(p: float | None) -> str:
    return "-" if p is None else ("<1e-300" if p == 0 else f"{p:.3g}")


def metrics_text(metrics: dict[str, Any], limit: int = 4) -> str:
    items = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


def steps_text(steps: list[float]) -> str:
    return " -> ".join(f"{s:g}%" for s in steps)


def weights_text(weights: Mapping[str, float] | None) -> str:
    return ", ".join(f"{k} {v:g}%" for k, v in (weights or {}).items())


VERDICT_STYLE = {"B better": "green", "B worse": "red", "no significant difference": "yellow"}
EVENT_STYLE = {"promoted": "green", "rolled_back": "red", "aborted": "yellow", "paused": "yellow", "error": "red"}


def event_text(e: dict[str, Any]) -> str:
    """One rollout event (``rollout status``)."""
    d = e["detail"]
    if e["event"] == "started":
        return f"{d.get('baseline')} -> {d.get('candidate')}, steps {steps_text(d.get('steps') or [])}"
    if e["event"] == "step":
        return f"step {d.get('step')}: {weights_text(d.get('weights'))} · {d.get('reason', '')}"
    if e["event"] == "promoted":
        prev = d.get("previous_production")
        moved = f"production v{prev} -> v{d.get('production')}" if d.get("production") else d.get("note", "")
        return f"{moved} · {d.get('reason', '')}"
    if e["event"] == "rolled_back":
        return f"{d.get('guardrail')}: {d.get('reason', '')}"
    if e["event"] == "error":
        return str(d.get("error", ""))
    return str(d.get("reason", ""))


def link_text(kind: str, value: dict[str, Any]) -> str:
    """One line per registry link (``model show``)."""
    if kind == "reference_profile":
        return f"profile {str(value.get('sha256'))[:12]} (the drift monitor's reference)"
    if kind == "drift_event":
        stats = value.get("statistics") or {}
        feats = ", ".join(
            f"{f} p={stats[f]['p_value']:.1e}" if (stats.get(f) or {}).get("p_value") is not None else f
            for f in value.get("drifted_features") or []
        )
        when = ts(value["detected_at"]) if value.get("detected_at") else "?"
        return (
            f"event {value.get('monitor_event_id')} of app {value.get('app')} on {value.get('variant')} at {when}: "
            f"{value.get('kind')} ({feats or '-'}); cycle {value.get('cycle_id')}"
        )
    if kind == "retraining":
        return f"run {value.get('run_id')} (cycle {value.get('cycle_id')} of app {value.get('app')})"
    return json.dumps(value, default=str)


def drift_test_text(f: dict[str, Any]) -> str:
    """``p 0.003 < 0.01`` for a p-value test, ``psi 0.25 > 0.2`` for PSI."""
    if f.get("statistic") is None:
        return escape(f.get("note") or "-")
    if f.get("p_value") is not None:
        return f"p {p_text(f['p_value'])} {'<' if f.get('drifted') else '≥'} {num(f.get('threshold'), '.3g')}"
    return f"psi {num(f['statistic'], '.3g')} {'>' if f.get('drifted') else '≤'} {num(f.get('threshold'), '.3g')}"


def drifted_text(d: bool | None) -> str:
    return "-" if d is None else ("[red]drifted[/]" if d else "[green]ok[/]")


# --------------------------------------------------------------------------- lineage


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
    state = p.status + (f" from #{p.cached_from}" if p.cached_from else "")
    return f"[cyan]<- {escape(p.stage)}[/] · run {escape(p.run_id)} · stage run #{p.stage_run_id} · {status(state)}"


def lineage_tree(node: Any, tree: Tree | None = None) -> Tree:
    """An artifact, the stage run that produced it and, recursively, what that read."""
    branch = Tree(_artifact_label(node)) if tree is None else tree.add(_artifact_label(node))
    if node.produced_by is not None:
        step = branch.add(_producer_label(node.produced_by))
        for child in node.produced_by.inputs:
            lineage_tree(child, step)
    return branch


# --------------------------------------------------------------------------- runs


def print_failures(errors: Mapping[str, str], failures: Mapping[str, Failure], out: Console | None = None) -> None:
    """Each failed stage's whole message (a validation's report too; never a traceback), and for a
    failure that would happen again, what to change."""
    out = out or console
    for stage, short in errors.items():
        failure = failures.get(stage)
        lines = (failure.message if failure is not None else strip_ansi(short)).splitlines() or [""]
        out.print(f"  {escape(stage)}: {escape(lines[0])}", soft_wrap=True)
        for line in lines[1:]:
            out.print(f"    {escape(line)}", soft_wrap=True)
        advice = failure.advice(stage) if failure is not None else None
        if advice:
            out.print(f"    [yellow]→ {escape(advice)}[/]", soft_wrap=True)


ICONS = {
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


#: A stage still running after this many seconds gets a line saying so (without ``-v``).
RUNNING_NOTICE_S = 10.0


class Reporter:
    """Shows a progress bar over the stages and a line per stage when it ends (on stderr with
    ``--json``): succeeded, cache hit, failed, retrying, skipped, requeued, and why a stage waits
    for resources.  A stage still running after :data:`RUNNING_NOTICE_S` says so once.  With
    ``verbose`` every event has its line (queued, started...)."""

    def __init__(self, address: str | None = None, out: Console | None = None, verbose: bool = False) -> None:
        self.address = address
        self.out = out or console
        self.verbose = verbose
        self.progress = progress_bar(self.out)
        self.task: Any = None
        self.plan: Plan | None = None
        self.run_id: str | None = None
        self._running: dict[str, threading.Timer | None] = {}  # stage -> its still-running notice

    def on_start(self, run_id: str, plan: Plan) -> None:
        self.plan = plan
        self.run_id = run_id

        where = ray_target(plan.config.ray, self.address)[1]
        self.out.print(
            f"run [bold]{run_id}[/] · pipeline {plan.config.name} · {len(plan.order)} stages · {escape(where)}",
            soft_wrap=True,
        )
        self.task = self.progress.add_task(plan.config.name, total=len(plan.order))

    def _print(self, text: str) -> None:
        self.progress.console.print(text, soft_wrap=True)

    def _still_running(self, stage: str, attempt: int) -> None:
        label = f" attempt {attempt}" if attempt > 1 else ""
        self._print(f"  {ICONS['started']} {escape(stage)}{label} running (started {RUNNING_NOTICE_S:g}s ago)")

    def _track(self, e: StageEvent) -> None:
        """Which stages run now: the progress bar names them; a long one gets its line."""
        timer = self._running.pop(e.stage, None)
        if timer is not None:
            timer.cancel()
        if e.status == "started":
            notice = None
            if not self.verbose:
                notice = threading.Timer(RUNNING_NOTICE_S, self._still_running, (e.stage, e.attempt))
                notice.daemon = True
                notice.start()
            self._running[e.stage] = notice
        if self.task is not None and self.plan is not None:
            names = ", ".join(self._running)
            self.progress.update(
                self.task, description=f"{self.plan.config.name}: {names}" if names else self.plan.config.name
            )

    def on_event(self, e: StageEvent) -> None:
        self._track(e)
        if not self.verbose and (e.status == "started" or (e.status == "queued" and not e.message)):
            return  # the progress bar shows it; a stage that must wait says why (queued with a reason)
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
        self._print(f"  {ICONS.get(e.status, '·')} {e.stage} {label}{attempt}{dur}{msg}")
        if e.status in ("succeeded", "cached", "reused", "failed", "skipped") and self.task is not None:
            self.progress.advance(self.task)

    @contextmanager
    def running(self) -> Iterator[None]:
        try:
            with self.progress:
                yield
        finally:
            for timer in self._running.values():
                if timer is not None:
                    timer.cancel()
            self._running.clear()


def print_outputs(
    outputs: Mapping[str, Mapping[str, Any]], out: Console | None = None, inline_chars: int = 160
) -> None:
    """The last stages' small outputs: a short JSON value on one line (``stage.name: {...}``),
    text or longer JSON under a rule with its name."""
    out = out or console
    for stage, outs in outputs.items():
        for name, value in outs.items():
            if not isinstance(value, str):
                compact = json.dumps(value)
                if len(compact) <= inline_chars:
                    out.print(f"[dim]{escape(stage)}.{escape(name)}:[/] {escape(compact)}", soft_wrap=True)
                    continue
            out.rule(f"{stage}.{name}", style="dim")
            out.print(value if isinstance(value, str) else json.dumps(value, indent=2), markup=False)


# --------------------------------------------------------------------------- serving


def _auth_text(st: Any) -> str:
    """`` · auth: predict (2 tokens), feedback (1 token), force-variant`` or `` · auth: none``."""
    a = getattr(st, "auth", None) or {}
    parts = [
        f"{route} ({n} token{'s' if n != 1 else ''})"
        for route, n in (("predict", a.get("predict_tokens", 0)), ("feedback", a.get("feedback_tokens", 0)))
        if n
    ]
    if a.get("force_variant"):
        parts.append(f"force-variant ({getattr(st, 'force_header', None)})")
    return " · auth: " + (", ".join(parts) if parts else "none")


def print_app(st: Any, verb: str = "app") -> None:
    """A served app: its variants, versions, aliases, weights, replicas and reservation."""
    key = ", ".join(f"{k} {v}" for k, v in (st.key or {}).items() if v) or "none (random per request)"
    console.print(
        f"{verb} [bold]{escape(st.app)}[/] · {status(st.status.lower())} · {escape(st.url)} · model {escape(st.model)}"
        f" · sticky key: {escape(key)}"
        + (f" · shadow: {st.shadow}" if st.shadow else "")
        + _auth_text(st)
        + f" · mode: {escape(str(getattr(st, 'mode', 'routed')))}"
        + (f" ({escape(st.mode_reason)})" if getattr(st, "mode_reason", "") else ""),
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
            status(v.status.lower()),
            escape(opts),
        )
    ing = st.ingress or {}
    if ing:
        table.add_row(
            "router" + (" (holds the variants)" if getattr(st, "mode", "") == "colocated" else ""),
            "-",
            "",
            "",
            f"{ing.get('running_replicas')}/{ing.get('target_replicas')}",
            status(str(ing.get("status", "")).lower()),
            escape(", ".join(f"{k}={val}" for k, val in (ing.get("ray_actor_options") or {}).items())),
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
