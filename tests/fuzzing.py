"""How many examples the fuzzers try.

CI keeps each fuzz test's own count.  A longer hunt, run by hand and reported in the issue
note: ``RAYPIPE_FUZZ_EXAMPLES=10000`` gives every fuzz test (configs and HTTP requests) that
many examples (without the per-test timeout); ``RAYPIPE_FUZZ_SCALE=10`` multiplies each
test's own count instead.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: The settings every fuzz test shares: reproducible (derandomized, no example database),
#: no deadline (a request over real Serve may wait for a CPU), no health check that stops a
#: slow or filtered strategy.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def examples(default: int) -> int:
    """The number of examples a fuzz test whose CI count is ``default`` tries now."""
    fixed = os.environ.get("RAYPIPE_FUZZ_EXAMPLES", "").strip()
    if fixed:
        return max(1, int(fixed))
    return max(1, int(default * float(os.environ.get("RAYPIPE_FUZZ_SCALE", "1"))))
