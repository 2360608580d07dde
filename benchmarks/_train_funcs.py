"""Functions the train/tune overhead benchmark runs in Ray workers.

They live in their own small module so that Tune's trial actors import them by name
(``benchmarks._train_funcs:sleep_trial``), and so that the code fingerprint in raypipe's
cache key does not change when the benchmark script itself is edited.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any


def sleep_trial(config: dict[str, Any], **datasets: Any) -> None:
    """A Tune trial that "trains" for ``config["sleep_s"]`` seconds (default 1) and reports once,
    with a tiny checkpoint, so that the raypipe ``tune`` stage has a best model to store."""
    import ray.tune

    time.sleep(float(config.get("sleep_s", 1.0)))
    x = float(config.get("x", 0.0))
    metrics = {"score": 1.0 - (x - 0.5) ** 2}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "state.json").write_text(json.dumps({"x": x, **metrics}))
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))
