"""``Resources``: the immutable resource vector shared by config, runner and scheduler.

Imports nothing from Ray, so the scheduler's pure core, the simulator and the
config layer can all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_EPS = 1e-9


def _freeze(custom: Mapping[str, float] | Iterable[tuple[str, float]] | None) -> tuple[tuple[str, float], ...]:
    if custom is None:
        return ()
    items = custom.items() if isinstance(custom, Mapping) else custom
    return tuple(sorted((str(k), float(v)) for k, v in items if abs(float(v)) > _EPS))


#: Ray's per-placement-group resources (``CPU_group_<pg>``, ``GPU_group_0_<pg>``, ``bundle_group_<pg>``).
_PG_RESOURCE = re.compile(r"_group_(\d+_)?[0-9a-f]{32,}$")


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU, GPU, memory (MB) and custom resources, e.g. ``{"accelerator_type:A100": 1}``.

    Values are floats so fractional GPUs (``gpu=0.5``) work.  Arithmetic never
    mutates; ``a - b`` may go negative (use :meth:`fits` to test capacity).
    """

    cpu: float = 0.0
    gpu: float = 0.0
    memory_mb: float = 0.0
    custom: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu", float(self.cpu))
        object.__setattr__(self, "gpu", float(self.gpu))
        object.__setattr__(self, "memory_mb", float(self.memory_mb))
        if not isinstance(self.custom, tuple) or any(not isinstance(p, tuple) for p in self.custom):
            object.__setattr__(self, "custom", _freeze(self.custom))

    @classmethod
    def of(
        cls,
        cpu: float = 0.0,
        gpu: float = 0.0,
        memory_mb: float = 0.0,
        custom: Mapping[str, float] | None = None,
    ) -> Resources:
        return cls(cpu, gpu, memory_mb, _freeze(custom))

    @classmethod
    def from_ray(cls, d: Mapping[str, float]) -> Resources:
        """From a Ray resource dict (``{"CPU": 2, "GPU": 1, "memory": bytes, ...}``)."""
        custom = {
            k: v
            for k, v in d.items()
            if k not in ("CPU", "GPU", "memory", "object_store_memory")
            and not k.startswith("node:")
            and not _PG_RESOURCE.search(k)
        }
        return cls.of(
            cpu=d.get("CPU", 0.0),
            gpu=d.get("GPU", 0.0),
            memory_mb=d.get("memory", 0.0) / (1024 * 1024),
            custom=custom,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Resources:
        """From :meth:`to_dict`'s form (missing keys are zero, ``custom`` may be None)."""
        return cls.of(d.get("cpu", 0.0), d.get("gpu", 0.0), d.get("memory_mb", 0.0), d.get("custom") or {})

    def to_dict(self) -> dict[str, Any]:
        """``{"cpu", "gpu", "memory_mb", "custom": {name: amount}}``: JSON, and what
        :meth:`from_dict` reads back."""
        return {"cpu": self.cpu, "gpu": self.gpu, "memory_mb": self.memory_mb, "custom": self.custom_dict}

    @property
    def custom_dict(self) -> dict[str, float]:
        return dict(self.custom)

    def _vec(self) -> dict[str, float]:
        v = {"cpu": self.cpu, "gpu": self.gpu, "memory_mb": self.memory_mb}
        v.update({"custom:" + k: x for k, x in self.custom})
        return v

    @classmethod
    def _from_vec(cls, v: Mapping[str, float]) -> Resources:
        custom = {k[len("custom:") :]: x for k, x in v.items() if k.startswith("custom:")}
        return cls.of(v.get("cpu", 0.0), v.get("gpu", 0.0), v.get("memory_mb", 0.0), custom)

    def __add__(self, other: Resources) -> Resources:
        a, b = self._vec(), other._vec()
        return Resources._from_vec({k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()})

    def __sub__(self, other: Resources) -> Resources:
        a, b = self._vec(), other._vec()
        return Resources._from_vec({k: a.get(k, 0.0) - b.get(k, 0.0) for k in a.keys() | b.keys()})

    def __mul__(self, n: float) -> Resources:
        return Resources._from_vec({k: x * n for k, x in self._vec().items()})

    __rmul__ = __mul__

    def fits(self, capacity: Resources) -> bool:
        """True when every component of ``self`` is <= the same component of ``capacity``."""
        cap = capacity._vec()
        return all(x <= cap.get(k, 0.0) + _EPS for k, x in self._vec().items())

    def is_zero(self) -> bool:
        return all(abs(x) <= _EPS for x in self._vec().values())

    def nonnegative(self) -> bool:
        return all(x >= -_EPS for x in self._vec().values())

    def to_ray_options(self) -> dict[str, Any]:
        """Keyword arguments for ``ray.remote(...).options(...)``."""
        opts: dict[str, Any] = {"num_cpus": self.cpu, "num_gpus": self.gpu}
        if self.memory_mb > 0:
            opts["memory"] = int(self.memory_mb * 1024 * 1024)
        if self.custom:
            opts["resources"] = dict(self.custom)
        return opts

    def to_ray_bundle(self) -> dict[str, float]:
        """A placement-group bundle (``{"CPU": 1, "GPU": 2, ...}``) without zero entries."""
        b: dict[str, float] = {}
        if self.cpu > _EPS:
            b["CPU"] = self.cpu
        if self.gpu > _EPS:
            b["GPU"] = self.gpu
        if self.memory_mb > _EPS:
            b["memory"] = float(int(self.memory_mb * 1024 * 1024))
        b.update(self.custom)
        return b

    def __str__(self) -> str:
        parts = []
        if self.cpu:
            parts.append(f"{self.cpu:g} CPU")
        if self.gpu:
            parts.append(f"{self.gpu:g} GPU")
        if self.memory_mb:
            parts.append(f"{self.memory_mb:g} MB")
        parts += [f"{x:g} {k}" for k, x in self.custom]
        return ", ".join(parts) or "nothing"
