"""MkDocs hook: the CLI reference, generated from raypipe's command tree at build time.

The marker line ``<!-- raypipe:cli -->`` in a page is replaced by every command of the
``raypipe`` CLI (usage, help, arguments and options), walked from the click command that
typer builds, so the page follows the CLI as it changes.  The app is found by the
app ``raypipe.cli:app``; an import error fails the build.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

PROG = "raypipe"
MARKER = re.compile(r"^<!--\s*raypipe:cli\s*-->\s*$", re.M)


def on_config(config: Any) -> Any:
    """Document the checkout being built, not another raypipe the environment may hold."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def click_command() -> Any:
    """The click command typer builds from ``raypipe.cli:app``."""
    import typer

    from raypipe.cli import app

    return typer.main.get_command(app)


# --------------------------------------------------------------------------- text


def _clean(text: str | None) -> str:
    """Help text without typer/rich markup, as Markdown paragraphs."""
    if not text:
        return ""
    text = inspect.cleandoc(text).split("\f")[0]
    text = re.sub(r"\[/?(bold|dim|italic|red|green|yellow|cyan|blue|magenta|b|i|u)\]", "", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text.strip()


def _cell(text: str) -> str:
    text = " ".join(_clean(text).split())
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|").replace("<", "&lt;") for p in parts)


def _code(text: str) -> str:
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs) + 1 if runs else 1)
    pad = " " if runs else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _anchor(path: list[str]) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in path)


# --------------------------------------------------------------------------- commands
# Only what click and typer's own copy of click (typer >= 0.23 vendors it) have in common
# is used: commands' help, params, list_commands/get_command, params' opts, default, help.


def _annotation_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _annotation_text(inner[0]) if len(inner) == 1 else " or ".join(_annotation_text(a) for a in inner)
    if origin is typing.Annotated:
        return _annotation_text(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(_code(str(a)) for a in args)
    if origin in (list, tuple, set):
        return _annotation_text(args[0]) if args else "text"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(_code(str(m.value)) for m in tp)
    return {str: "text", int: "integer", float: "number", bool: "true/false", Path: "path"}.get(tp, "text")


def _type_text(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    metavar = getattr(param, "metavar", None)
    if metavar and not _is_argument(param):  # the command's own words for the value: NAME, a|b|c
        return _code(str(metavar))
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and getattr(desc, "annotation", None) is not None:
        out = _annotation_text(desc.annotation)
    else:
        t = getattr(param, "type", None)
        choices = getattr(t, "choices", None)
        if choices:
            out = "one of " + ", ".join(_code(str(c)) for c in choices)
        else:
            name = getattr(t, "name", "") or "text"
            out = {"integer": "integer", "float": "number", "boolean": "true/false"}.get(name, name)
    if getattr(param, "multiple", False):
        out += ", repeatable"
    elif getattr(param, "nargs", 1) == -1:
        out += ", one or more"
    return out


def _default_text(param: Any) -> str:
    if getattr(param, "required", False):
        return "**required**"
    d = getattr(param, "default", None)
    if callable(d) or d is None or d == () or d == [] or type(d).__name__ in ("Sentinel", "_Missing"):
        return ""
    if getattr(param, "is_flag", False) and d is False:
        return ""
    if isinstance(d, bool):
        return _code("true" if d else "false")
    if isinstance(d, enum.Enum):
        return _code(str(d.value))
    if isinstance(d, (list, tuple)):
        return _code(" ".join(map(str, d)))
    return _code(str(d))


def _is_argument(param: Any) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _metavar(param: Any) -> str:
    return str(getattr(param, "metavar", None) or param.name).upper()


def _param_name(param: Any) -> str:
    if _is_argument(param):
        return _code(_metavar(param))
    opts = list(getattr(param, "opts", []) or []) + list(getattr(param, "secondary_opts", []) or [])
    return ", ".join(_code(o) for o in opts)


def _usage(cmd: Any, path: list[str], params: list[Any]) -> str:
    pieces = [*path, "[OPTIONS]"]
    for p in params:
        if _is_argument(p):
            m = _metavar(p)
            if getattr(p, "nargs", 1) == -1:
                m += "..."
            pieces.append(m if getattr(p, "required", False) else f"[{m}]")
    if hasattr(cmd, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _context(cmd: Any, name: str, parent: Any) -> Any:
    return cmd.context_class(cmd, info_name=name, parent=parent)


def _short_help(cmd: Any) -> str:
    text = getattr(cmd, "short_help", None) or _clean(cmd.help).split("\n\n")[0]
    return " ".join(text.split())


def _render(cmd: Any, path: list[str], parent: Any, out: list[str]) -> None:
    ctx = _context(cmd, path[-1], parent)
    level = min(len(path) + 1, 4)
    out.append(f"{'#' * level} `{' '.join(path)}` {{#{_anchor(path)}}}")
    out.append("")
    help_text = _clean(cmd.help)
    if help_text:
        out += [help_text, ""]
    if getattr(cmd, "deprecated", False):
        out += ["*Deprecated.*", ""]
    # --help is on every command (see the page's introduction)
    params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
    out += ["```text", _usage(cmd, path, params), "```", ""]
    if params:
        out += ["| argument or option | type | default | description |", "|---|---|---|---|"]
        for p in params:
            help_ = getattr(p, "help", None) or ""
            out.append(f"| {_param_name(p)} | {_type_text(p)} | {_default_text(p)} | {_cell(help_)} |")
        out.append("")
    if hasattr(cmd, "list_commands"):
        subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
        subs = [(n, c) for n, c in subs if c is not None and not getattr(c, "hidden", False)]
        if subs:
            out += ["| command | |", "|---|---|"]
            for name, sub in subs:
                out.append(
                    f"| [{_code(' '.join([*path, name]))}](#{_anchor([*path, name])}) | {_cell(_short_help(sub))} |"
                )
            out.append("")
        for name, sub in subs:
            _render(sub, [*path, name], ctx, out)


def render_cli() -> str:
    cmd = click_command()
    out: list[str] = []
    _render(cmd, [PROG], None, out)
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER.search(markdown):
        return MARKER.sub(lambda _: render_cli(), markdown)
    return markdown
