"""The platform: ``admin token``, ``admin apply``, ``admin show``, ``admin history``; ``whoami``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from raypipe import api
from raypipe.cli.guard import guard
from raypipe.cli.options import AddressOpt, DbOpt, JsonOpt
from raypipe.cli.render import console, emit_json, err_console, ts

app = typer.Typer()
admin_app = typer.Typer(
    name="admin",
    help="The platform config (users, teams, the scheduler's settings), owned by admins: apply, show, history; tokens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(admin_app)


@app.command("whoami")
def whoami_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Show who you act as (from your token, or the OS user on a single-user store): teams, admin."""
    doc = guard(lambda: api.whoami(db))
    if as_json:
        emit_json(doc)
        return
    role = "admin" if doc["admin"] else "user"
    platform = f"platform config v{doc['platform_version']}" if doc["platform_version"] else "no platform config"
    console.print(
        f"{escape(doc['name'])} ({role}, by {doc['source']}) · teams {', '.join(doc['teams'])} · {platform}",
        soft_wrap=True,
    )


@admin_app.command("token")
def token_cmd(
    user: Annotated[
        str | None, typer.Option("--user", metavar="NAME", help="The user the token is for (names the line).")
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save",
            metavar="",
            help="Also write it to your token file ($RAYPIPE_TOKEN_FILE or ~/.config/raypipe/token, mode 600).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="With --save: replace an existing token file.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Mint a random token; print it and the line for platform.yaml's `users` (its SHA-256: the
    platform stores only that)."""
    doc = guard(lambda: api.mint_token(user, save=save, force=force))
    if as_json:
        emit_json(doc)
        return
    console.print(f"token: {doc['token']}", soft_wrap=True, markup=False)
    console.print(f"sha256: {doc['token_sha256']}", soft_wrap=True, markup=False)
    console.print("for platform.yaml, under users:", soft_wrap=True)
    console.print(f"  {doc['platform_yaml']}", soft_wrap=True, markup=False)
    if doc["saved_to"]:
        console.print(f"saved to {escape(doc['saved_to'])} (mode 600)", soft_wrap=True)
    else:
        err_console.print(
            "give the token to its user only: in $RAYPIPE_TOKEN, or a token file of mode 600 (--save)", soft_wrap=True
        )


@admin_app.command("apply")
def apply_cmd(
    file: Annotated[str, typer.Argument(metavar="FILE", help="The platform config YAML (kind: platform).")],
    db: DbOpt = None,
    address: AddressOpt = None,
    no_push: Annotated[
        bool, typer.Option("--no-push", metavar="", help="Only store it; drivers push it to the scheduler later.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a platform config as the next version (admins only) and push its scheduler settings
    to the running scheduler."""
    doc = guard(lambda: api.admin_apply(file, db=db, address=address, push=not no_push))
    if as_json:
        emit_json(doc)
        return
    console.print(f"platform config version {doc['version']} applied to {escape(doc['db'])}", soft_wrap=True)
    if doc["pushed"]:
        console.print("the cluster's scheduler follows it now")
    elif doc.get("note"):
        console.print(f"not pushed to the scheduler: {escape(doc['note'])}", soft_wrap=True)


@admin_app.command("show")
def show_cmd(
    version: Annotated[
        int | None, typer.Option("--version", metavar="N", help="A version (default: the one in force).")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the platform config in force (or version N): users, teams, the scheduler's settings."""
    doc = guard(lambda: api.admin_show(version, db=db))
    if as_json:
        emit_json(doc)
        return
    cfg = doc["config"]
    console.print(
        f"platform config version {doc['version']} · applied {ts(doc['applied_at'])} by {escape(str(doc['actor']))}",
        soft_wrap=True,
    )
    if cfg.get("description"):
        console.print(escape(cfg["description"]), soft_wrap=True)
    users = Table("user", "teams", "admin", "token sha256")
    for name, u in cfg["users"].items():
        users.add_row(
            escape(name), ", ".join(u["teams"]) or "-", "yes" if u["admin"] else "", u["token_sha256"][:12] + "…"
        )
    console.print(users if cfg["users"] else "no users: one user (the OS user), an admin")
    teams = Table("team", "quota", "priorities", "priority bonus", "weight")
    for name, t in cfg["teams"].items():
        quota = {k: t[k] for k in ("cpu", "gpu", "memory_mb") if t.get(k) is not None} | dict(t.get("custom") or {})
        quota_text = ", ".join(f"{k} {v:g}" for k, v in quota.items()) or "none"
        teams.add_row(
            escape(name),
            quota_text,
            f"{t['min_priority']}..{t['max_priority']}",
            str(t["priority"]),
            f"{t['weight']:g}",
        )
    if "default" not in cfg["teams"]:
        teams.add_row("default", "none", "0..0", "0", "1")
    console.print(teams)
    sched = cfg["scheduler"]
    args = json.dumps(sched["policy_args"]) if sched["policy_args"] else ""
    console.print(f"scheduler: policy {sched['policy']} {escape(args)} · lease {sched['lease_s']:g}s", soft_wrap=True)
    if sched.get("autoscaler"):
        console.print(f"autoscaler: {escape(json.dumps(sched['autoscaler']))}", soft_wrap=True)


@admin_app.command("history")
def history_cmd(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List every version of the platform config: when, by whom, its users, admins and teams."""
    rows = guard(lambda: api.admin_history(db))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print("no platform config: a single-user store (apply one with `raypipe admin apply FILE`)")
        return
    table = Table("version", "applied", "by", "users", "admins", "teams", "policy")
    for r in rows:
        table.add_row(
            str(r["version"]),
            ts(r["applied_at"]),
            escape(str(r["actor"])),
            str(len(r["users"])),
            ", ".join(r["admins"]) or "-",
            ", ".join(r["teams"]) or "-",
            str(r["policy"]),
        )
    console.print(table)
