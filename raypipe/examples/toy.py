"""Small stage functions for the scheduling examples (no data needed)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from raypipe.stages.base import StageContext


def hold(ctx: StageContext, seconds: float = 1.0) -> dict[str, Any]:
    """Hold the stage's grant for ``seconds`` and report where it ran."""
    time.sleep(seconds)
    return {
        "where": {
            "host": socket.gethostname(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "resources": str(ctx.resources),
            "seconds": seconds,
        }
    }
