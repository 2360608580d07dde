"""Stage functions of test_concurrent_runs.py (run by Ray workers of two `raypipe run`s)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def meet(folder: str, runs: int, ctx: Any) -> dict[str, int]:
    """Return once ``runs`` runs got here (each leaves a file named by its run id): the stages
    after it then run in both runs at once."""
    here = Path(folder)
    here.mkdir(parents=True, exist_ok=True)
    (here / ctx.run_id).touch()
    deadline = time.monotonic() + 240
    while len(list(here.iterdir())) < runs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(p.name for p in here.iterdir())} of {runs} runs came to {folder}")
        time.sleep(0.05)
    return {"met": runs}


def mark(ctx: Any) -> dict[str, str]:
    """Leave this run's id in the stage's checkpoint folder; refuse one another run left."""
    folder = Path(ctx.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / "owner"
    if owner.exists() and owner.read_text() != ctx.run_id:
        raise RuntimeError(f"checkpoint folder {folder} is shared with run {owner.read_text()}")
    owner.write_text(ctx.run_id)
    return {"folder": str(folder)}


def total(data: Any) -> dict[str, Any]:
    """Rows and column sums of the dataset (read, verified, by Ray Data tasks)."""
    frame = data.to_pandas()
    return {"rows": len(frame), "a": int(frame["a"].sum()), "b": round(float(frame["b"].sum()), 6)}
