"""``Vec``: the resource vector of the scheduler's hot loops.

``Resources`` arithmetic builds dictionaries and is too slow for a decision
that touches thousands of nodes and jobs.  Inside one decision the scheduler
works on :data:`Vec` values and converts from and to ``Resources`` at the
edges only (:func:`of`, :func:`to_resources`).

A ``Vec`` is a plain tuple ``(cpu, gpu, memory_mb, custom)``: ``custom`` is
``(name, amount)`` pairs sorted by name.  Read a component with the index
constants (``v[GPU]``, ``v[CUSTOM]``); build and combine vectors with the
functions of this module (``+`` on tuples concatenates).  It is deliberately
not a ``NamedTuple``: CPython specializes indexing and unpacking for exact
tuples only, and these vectors are indexed in the innermost placement loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from raypipe.resources import Resources

__all__ = [
    "CPU",
    "CUSTOM",
    "DIM_NAMES",
    "EPS",
    "GPU",
    "MEMORY",
    "ZERO",
    "Custom",
    "Vec",
    "add",
    "clamp",
    "clip",
    "copies",
    "component",
    "component_name",
    "dominant_index",
    "fits",
    "is_zero",
    "make",
    "of",
    "sub",
    "to_resources",
    "total",
]

#: Custom resources of a ``Vec``: ``(name, amount)`` pairs sorted by name.
Custom = tuple[tuple[str, float], ...]
#: ``(cpu, gpu, memory_mb, custom)``.
Vec = tuple[float, float, float, Custom]

#: Index of each component of a ``Vec``.
CPU: Final = 0
GPU: Final = 1
MEMORY: Final = 2
CUSTOM: Final = 3
#: Display names of the first three components (the units Ray shows).
DIM_NAMES = ("CPU", "GPU", "MB")
#: Tolerance of every comparison.
EPS = 1e-9

ZERO: Vec = (0.0, 0.0, 0.0, ())


def make(cpu: float, gpu: float, memory_mb: float, custom: Custom = ()) -> Vec:
    """A vector from its components (``custom`` sorted by name, as ``Resources.custom`` is)."""
    return (cpu, gpu, memory_mb, custom)


def of(r: Resources) -> Vec:
    """The vector of ``r``."""
    return (r.cpu, r.gpu, r.memory_mb, r.custom)


def to_resources(v: Vec) -> Resources:
    """Back to a ``Resources`` value (near-zero custom entries dropped)."""
    return Resources.of(v[0], v[1], v[2], dict(v[3]))


def fits(need: Vec, free: Vec) -> bool:
    """True when every component of ``need`` is <= the same component of ``free``."""
    if need[0] > free[0] + EPS or need[1] > free[1] + EPS or need[2] > free[2] + EPS:
        return False
    if need[3]:
        have = dict(free[3])
        for k, x in need[3]:
            if x > have.get(k, 0.0) + EPS:
                return False
    return True


def _merge(a: Custom, b: Custom, sign: float) -> Custom:
    if not b:
        return a
    d = dict(a)
    for k, x in b:
        d[k] = d.get(k, 0.0) + sign * x
    return tuple(sorted((k, x) for k, x in d.items() if abs(x) > EPS))


def add(a: Vec, b: Vec) -> Vec:
    """Component-wise ``a + b``."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], _merge(a[3], b[3], 1.0))


def sub(a: Vec, b: Vec) -> Vec:
    """Component-wise ``a - b`` (may go negative)."""
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2], _merge(a[3], b[3], -1.0))


def clamp(a: Vec, cap: Vec) -> Vec:
    """Component-wise minimum (used to clamp released capacity at the node total)."""
    capd = dict(cap[3])
    custom = tuple((k, min(x, capd.get(k, 0.0))) for k, x in a[3])
    return (min(a[0], cap[0]), min(a[1], cap[1]), min(a[2], cap[2]), custom)


def clip(v: Vec) -> Vec:
    """Negative components raised to zero (custom ones dropped)."""
    return (max(0.0, v[0]), max(0.0, v[1]), max(0.0, v[2]), tuple((k, x) for k, x in v[3] if x > EPS))


def total(vs: Iterable[Vec]) -> Vec:
    """The sum of ``vs`` (``ZERO`` when empty)."""
    acc = ZERO
    for v in vs:
        acc = add(acc, v)
    return acc


def is_zero(v: Vec) -> bool:
    """True when every component is (near) zero."""
    return abs(v[0]) <= EPS and abs(v[1]) <= EPS and abs(v[2]) <= EPS and all(abs(x) <= EPS for _, x in v[3])


def dominant_index(need: Vec) -> int:
    """Index of the resource that matters most for fragmentation: GPU, then CPU, then memory.

    Returns :data:`CUSTOM` for a custom-only (or empty) request.
    """
    if need[1] > EPS:
        return GPU
    if need[0] > EPS:
        return CPU
    if need[2] > EPS:
        return MEMORY
    return CUSTOM


def component(v: Vec, i: int, custom_key: str | None = None) -> float:
    """Component ``i`` of ``v``; for :data:`CUSTOM` the amount of ``custom_key``, or the sum of
    every custom resource when it is ``None``."""
    if i < CUSTOM:
        return v[i]  # type: ignore[return-value]  # a float: i indexes one of the first three
    if custom_key is not None:
        return dict(v[3]).get(custom_key, 0.0)
    return sum(x for _, x in v[3])


def component_name(i: int, need: Vec) -> str:
    """Human name of component ``i`` (for :data:`CUSTOM`: the request's first custom key)."""
    if i < CUSTOM:
        return DIM_NAMES[i]
    return need[3][0][0] if need[3] else "units"


def copies(b: Vec, free: Vec, cap: int) -> int:
    """How many copies of ``b`` fit in ``free`` (at most ``cap``), by repeated subtraction like placement."""
    n = 0
    while n < cap and fits(b, free):
        free = sub(free, b)
        n += 1
    return n
