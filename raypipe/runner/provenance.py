"""What a run was made from besides its config: the git commit of the pipeline file's
repository (and whether its tracked files had changes), the Python version and every installed
distribution's version.  Recorded when a run starts (``run_environments``); ``raypipe rerun``
compares it with now, ``raypipe diff`` shows it side by side."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from typing import Any

#: How long one git command may take (seconds): a run never waits on a slow repository for long.
GIT_TIMEOUT_S = 5.0


def _git(folder: str, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", folder, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(folder: str) -> dict[str, Any]:
    """``{"git_commit", "git_dirty", "git_root"}`` of the repository holding ``folder`` (all
    None outside one, or without git).  Dirty: a tracked file differs from the commit."""
    root = _git(folder, "rev-parse", "--show-toplevel")
    commit = _git(folder, "rev-parse", "HEAD")
    if root is None or commit is None:
        return {"git_commit": None, "git_dirty": None, "git_root": None}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit.strip(),
        "git_dirty": None if status is None else bool(status.strip()),
        "git_root": root.strip(),
    }


def installed_packages() -> dict[str, str]:
    """Every installed distribution: lower-case name -> version."""
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            out.setdefault(str(name).lower(), dist.version)
    return dict(sorted(out.items()))


def capture(config_path: str | None) -> dict[str, Any]:
    """The environment a run starts in: git state of the pipeline file's folder (else the
    working directory), Python and packages."""
    folder = os.path.dirname(config_path) if config_path else os.getcwd()
    return {**git_state(folder or "."), "python": platform.python_version(), "packages": installed_packages()}


def environment_changes(recorded: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[str]:
    """What differs between a run's recorded environment and ``now``, one line each
    (``git commit a1b2c3d4 -> e5f6a7b8``, ``package torch 2.12.0 -> 2.13.0``...)."""
    if recorded is None:
        return ["no environment recorded with the run (it predates schema version 6): nothing to compare"]
    lines: list[str] = []
    old_c, new_c = recorded.get("git_commit"), now.get("git_commit")
    if old_c != new_c:
        lines.append(f"git commit {_short(old_c)} -> {_short(new_c)}")
    if recorded.get("git_dirty") != now.get("git_dirty"):
        lines.append(f"git working tree {_dirty(recorded.get('git_dirty'))} -> {_dirty(now.get('git_dirty'))}")
    elif now.get("git_dirty"):
        lines.append("git working tree dirty then and now: uncommitted changes may differ")
    if recorded.get("python") != now.get("python"):
        lines.append(f"python {recorded.get('python')} -> {now.get('python')}")
    old_p: Mapping[str, str] = recorded.get("packages") or {}
    new_p: Mapping[str, str] = now.get("packages") or {}
    for name in sorted(old_p.keys() | new_p.keys()):
        a, b = old_p.get(name), new_p.get(name)
        if a != b:
            lines.append(f"package {name} {a or '(absent)'} -> {b or '(absent)'}")
    return lines


def _short(commit: Any) -> str:
    return str(commit)[:12] if commit else "(no git)"


def _dirty(flag: Any) -> str:
    return "unknown" if flag is None else ("dirty" if flag else "clean")
