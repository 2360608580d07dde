"""Sampling of served requests by request id (shared by the serving ingress and the monitor)."""

from __future__ import annotations

import hashlib

__all__ = ["keep_request"]


def keep_request(request_id: str, rate: float, salt: str = "") -> bool:
    """Deterministic sampling by request id: the same id is always kept or always dropped,
    so sampling twice (ingress, then monitor) keeps the same rows as sampling once."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    h = hashlib.blake2b(f"{salt}\x00{request_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64 < rate
