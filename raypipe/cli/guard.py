"""How a command ends: a user error prints one clean line (never a traceback) and exits 2;
Ctrl-C and SIGTERM stop a run cleanly.

Exit codes: 0 done, 1 a run (or a demo) that failed, 2 a user error (a bad config, an unknown
run or app, a missing store...), 130 interrupted by Ctrl-C, 143 stopped by SIGTERM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from raypipe.cli.render import err_console
from raypipe.exceptions import RaypipeError, RunStopped

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_STOPPED = 143


def guard(fn: Callable[[], T], run_hint: Callable[[], str | None] = lambda: None) -> T:
    """Run ``fn``; a RaypipeError becomes a clean message and exit code 2, Ctrl-C exit 130,
    a stop request (SIGTERM) exit 143.  ``run_hint`` names the run to resume, if any."""
    try:
        return fn()
    except RaypipeError as e:
        err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except (KeyboardInterrupt, RunStopped) as e:
        shutdown_ray()
        run_id = run_hint()
        hint = f"; continue with: raypipe resume {run_id}" if run_id else ""
        err_console.print(f"[yellow]{'stopped' if isinstance(e, RunStopped) else 'interrupted'}[/]{hint}")
        raise typer.Exit(EXIT_STOPPED if isinstance(e, RunStopped) else EXIT_INTERRUPTED) from None


def shutdown_ray() -> None:
    """Leave Ray cleanly after Ctrl-C (its exit hooks can crash on an interrupted driver)."""
    mod = sys.modules.get("ray")
    if mod is not None and mod.is_initialized():
        try:
            mod.shutdown()
        except Exception:  # noqa: BLE001 - best effort while exiting
            pass


def cwd_importable() -> None:
    """Let ``module:function`` name modules in the current directory, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
