"""Weighted, sticky traffic splitting: which variant serves a request (pure, no Ray).

Contract (shared with the A/B report and the canary controller):

- ``choose(key: str, weights: Mapping[str, float], salt: str = "") -> str``: weighted
  rendezvous (highest-random-weight) hashing.  For every variant ``v`` with weight
  ``w > 0`` the key gets a stable 64-bit hash ``h = blake2b(salt, key, v)`` mapped to
  ``u`` in (0, 1); the variant with the highest score ``w / -ln(u)`` wins.  So

  * the same key always gets the same variant (any replica, any process, any
    restart: nothing but the key, the weights and the salt is involved);
  * over many keys a variant gets ``w / sum(w)`` of them;
  * changing the weights moves few keys: a key only moves away from a variant whose
    weight went down or to a variant whose weight went up (never between two variants
    whose weights stayed the same), so 90/10 -> 80/20
    moves exactly the 10% that must move, and dropping or adding a variant moves only
    that variant's keys.  A cumulative-range split instead moves every key whose range
    shifted (``tests/unit/test_routing.py`` compares both with the minimum).

  A request without a key gets :func:`random_key` (a fresh uuid4), so unkeyed traffic
  still splits by weight.  Variants with weight 0 never receive routed traffic (they
  can still be forced by header or receive shadow copies).
- ``parse_weights(spec, known_versions) -> dict[str, float]``: ``{"v3": 90, "v4": 10}``
  or ``["v3=90", "v4=10"]`` against the deployed variants; returns every known
  variant (unnamed ones get 0) in the known order.  Raises :class:`WeightsError` (a
  ``RaypipeError``) when the weights do not sum to 100, name an unknown variant (the
  message lists the known ones), are negative, not numbers, or repeated.

Variants are named by the version label ``v<N>`` of a registered model.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence

from raypipe.exceptions import RaypipeError

#: A variant's name: the version label of a registered model, ``v<N>``.
VARIANT_RE = r"^v[1-9][0-9]*$"
_VARIANT = re.compile(VARIANT_RE)
_TWO64 = float(1 << 64)
#: Weights must sum to this (percentages), within ``TOLERANCE``.
TOTAL = 100.0
TOLERANCE = 1e-6


class WeightsError(RaypipeError):
    """A traffic split is invalid: it does not sum to 100, names an unknown variant,
    or has a negative or malformed weight.  The message says which and lists the known variants."""


def hash64(*parts: str) -> int:
    """A stable 64-bit hash of ``parts`` (blake2b; the same in every process and release)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        b = p.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return int.from_bytes(h.digest(), "big")


def unit_hash(*parts: str) -> float:
    """``hash64(parts)`` mapped into the open interval (0, 1)."""
    return (hash64(*parts) + 0.5) / _TWO64


def choose(key: str, weights: Mapping[str, float], salt: str = "") -> str:
    """The variant for ``key``: weighted rendezvous hashing over the variants with weight > 0."""
    best: str | None = None
    best_score = -1.0
    for variant, w in weights.items():
        if not w > 0:
            continue
        score = w / -math.log(unit_hash(salt, key, variant))
        if score > best_score or (score == best_score and best is not None and variant < best):
            best, best_score = variant, score
    if best is None:
        raise WeightsError(f"no variant has a positive weight: {dict(weights)}")
    return best


def random_key() -> str:
    """A fresh key for a request that carries none: unkeyed traffic splits by weight."""
    return uuid.uuid4().hex


def label(version: int | str) -> str:
    """``3`` / ``"3"`` / ``"v3"`` -> ``"v3"``."""
    text = str(version).strip()
    if text.isdigit():
        text = f"v{int(text)}"
    if not _VARIANT.match(text):
        raise WeightsError(f"variant {version!r}: expected a version label like v3")
    return text


def _number(variant: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise WeightsError(f"weight of {variant}: expected a number, got {raw!r}")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise WeightsError(f"weight of {variant}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise WeightsError(f"weight of {variant}: expected a finite number, got {raw!r}")
    if value < 0:
        raise WeightsError(f"weight of {variant}: {raw!r} is negative; weights are percentages from 0 to 100")
    return value


def parse_weights(spec: Mapping[str, float] | Sequence[str], known_versions: Iterable[str | int]) -> dict[str, float]:
    """Validate a split against the deployed variants; every known variant in the result."""
    known = [label(v) for v in known_versions]
    pairs: list[tuple[str, object]] = []
    if isinstance(spec, Mapping):
        pairs = [(str(k), v) for k, v in spec.items()]
    elif isinstance(spec, (list, tuple)):
        for item in spec:
            key, eq, text = str(item).partition("=")
            if not eq or not key.strip() or not text.strip():
                raise WeightsError(f"{item!r}: expected VARIANT=WEIGHT, e.g. v3=90")
            pairs.append((key.strip(), text.strip()))
    else:
        raise WeightsError(f"weights: expected a mapping or VARIANT=WEIGHT items, got {type(spec).__name__}")
    if not pairs:
        raise WeightsError(f"no weights given; known variants: {', '.join(known) or 'none'}")
    out: dict[str, float] = {}
    unknown = []
    for name, raw in pairs:
        try:
            variant = label(name)
        except WeightsError:
            unknown.append(name)
            continue
        if variant not in known:
            unknown.append(name)
            continue
        if variant in out:
            raise WeightsError(f"variant {variant} is given twice")
        out[variant] = _number(variant, raw)
    if unknown:
        raise WeightsError(
            f"unknown variant{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known variants: {', '.join(known) or 'none'}"
        )
    total = sum(out.values())
    if abs(total - TOTAL) > TOLERANCE:
        given = ", ".join(f"{k}={v:g}" for k, v in out.items())
        raise WeightsError(f"weights must sum to 100; {given} sum to {total:g}")
    return {v: out.get(v, 0.0) for v in known}
