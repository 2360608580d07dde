"""Model names and references (``NAME``, ``NAME:VERSION``, ``NAME@ALIAS``): pure parsing."""

from __future__ import annotations

import re

from raypipe.exceptions import RaypipeError

NAME_RE = r"^[A-Za-z][A-Za-z0-9_.-]*$"
_NAME = re.compile(NAME_RE)


def check_name(value: str, what: str = "model name") -> str:
    """``value`` if it is a valid model or alias name, else a RaypipeError saying why."""
    if not _NAME.match(value):
        raise RaypipeError(f"{what} {value!r}: use a letter, then letters, digits, '_', '.' or '-' (pattern {NAME_RE})")
    return value


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """``NAME`` | ``NAME:VERSION`` | ``NAME@ALIAS`` -> (name, version, alias)."""
    bad = RaypipeError(f"model reference {ref!r}: expected NAME, NAME:VERSION (e.g. digits:3) or NAME@ALIAS")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not name or not alias or not _NAME.match(name) or not _NAME.match(alias):
            raise bad
        return name, None, alias
    if ":" in ref:
        name, _, ver = ref.partition(":")
        if not _NAME.match(name) or not ver.isdigit() or int(ver) < 1:
            raise bad
        return name, int(ver), None
    if not _NAME.match(ref):
        raise bad
    return ref, None, None
