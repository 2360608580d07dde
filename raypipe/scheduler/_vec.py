"""Fast, private resource vectors for the scheduler's hot loops.

``Resources`` arithmetic builds dictionaries and is too slow for a decision
that touches thousands of nodes and jobs.  Inside one decision we use plain
tuples ``(cpu, gpu, memory_mb, custom_pairs)``; they are converted from and to
``Resources`` at the edges only.
"""

from __future__ import annotations

from raypipe.resources import Resources

Custom = tuple[tuple[str, float], ...]
Vec = tuple[float, float, float, Custom]

EPS = 1e-9
ZERO: Vec = (0.0, 0.0, 0.0, ())
DIM_NAMES = ("CPU", "GPU", "MB")


def vec(r: Resources) -> Vec:
    """The tuple form of ``r``."""
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


def vmin(a: Vec, cap: Vec) -> Vec:
    """Component-wise minimum (used to clamp released capacity at the node total)."""
    capd = dict(cap[3])
    custom = tuple((k, min(x, capd.get(k, 0.0))) for k, x in a[3])
    return (min(a[0], cap[0]), min(a[1], cap[1]), min(a[2], cap[2]), custom)


def is_zero(v: Vec) -> bool:
    """True when every component is (near) zero."""
    return abs(v[0]) <= EPS and abs(v[1]) <= EPS and abs(v[2]) <= EPS and all(abs(x) <= EPS for _, x in v[3])


def dominant_index(need: Vec) -> int:
    """Index of the resource that matters most for fragmentation: GPU, then CPU, then memory.

    Returns 3 for a custom-only (or empty) request.
    """
    if need[1] > EPS:
        return 1
    if need[0] > EPS:
        return 0
    if need[2] > EPS:
        return 2
    return 3


def component(v: Vec, i: int) -> float:
    """Component ``i`` of ``v``; for ``i == 3`` the sum of custom resources."""
    if i < 3:
        return v[i]
    return sum(x for _, x in v[3])


def component_name(i: int, need: Vec) -> str:
    """Human name of component ``i`` (for custom: the request's first custom key)."""
    if i < 3:
        return DIM_NAMES[i]
    return need[3][0][0] if need[3] else "units"
