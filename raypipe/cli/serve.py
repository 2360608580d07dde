"""Serving: ``serve deploy``, ``serve split``, ``serve status``, ``serve shutdown``; ``deploy``
and ``split`` are also top-level commands (aliases)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from raypipe import api
from raypipe.cli.guard import cwd_importable, guard
from raypipe.cli.options import AddressOpt, AppArg, DbOpt, JsonOpt
from raypipe.cli.render import console, emit_json, print_app, weights_text

app = typer.Typer()
serve_app = typer.Typer(
    name="serve",
    help="Served models: deploy, re-weight, status and shutdown.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(serve_app)


def deploy_cmd(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="An app spec YAML (app, model, variants) or a pipeline with deploy stages."
        ),
    ],
    db: DbOpt = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve registered model versions behind one HTTP endpoint with a weighted, sticky split."""
    cwd_importable()
    statuses = guard(lambda: api.deploy(file, db=db, address=address))
    if as_json:
        emit_json([s.to_dict() for s in statuses], default=str)
        return
    for st in statuses:
        print_app(st, "deployed")
        key = st.key or {}
        hdr = f" -H '{key['header']}: u42'" if key.get("header") else ""
        console.print(
            f"  try: curl -X POST {escape(st.url)}/predict{escape(hdr)} -d '{{\"features\": {{...}}}}'",
            emoji=False,
            soft_wrap=True,
        )


def split_cmd(
    app_name: AppArg,
    weights: Annotated[list[str], typer.Argument(metavar="VARIANT=WEIGHT", help="e.g. v3=50 v4=50 (sum 100).")],
    address: AddressOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a served app's traffic split live (no request is dropped); recorded in the audit log."""
    st = guard(lambda: api.split(app_name, weights, address=address, db=db))
    if as_json:
        emit_json(st.to_dict(), default=str)
        return
    console.print(f"{escape(st.app)} split: {weights_text(st.weights)}", emoji=False)


serve_app.command("deploy")(deploy_cmd)
serve_app.command("split")(split_cmd)
for _name, _fn in (("deploy", deploy_cmd), ("split", split_cmd)):
    app.command(_name, short_help=f"Alias of `raypipe serve {_name}`.", rich_help_panel="Aliases")(_fn)


@serve_app.command("status")
def serve_status_cmd(
    app_name: Annotated[str | None, typer.Argument(metavar="APP", help="A served app (default: all).")] = None,
    address: AddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a served app: variants, versions, aliases, weights, replicas, URL and reservation."""
    statuses = guard(lambda: api.serve_status(app_name, address=address))
    if as_json:
        doc = [s.to_dict() for s in statuses]
        emit_json(doc[0] if app_name else doc, default=str)
        return
    if not statuses:
        console.print("no served apps on this cluster; deploy one with `raypipe serve deploy SPEC.yaml`")
    for st in statuses:
        print_app(st)


@serve_app.command("shutdown")
def serve_shutdown_cmd(app_name: AppArg, address: AddressOpt = None, as_json: JsonOpt = False) -> None:
    """Stop a served app: its deployments, its resource reservation and its metrics collector."""
    guard(lambda: api.serve_shutdown(app_name, address=address))
    if as_json:
        emit_json({"app": app_name, "stopped": True})
        return
    console.print(f"stopped {escape(app_name)}", emoji=False)
