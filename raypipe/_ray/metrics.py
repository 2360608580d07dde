"""raypipe's Prometheus metrics through Ray's metrics API, and a registry that keeps them too.

Every metric is declared once as a :class:`MetricSpec` (name, kind, help, tag keys, histogram
buckets).  A :class:`Registry` records values: it keeps each series in memory (what
:meth:`Registry.snapshot` returns: tests and ``raypipe`` itself read it without a metrics
agent) and, when exporting, hands them to ``ray.util.metrics``, which Ray's metrics agent on
each node serves to Prometheus.  Ray prefixes the names with ``ray_``; a counter is exported
as ``ray_<name>`` (names here end in ``_total``), a histogram as ``ray_<name>_bucket``,
``_sum`` and ``_count``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric."""

    name: str
    kind: Kind
    help: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "histogram" and not self.buckets:
            raise ValueError(f"metric {self.name}: a histogram needs buckets")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"metric {self.name}: a counter's name ends in _total")


#: Buckets for durations in seconds (a second to a day).
SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class Registry:
    """Records the metrics of ``specs``: in memory, and through ``ray.util.metrics`` when
    ``export`` (the objects are made on first use, in the process that records)."""

    def __init__(self, specs: Iterable[MetricSpec], export: bool = True) -> None:
        self.specs = {s.name: s for s in specs}
        self.export = export
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], Any]] = {name: {} for name in self.specs}
        self._ray: dict[str, Any] = {}

    def _key(self, spec: MetricSpec, tags: Mapping[str, Any]) -> tuple[str, ...]:
        if set(tags) != set(spec.tags):
            raise ValueError(f"metric {spec.name}: tags {sorted(tags)}; expected {sorted(spec.tags)}")
        return tuple(str(tags[t]) for t in spec.tags)

    def _spec(self, name: str, kind: Kind) -> MetricSpec:
        spec = self.specs.get(name)
        if spec is None or spec.kind != kind:
            raise ValueError(f"no {kind} {name!r} is declared")
        return spec

    def _exported(self, spec: MetricSpec) -> Any:
        if not self.export:
            return None
        found = self._ray.get(spec.name)
        if found is None:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():  # not in a Ray process (a unit test): kept here only
                return None

            if spec.kind == "counter":
                found = metrics.Counter(spec.name, spec.help, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                found = metrics.Gauge(spec.name, spec.help, tag_keys=spec.tags)
            else:
                found = metrics.Histogram(spec.name, spec.help, boundaries=list(spec.buckets), tag_keys=spec.tags)
            self._ray[spec.name] = found
        return found

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        spec = self._spec(name, "counter")
        key = self._key(spec, tags)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value
            exported = self._exported(spec)
        if exported is not None and value:
            exported.inc(value, tags=dict(zip(spec.tags, key, strict=True)))

    def set(self, name: str, value: float, **tags: Any) -> None:
        spec = self._spec(name, "gauge")
        key = self._key(spec, tags)
        with self._lock:
            self._values[name][key] = float(value)
            exported = self._exported(spec)
        if exported is not None:
            exported.set(float(value), tags=dict(zip(spec.tags, key, strict=True)))

    def observe(self, name: str, value: float, **tags: Any) -> None:
        spec = self._spec(name, "histogram")
        key = self._key(spec, tags)
        with self._lock:
            h = self._values[name].setdefault(key, {"count": 0, "sum": 0.0, "buckets": [0] * (len(spec.buckets) + 1)})
            h["count"] += 1
            h["sum"] += value
            h["buckets"][sum(1 for b in spec.buckets if value > b)] += 1
            exported = self._exported(spec)
        if exported is not None:
            exported.observe(value, tags=dict(zip(spec.tags, key, strict=True)))

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every series recorded so far: name -> ``[{"tags": {...}, "value": x}]`` (counters,
        gauges) or ``[{"tags", "count", "sum", "buckets": {upper bound: count}}]`` (histograms)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for name, series in self._values.items():
                spec = self.specs[name]
                rows = []
                for key, v in series.items():
                    tags = dict(zip(spec.tags, key, strict=True))
                    if spec.kind == "histogram":
                        bounds = [str(b) for b in spec.buckets] + ["+Inf"]
                        rows.append(
                            {
                                "tags": tags,
                                "count": v["count"],
                                "sum": v["sum"],
                                "buckets": dict(zip(bounds, v["buckets"], strict=True)),
                            }
                        )
                    else:
                        rows.append({"tags": tags, "value": v})
                out[name] = rows
        return out
