"""MkDocs hook: the YAML field reference, generated from raypipe's pydantic models at build time.

A page asks for a group of models with a marker line such as ``<!-- raypipe:yaml pipeline -->``;
the marker is replaced by one table per model (field, type, default, description), followed
by the models its fields use, recursively.  Descriptions come from ``Field(description=...)``,
else the ``#:`` comment lines above the field, else a comment at the end of its line.

Modules move; the names below do not.  Each model lists the modules it may live in, old and
new: the first that imports it wins.  A model found in none of them fails the build, as do a
marker naming an unknown group and a group no page shows.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import io
import json
import posixpath
import re
import sys
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from field_docs import FIELD_DOCS  # docs/hooks/field_docs.py (MkDocs puts this folder on sys.path)
from mkdocs.exceptions import PluginError

# --------------------------------------------------------------------------- what is documented

#: (group, title, "module:Class").  A page shows a group
#: with ``<!-- raypipe:yaml GROUP -->``.
MODELS: list[tuple[str, str, str]] = [
    ("pipeline", "Pipeline file", "raypipe.config.schema:PipelineConfig"),
    ("pipeline", "Stage", "raypipe.config.schema:StageConfig"),
    ("pipeline", "Scheduler section", "raypipe.config.schema:SchedulerConfig"),
    ("platform", "Platform config (`raypipe admin apply FILE`)", "raypipe.config.platform:PlatformConfig"),
    ("serving", "Served app (`raypipe serve deploy FILE`, a deploy stage's params)", "raypipe.serving.spec:ServeSpec"),
    ("serving", "Closed loop (`retrain:`)", "raypipe.serving.spec:RetrainSpec"),
    ("rollout", "Rollout file (`rollout:`)", "raypipe.serving.rollout.settings:RolloutSpec"),
    ("rollout", "Rollout settings (`retrain.rollout`)", "raypipe.serving.rollout.settings:RolloutSettings"),
    ("monitor", "Drift monitor (`monitor:`)", "raypipe.serving.spec:MonitorConfig"),
    ("monitor", "Monitor spec (`start_monitor`'s `spec`)", "raypipe.monitoring.spec:MonitorSpec"),
    (
        "cluster",
        "Simulated cluster (`raypipe bench scheduling --cluster FILE`)",
        "raypipe.scheduler.cluster_spec:ClusterSpec",
    ),
]

#: Where the stage kinds are registered: ``(kind, "module:Class")`` rows, each class with a
#: pydantic ``Params``.  The group ``stages`` documents every registered kind's params.
STAGE_KINDS = "raypipe.stages.registry:STAGE_KINDS"

#: Guide pages that explain a stage kind (a link under its heading; optional).
KIND_GUIDES = {
    "python": "../getting-started.md#python-stages",
    "data.read": "../data.md",
    "data.transform": "../data.md",
    "data.validate": "../data.md#validation",
    "data.split": "../data.md",
    "data.profile": "../data.md",
    "train": "../training.md",
    "tune": "../sweeps.md",
    "evaluate": "../training.md#evaluation-and-gates",
    "register": "../registry.md",
    "deploy": "../serving.md",
}

MARKER = re.compile(r"^<!--\s*raypipe:yaml\s+([\w-]+)\s*-->\s*$", re.M)

# --------------------------------------------------------------------------- imports


def _repo_root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config: Any) -> Any:
    """Document the checkout being built, not another raypipe the environment may hold."""
    root = str(_repo_root(config))
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def resolve(target: str) -> Any:
    """``module:attr`` imported; a PluginError naming it when it is not there."""
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PluginError(
            f"docs/hooks/reference.py: cannot import {target} ({type(e).__name__}: {e}); update MODELS"
        ) from e


# --------------------------------------------------------------------------- text


def rst_to_md(text: str) -> str:
    """Docstring and comment markup (reST-ish) as Markdown."""
    text = re.sub(r":(?:class|func|meth|mod|data|attr|obj|exc):`~?([^`]+)`", lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            out.append(head + ":" if head else "")
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["", "```yaml", textwrap.dedent("\n".join(block)).strip("\n"), "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out).strip()


def one_line(text: str) -> str:
    """A table cell: one line, pipes escaped outside code spans."""
    text = " ".join(rst_to_md(text).split())
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|").replace("<", "&lt;") for p in parts)


def code(text: str) -> str:
    """``text`` as a Markdown code span, whatever backticks it holds."""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs) + 1 if runs else 1)
    pad = " " if text.startswith("`") or text.endswith("`") or runs else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def yaml_value(v: Any) -> str:
    """A value as it would be written in YAML flow style."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return yaml_value(v.value)
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        plain = v and re.fullmatch(r"[A-Za-z0-9_./@+-][A-Za-z0-9_./@+ -]*", v) and v not in ("null", "true", "false")
        return v if plain else json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple, set, frozenset)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    return str(v)


# --------------------------------------------------------------------------- field comments


def _class_comments(cls: type) -> dict[str, tuple[list[str], str | None]]:
    """Per field defined in ``cls``'s own body: its ``#:`` lines above and its end-of-line comment."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string
    except (tokenize.TokenError, IndentationError):
        return {}
    lines = src.split("\n")
    tree = ast.parse(src)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, tuple[list[str], str | None]] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#:"):
            above.insert(0, lines[n - 1].strip()[2:].strip())
            n -= 1
        trailing = None
        for ln in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            c = comments.get(ln)
            if c and not c.startswith("#:") and lines[ln - 1].strip() != c.strip():
                text = c[1:].strip()
                if not re.match(r"(type:|noqa|pragma|fmt:)", text):
                    trailing = text
        out[node.target.id] = (above, trailing)
    return out


_COMMENT_CACHE: dict[type, dict[str, tuple[list[str], str | None]]] = {}


#: "Class.field" of every field documented so far (FIELD_DOCS keys must be among them).
SEEN_FIELDS: set[str] = set()


def field_description(model: type, name: str, info: Any) -> str:
    """``Field(description=...)``, else the ``#:`` lines above the field in the class that
    defines it, else FIELD_DOCS, else the comment at the end of the field's line."""
    owners = [k for k in model.__mro__ if name in k.__dict__.get("__annotations__", {})]
    SEEN_FIELDS.update(f"{k.__name__}.{name}" for k in owners)
    SEEN_FIELDS.add(f"{model.__name__}.{name}")
    if getattr(info, "description", None):
        return info.description
    trailing = None
    for klass in owners:
        if klass not in _COMMENT_CACHE:
            _COMMENT_CACHE[klass] = _class_comments(klass)
        above, end = _COMMENT_CACHE[klass].get(name, ([], None))
        if above:
            return " ".join(above)
        trailing = trailing or end
    for klass in [model, *owners]:
        text = FIELD_DOCS.get(f"{klass.__name__}.{name}")
        if text:
            return text
    return trailing or ""


def own_doc(cls: type) -> str:
    """The class's own docstring (not one inherited from a base such as StageParams)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""


# --------------------------------------------------------------------------- types


def _is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _constraints(meta: Iterable[Any], base: Any = None) -> list[str]:
    """``ge=0`` -> ``≥ 0`` and the like, from Annotated metadata (``base``: the constrained type)."""
    out: list[str] = []
    sym = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    flat: list[Any] = []
    for m in meta:
        flat.append(m)
        flat += list(getattr(m, "metadata", None) or ())  # a FieldInfo inside Annotated
    lo = hi = None
    for m in flat:
        for attr, s in sym.items():
            v = getattr(m, attr, None)
            if v is not None and not callable(v):
                out.append(f"{s} {yaml_value(v)}")
        lo = getattr(m, "min_length", None) if getattr(m, "min_length", None) is not None else lo
        hi = getattr(m, "max_length", None) if getattr(m, "max_length", None) is not None else hi
        pat = getattr(m, "pattern", None)
        if isinstance(pat, str):
            out.append(f"matching {code(pat)}")
    unit = "characters" if base is str else "items"
    if lo is not None and lo == hi:
        out.append(f"exactly {lo} {unit[:-1] if lo == 1 else unit}")
    else:
        if lo is not None:
            out.append(f"at least {lo} {unit[:-1] if lo == 1 else unit}")
        if hi is not None:
            out.append(f"at most {hi} {unit[:-1] if hi == 1 else unit}")
    return out


def _base(tp: Any) -> Any:
    """The type under Annotated and Optional: ``str`` for ``Annotated[str | None, ...]``."""
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            tp = args[0]
        elif origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if len(inner) != 1:
                return tp
            tp = inner[0]
        else:
            return tp


_SCALARS = {str: "string", int: "int", float: "float", bool: "bool", bytes: "bytes", type(None): "null"}


class TypeWriter:
    """Renders annotations as readable Markdown and collects the models they mention."""

    def __init__(self, link: Any) -> None:
        self.link = link  # model class -> Markdown link text
        self.models: list[type] = []

    def __call__(self, tp: Any, meta: Iterable[Any] = ()) -> str:
        text = self._fmt(tp)
        cons = _constraints(meta, _base(tp))
        return f"{text} ({', '.join(cons)})" if cons else text

    def _inner(self, tp: Any) -> str:
        text = self._fmt(tp)
        return f"({text})" if " or " in text or text.startswith("one of") else text

    def _fmt(self, tp: Any) -> str:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            base, *meta = args
            cons = _constraints(meta, _base(base))
            inner = self._fmt(base)
            return f"{inner} ({', '.join(cons)})" if cons else inner
        if origin in (typing.Union, types.UnionType):
            parts = [self._fmt(a) for a in args if a is not type(None)]
            if type(None) in args:
                parts.append(code("null"))
            return " or ".join(parts)
        if origin is typing.Literal:
            vals = [code(yaml_value(a)) for a in args]
            return vals[0] if len(vals) == 1 else "one of " + ", ".join(vals)
        if origin in (list, set, frozenset, typing.List, typing.Set):  # noqa: UP006
            return f"list of {self._inner(args[0])}" if args else "list"
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return f"list of {self._inner(args[0])}"
            return "[" + ", ".join(self._fmt(a) for a in args) + "]" if args else "list"
        if origin in (dict, typing.Dict) or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):  # noqa: UP006
            if len(args) == 2:
                return f"mapping of {self._inner(args[0])} to {self._inner(args[1])}"
            return "mapping"
        if tp is Any or tp is object:
            return "any"
        if tp in _SCALARS:
            return code(_SCALARS[tp])
        if _is_model(tp):
            if tp not in self.models:
                self.models.append(tp)
            return self.link(tp)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return "one of " + ", ".join(code(yaml_value(m.value)) for m in tp)
        if isinstance(tp, typing.TypeVar):
            return "any"
        name = getattr(tp, "__name__", None) or str(tp)
        return code(name)


def default_text(info: Any) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except TypeError:  # a factory taking the validated data
            return "computed"
    else:
        value = info.default
    if _is_model(type(value)):
        return "its defaults"
    if dataclasses.is_dataclass(value):
        return "its defaults"
    return code(yaml_value(value))


# --------------------------------------------------------------------------- pages


#: Model -> the page (src_uri) that shows it: the roots of every group, found in on_files.
HOMES: dict[type, str] = {}


class Page:
    """One page's models: anchors are unique on the page, each model is shown once; a model
    another page shows (a group's root) is linked there instead."""

    def __init__(self, src_uri: str = "") -> None:
        self.src_uri = src_uri
        self.anchors: dict[type, str] = {}
        self.used_in: dict[type, list[str]] = {}
        self.shown: set[type] = set()

    def elsewhere(self, cls: type) -> str | None:
        """The relative URL of the page that shows ``cls``, if it is not this one."""
        home = HOMES.get(cls)
        if home is None or home == self.src_uri:
            return None
        rel = posixpath.relpath(home, posixpath.dirname(self.src_uri) or ".")
        return f"{rel}#{cls.__name__.lower()}"

    def anchor(self, cls: type) -> str:
        if cls not in self.anchors:
            base = cls.__name__.lower()
            taken = set(self.anchors.values())
            a, n = base, 2
            while a in taken:
                a, n = f"{base}-{n}", n + 1
            self.anchors[cls] = a
        return self.anchors[cls]

    def link(self, cls: type) -> str:
        url = self.elsewhere(cls)
        return f"[{cls.__name__}]({url or '#' + self.anchor(cls)})"

    def render(self, root: type, title: str | None, level: int = 2, later: Iterable[type] = ()) -> str:
        """``root`` and every model reachable from its fields not shown yet on this page
        (except ``later``: roots shown further down the page, under their own titles)."""
        out: list[str] = []
        queue = [(root, title)]
        later = set(later)
        while queue:
            cls, heading = queue.pop(0)
            if cls in self.shown or (cls is not root and (self.elsewhere(cls) or cls in later)):
                continue
            self.shown.add(cls)
            text, nested = self._table(cls, heading, level)
            out.append(text)
            queue += [(m, None) for m in nested if m not in self.shown]
        return "\n\n".join(out)

    def _superset(self, cls: type) -> type | None:
        """A related model whose table already covers ``cls``: a base class with the same fields
        (shown here or elsewhere), or a subclass shown earlier on this page."""

        def covers(m: type) -> bool:
            mine, theirs = cls.model_fields, m.model_fields
            return all(k in theirs and repr(theirs[k]) == repr(v) for k, v in mine.items())

        for m in cls.__mro__[1:]:
            if _is_model(m) and (m in self.shown or self.elsewhere(m)) and set(m.model_fields) == set(cls.model_fields):
                if covers(m):
                    return m
        for m in self.shown:
            if m is not cls and issubclass(m, cls) and covers(m):
                return m
        return None

    def _table(self, cls: type, title: str | None, level: int) -> tuple[str, list[type]]:
        writer = TypeWriter(self.link)
        h = "#" * level
        lines = [f"{h} {title or cls.__name__} {{#{self.anchor(cls)}}}", ""]
        lines.append(f"`{cls.__module__}.{cls.__qualname__}`")
        users = self.used_in.get(cls)
        if users:
            lines[-1] += " · used by " + ", ".join(dict.fromkeys(users))
        lines.append("")
        doc = own_doc(cls)
        if doc:
            lines += [rst_to_md(doc), ""]
        fields = cls.model_fields
        if not fields:
            lines.append("No fields.")
            return "\n".join(lines), []
        same = self._superset(cls)
        if same is not None:
            extra_fields = [f for f in same.model_fields if f not in fields]
            text = f"The fields of {self.link(same)}"
            text += (" without " + ", ".join(code(f) for f in extra_fields) + ".") if extra_fields else "."
            lines.append(text)
            return "\n".join(lines) + "\n", []
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, info in fields.items():
            key = info.alias or name
            before = len(writer.models)
            tp = writer(info.annotation, info.metadata)
            for m in writer.models[before:]:
                self.used_in.setdefault(m, [])
                ref = f"[{cls.__name__}](#{self.anchor(cls)}).{key}"
                if ref not in self.used_in[m]:
                    self.used_in[m].append(ref)
            desc = one_line(field_description(cls, name, info))
            lines.append(f"| {code(key)} | {tp} | {default_text(info)} | {desc} |")
        extra = (getattr(cls, "model_config", {}) or {}).get("extra")
        lines += ["", "Unknown keys are errors." if extra == "forbid" else ""]
        return "\n".join(lines).rstrip() + "\n", writer.models


def render_group(group: str, src_uri: str = "") -> str:
    if group == "stages":
        return render_stage_kinds(src_uri)
    entries = [(title, target) for g, title, target in MODELS if g == group]
    if not entries:
        known = sorted({g for g, _, _ in MODELS} | {"stages"})
        raise PluginError(f"docs/hooks/reference.py: unknown group {group!r}; known: {', '.join(known)}")
    page = Page(src_uri)
    roots = [(resolve(target), title) for title, target in entries]
    for cls, _ in roots:  # anchors of the roots first: stable, short
        page.anchor(cls)
    out = []
    for i, (cls, title) in enumerate(roots):
        out.append(page.render(cls, title, later=[c for c, _ in roots[i + 1 :]]))
    return "\n\n".join(out)


def stage_params() -> list[tuple[str, str, type, type]]:
    """(kind, target, stage kind class, its Params model) of every registered kind."""
    out = []
    for kind, target in resolve(STAGE_KINDS):
        cls = resolve(target)
        params = getattr(cls, "Params", None)
        if not _is_model(params):
            raise PluginError(f"docs/hooks/reference.py: stage kind {kind} ({target}) has no pydantic Params model")
        out.append((kind, target, cls, params))
    return out


def render_stage_kinds(src_uri: str = "") -> str:
    page = Page(src_uri)
    out: list[str] = []
    for kind, _target, cls, params in stage_params():
        anchor = "kind-" + re.sub(r"[^a-z0-9]+", "-", kind.lower())
        lines = [f"## `{kind}` {{#{anchor}}}", ""]
        mod_doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        summary = mod_doc.split("\n\n")[0]
        if summary:
            lines += [rst_to_md(" ".join(summary.split())), ""]
        if kind in KIND_GUIDES:
            lines += [f"Guide: [{kind}]({KIND_GUIDES[kind]}).", ""]
        page.anchor(params)
        if params in page.shown:
            lines.append(f"Its `params`: {page.link(params)}.")
        else:
            lines.append(page.render(params, f"`{kind}` params: {params.__name__}", level=3))
        out.append("\n".join(lines))
    return "\n\n".join(out)


_RENDERED: set[str] = set()


def on_files(files: Any, config: Any) -> Any:
    """Which page shows which group: the roots of a group are linked there from other pages."""
    HOMES.clear()
    for f in files.documentation_pages():
        for group in MARKER.findall(f.content_string):
            if group == "stages":
                for *_, params in stage_params():
                    HOMES.setdefault(params, f.src_uri)
                continue
            for g, _, target in MODELS:
                if g == group:
                    HOMES.setdefault(resolve(target), f.src_uri)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def sub(m: re.Match[str]) -> str:
        _RENDERED.add(m.group(1))
        return render_group(m.group(1), page.file.src_uri)

    return MARKER.sub(sub, markdown)


def on_pre_build(config: Any) -> None:
    _RENDERED.clear()
    SEEN_FIELDS.clear()


def on_env(env: Any, config: Any, files: Any) -> Any:
    groups = {g for g, _, _ in MODELS} | {"stages"}
    missing = sorted(groups - _RENDERED)
    if missing:
        raise PluginError(
            "docs/hooks/reference.py: no page shows the YAML reference group(s) "
            + ", ".join(missing)
            + " (add <!-- raypipe:yaml GROUP --> to a page)"
        )
    stale = sorted(set(FIELD_DOCS) - SEEN_FIELDS)
    if stale:
        raise PluginError(
            "docs/hooks/field_docs.py describes fields no documented model has (renamed or removed?): "
            + ", ".join(stale)
        )
    return env
