"""The model registry: ``models``, ``model show``, ``model alias``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.history import print_diff
from raypipe.cli.options import DbOpt, JsonOpt
from raypipe.cli.render import console, emit_json, lineage_tree, link_text, metrics_text, ts

app = typer.Typer()
model_app = typer.Typer(
    name="model",
    help="The model registry: show a model version with its lineage, move aliases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app)


@app.command("models")
def models_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models: versions, the latest one, aliases and the latest metrics."""
    models = guard(lambda: api.list_models(db))
    if as_json:
        emit_json([m.to_dict() for m in models], default=str)
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
            escape(metrics_text(m.latest.metrics)),
            ts(m.latest.created_at),
        )
    console.print(table)


@model_app.command("show")
def model_show_cmd(
    ref: Annotated[
        str,
        typer.Argument(metavar="NAME[:VERSION|@ALIAS]", help="NAME (latest version), NAME:VERSION or NAME@ALIAS."),
    ],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a model version: metrics, params, datasets, code, aliases and its lineage to the raw files."""
    detail = guard(lambda: api.show_model(ref, db))
    if as_json:
        emit_json(detail.to_dict(), default=str)
        return
    v = detail.version
    here = "".join(f" @{a}" for a in v.aliases)
    console.print(f"model [bold]{escape(v.name)}[/] v{v.version}{escape(here)} · registered {ts(v.created_at)}")
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
        console.print(f"  {escape(link['kind'])}: {escape(link_text(link['kind'], link['value']))}")
    console.print("lineage:")
    console.print(lineage_tree(detail.lineage), soft_wrap=True)


@model_app.command("alias")
def model_alias_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model name.")],
    version: Annotated[int, typer.Argument(metavar="VERSION", help="Version number the alias points at.")],
    alias: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. production or candidate.")],
    remove: Annotated[
        bool, typer.Option("--remove", metavar="", help="Remove ALIAS instead (only if it points at VERSION).")
    ] = False,
    reason: Annotated[str, typer.Option("--reason", metavar="REASON", help="Why; kept in the alias history.")] = "",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it from the version it pointed at)."""
    event = guard(lambda: api.set_model_alias(name, version, alias, remove=remove, reason=reason, db=db))
    if as_json:
        # the same fields as an alias event; none recorded when the alias already pointed at VERSION
        unchanged = {"name": name, "alias": alias, "old_version": version, "new_version": version, "at": None}
        doc = event.to_dict() if event is not None else {**unchanged, "reason": reason}
        emit_json({**doc, "changed": event is not None})
        return
    if event is None:
        console.print(f"{escape(name)}@{escape(alias)} already points at v{version}")
    elif event.new_version is None:
        console.print(f"removed {escape(name)}@{escape(alias)} (was v{event.old_version})")
    else:
        was = f" (was v{event.old_version})" if event.old_version is not None else ""
        console.print(f"{escape(name)}@{escape(alias)} -> v{event.new_version}{was}")


@model_app.command("diff")
def model_diff_cmd(
    ref_a: Annotated[str, typer.Argument(metavar="NAME:VA", help="A model version: NAME:VERSION, NAME@ALIAS or NAME.")],
    ref_b: Annotated[str, typer.Argument(metavar="NAME:VB", help="Another version (the same model or another).")],
    db: DbOpt = None,
    show_all: Annotated[
        bool, typer.Option("--all", metavar="", help="Also show the equal rows of packages and env.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Two model versions side by side: params, code, dataset versions, environment and metrics; differing
    rows marked."""
    d = guard(lambda: api.diff_models(ref_a, ref_b, db))
    if as_json:
        emit_json(d.to_dict(), default=str)
        return
    print_diff(d, show_all)
