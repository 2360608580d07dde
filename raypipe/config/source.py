"""YAML with line numbers (:class:`ConfigSource`: a field path -> ``file:line``) and ``--set`` overrides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from raypipe.config.errors import Loc, format_loc
from raypipe.exceptions import ConfigError


@dataclass
class ConfigSource:
    """Where a config came from, able to turn a field path into ``file:line``."""

    path: str | None
    root: yaml.Node | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def line(self, loc: Loc) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            node = child
            line = node.start_mark.line + 1
        return line

    def where(self, loc: Loc) -> str:
        path = self.path or "<config>"
        line = self.line(loc)
        return f"{path}:{line}" if line is not None else path

    def error(self, issues: Iterable[tuple[Loc, str]]) -> ConfigError:
        rows = sorted(((self.line(loc) or 0, format_loc(loc), msg, loc) for loc, msg in issues), key=lambda r: r[:2])
        lines = []
        for _, path, msg, loc in rows:
            lines.append(f"{self.where(loc)} {path}: {msg}")
        return ConfigError("\n".join(lines))


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == part:
                return v
        # A stage referred to by name.
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


class _DupCheck:
    """Finds duplicate keys, which PyYAML silently merges."""

    @staticmethod
    def issues(node: yaml.Node | None, loc: Loc = ()) -> list[tuple[Loc, str, int]]:
        out: list[tuple[Loc, str, int]] = []
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                key = k.value
                if key in seen:
                    out.append(
                        (loc + (key,), f"duplicate key {key!r} (first at line {seen[key]})", k.start_mark.line + 1)
                    )
                else:
                    seen[key] = k.start_mark.line + 1
                out += _DupCheck.issues(v, loc + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out += _DupCheck.issues(v, loc + (i,))
        return out


#: The most values a document may hold once its aliases are expanded (an alias bomb
#: would otherwise expand into billions of values in validation).
MAX_EXPANDED = 1_000_000


def _check_aliases(root: yaml.Node | None, where: str) -> None:
    """Refuse an anchor used inside itself (a recursive alias: the data would be an
    infinite structure) and aliases expanding into more than ``MAX_EXPANDED`` values."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise ConfigError(
                f"{where}:{node.start_mark.line + 1}: invalid YAML: recursive alias (an anchor used inside itself)"
            )
        open_.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            n += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(v) for v in node.value)
        open_.discard(key)
        sizes[key] = n
        if n > MAX_EXPANDED:
            raise ConfigError(
                f"{where}:{node.start_mark.line + 1}: invalid YAML: aliases expand to more than {MAX_EXPANDED:,} values"
            )
        return n

    if root is not None:
        size(root)


def parse_yaml(text: str, path: str | None) -> tuple[Any, ConfigSource]:
    """Parse YAML text, keeping the node tree for line numbers."""
    where = path or "<config>"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_aliases(root, where)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    source = ConfigSource(path=path, root=root)
    dups = _DupCheck.issues(root)
    if dups:
        raise ConfigError("\n".join(f"{where}:{line} {format_loc(loc)}: {msg}" for loc, msg, line in dups))
    if data is None:
        raise ConfigError(f"{where}: the file is empty; expected a mapping with `name` and `stages`")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}:1: expected a mapping with `name` and `stages`; got a {type(data).__name__}")
    return data, source


_SET_RE = re.compile(r"^(?P<path>[^=]+)=(?P<value>.*)$", re.S)


def parse_override_path(path: str, data: Mapping[str, Any]) -> Loc:
    """``stages.train.params.lr`` or ``stages[1].params.lr`` -> a loc into ``data``."""
    parts: list[str | int] = []
    for token in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        parts.append(int(token[1:-1]) if token.startswith("[") else token)
    if not parts:
        raise ConfigError(f"--set {path!r}: empty field path")
    # A stage may be named instead of indexed: stages.train.params...
    if parts[0] == "stages" and len(parts) > 1 and isinstance(parts[1], str):
        stages = data.get("stages")
        names = [s.get("name") for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
        if parts[1] not in names:
            raise ConfigError(f"--set {path}: no stage named {parts[1]!r}; stages are: {', '.join(map(str, names))}")
        parts[1] = names.index(parts[1])
    return tuple(parts)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``path=value`` overrides (value parsed as YAML) to a copy of ``data``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        m = _SET_RE.match(item)
        if not m:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. stages.train.params.args.epochs=3")
        loc = parse_override_path(m["path"].strip(), data)
        try:
            value = yaml.safe_load(m["value"])
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or too long a number): the text
            value = m["value"]
        node: Any = data
        for i, part in enumerate(loc[:-1]):
            nxt = loc[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError(f"--set {m['path']}: index {part} is out of range")
                node = node[part]
            elif isinstance(node, dict):
                if part not in node or node[part] is None:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
            else:
                raise ConfigError(f"--set {m['path']}: {format_loc(loc[: i + 1])} is not a mapping")
        last = loc[-1]
        if isinstance(node, list) and isinstance(last, int) and last < len(node):
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {m['path']}: cannot set {format_loc(loc)}")
    return data
