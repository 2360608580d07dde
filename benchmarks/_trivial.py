"""Trivial stage functions for the overhead benchmark.

They live in their own small module so that Ray workers can import them by name
(``benchmarks._trivial:inc``) and so that the code fingerprint in raypipe's cache
key does not change when the benchmark script itself is edited.
"""

from __future__ import annotations


def inc(x: int = 0) -> int:
    """The whole 'work' of one stage: add one."""
    return x + 1
