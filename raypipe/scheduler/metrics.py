"""Scheduling metrics and their lower bounds, from per-job records (pure: no Ray, no clock).

The simulator and the live replay both produce a :class:`ReplayResult`: one
:class:`JobRecord` per admitted job (submit, each interval it held its grant,
end, preemptions) and the policy's decision latencies.  Everything here is
computed from those records alone, so simulated and live runs are measured by
the same code.

Definitions (``G`` = total GPUs of the cluster, ``r_j`` submit, ``d_j`` the
trace duration, ``g_j`` GPUs, ``C_j`` end of job ``j``; finished jobs only):

* JCT ``= C_j - r_j``; queueing delay ``= first start - r_j``; ``wait`` = JCT
  minus the time it held a grant.
* makespan ``= max C_j - min r_j``.
* utilization ``= sum_j g_j x (time holding its grant) / (G x makespan)``.
* fragmentation: GPU-seconds idle while some waiting job's GPU request was
  free in aggregate (``min waiting g_j <= idle GPUs``), whatever the nodes.
* unallocated GPU share while jobs wait: idle GPU-seconds over ``G`` x the time
  some job waits (the cluster is "full" for the waiting jobs, yet this share of
  its GPUs holds nothing: the measure of Weng et al., ATC'23, in a replay with
  departures); jobs waited share: the finished jobs whose first start came
  after their submit.
* finish-time fairness (Themis): ``rho_j = JCT_j / T_fair_j`` with
  ``T_fair_j = d_j x max(1, g_j N_j / G)``, where ``N_j`` is the time-average
  number of jobs in the system (waiting or running, ``j`` included) during
  ``[r_j, C_j]``: ``j``'s run time on a dedicated ``1/N_j`` share of the
  cluster, assuming linear scaling.  ``ftf_worst = max rho_j``; ``rho <= 1``
  means the job did at least as well as with its fair share.
* lower bounds: ``avg JCT >= max(mean d_j, (SRPT_sum - sum r_j) / n)`` where
  ``SRPT_sum`` is the optimal sum of completion times on one preemptive
  machine ``G`` times as fast, jobs having work ``g_j d_j`` (any schedule on
  the cluster, gangs and all, processes at most ``G`` GPU-seconds per second,
  so its completion times can be matched on that machine; SRPT is optimal
  there).  JCT quantiles ``>=`` the same quantiles of ``d_j`` (every
  ``JCT_j >= d_j``).  ``makespan >= max(max_j (r_j + d_j), max_k (r_k +
  W(>= r_k) / G)) - min r_j`` with ``W(>= t)`` the work arriving at or after
  ``t``.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What happened to one admitted job.

    ``duration_s`` is the trace's run time at full speed (used by the bounds);
    ``runs`` the ``(start, end)`` intervals it held its grant (one per start;
    the last ends at ``end_s`` for a finished job); ``end_s`` is ``None`` when
    the job never finished.
    """

    job_id: str
    submit_s: float
    duration_s: float
    gpus: float
    first_start_s: float | None
    end_s: float | None
    runs: tuple[tuple[float, float], ...] = ()
    preemptions: int = 0
    team: str = "default"

    @property
    def finished(self) -> bool:
        return self.end_s is not None

    @property
    def jct_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.submit_s

    @property
    def queue_s(self) -> float | None:
        """Delay until the first start."""
        return None if self.first_start_s is None else self.first_start_s - self.submit_s

    @property
    def run_s(self) -> float:
        """Time holding a grant (all runs)."""
        return math.fsum(e - s for s, e in self.runs)

    @property
    def attained_gpu_s(self) -> float:
        """GPU-seconds held: ``gpus x run_s``."""
        return self.gpus * self.run_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "submit_s": self.submit_s,
            "duration_s": self.duration_s,
            "gpus": self.gpus,
            "first_start_s": self.first_start_s,
            "end_s": self.end_s,
            "runs": [list(r) for r in self.runs],
            "preemptions": self.preemptions,
            "team": self.team,
            "jct_s": self.jct_s,
            "queue_s": self.queue_s,
            "attained_gpu_s": self.attained_gpu_s,
        }


@dataclass(frozen=True)
class ReplayResult:
    """One policy replayed over one trace, simulated (``mode="sim"``) or live (``mode="ray"``).

    ``rejected`` lists ``(job_id, reason)`` of jobs that can never fit the
    cluster (not replayed); ``unfinished`` the admitted jobs that never
    finished, with the last reason they waited.
    """

    policy: str
    mode: str
    records: tuple[JobRecord, ...]
    total_gpus: float
    decision_latencies_s: tuple[float, ...] = ()
    decisions: int = 0
    rejected: tuple[tuple[str, str], ...] = ()
    unfinished: tuple[tuple[str, str], ...] = ()
    wall_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def timeline(self) -> Timeline:
        """GPUs in use and jobs waiting over time (finished jobs), see :func:`timeline`."""
        return timeline([r for r in self.records if r.end_s is not None], self.total_gpus)


# ----------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated ``q``-quantile (``0 <= q <= 1``) of ``values``; None when empty.

    Monotone: if ``x_i >= y_i`` for every ``i``, every quantile of ``x`` is ``>=``
    the same quantile of ``y``.
    """
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac if frac else xs[lo]


def srpt_completion_sum(releases: Sequence[float], works: Sequence[float]) -> float:
    """Sum of completion times of SRPT on one preemptive unit-speed machine (optimal for ``1|r_j,pmtn|sum C_j``).

    ``works`` are processing times; jobs are released at ``releases``.
    """
    order = sorted(range(len(releases)), key=lambda i: releases[i])
    heap: list[float] = []  # remaining work of released, unfinished jobs
    t = 0.0
    total = 0.0
    i = 0
    n = len(order)
    while i < n or heap:
        if not heap:
            t = max(t, releases[order[i]])
        while i < n and releases[order[i]] <= t:
            heapq.heappush(heap, works[order[i]])
            i += 1
        rem = heapq.heappop(heap)
        next_release = releases[order[i]] if i < n else math.inf
        if t + rem <= next_release:
            t += rem
            total += t
        else:
            heapq.heappush(heap, rem - (next_release - t))
            t = next_release
    return total


@dataclass(frozen=True)
class Bounds:
    """Lower bounds on the metrics of any schedule of these jobs on ``total_gpus`` GPUs."""

    avg_jct_s: float
    avg_jct_duration_s: float
    avg_jct_srpt_s: float
    p50_jct_s: float
    p95_jct_s: float
    p99_jct_s: float
    makespan_s: float


def lower_bounds(
    submits: Sequence[float], durations: Sequence[float], gpus: Sequence[float], total_gpus: float
) -> Bounds:
    """Lower bounds for jobs ``(submit, duration, gpus)`` on ``total_gpus`` GPUs (see the module doc)."""
    n = len(submits)
    if n == 0:
        return Bounds(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if total_gpus <= 0:
        raise ValueError(f"total_gpus must be > 0, got {total_gpus}")
    mean_d = math.fsum(durations) / n
    works = [g * d / total_gpus for g, d in zip(gpus, durations, strict=True)]
    srpt = (srpt_completion_sum(submits, works) - math.fsum(submits)) / n
    r0 = min(submits)
    ms = max(r + d for r, d in zip(submits, durations, strict=True))
    # max over arrival times t of t + W(>= t) / G: walk arrivals from the last one back.
    order = sorted(range(n), key=lambda i: submits[i])
    suffix = 0.0
    k = n - 1
    while k >= 0:
        t = submits[order[k]]
        while k >= 0 and submits[order[k]] == t:
            suffix += works[order[k]]
            k -= 1
        ms = max(ms, t + suffix)
    return Bounds(
        avg_jct_s=max(mean_d, srpt),
        avg_jct_duration_s=mean_d,
        avg_jct_srpt_s=srpt,
        p50_jct_s=percentile(durations, 0.50) or 0.0,
        p95_jct_s=percentile(durations, 0.95) or 0.0,
        p99_jct_s=percentile(durations, 0.99) or 0.0,
        makespan_s=ms - r0,
    )


def _step_integral(times: Sequence[float], values: Sequence[float]) -> list[float]:
    """Prefix integrals of a right-continuous step function at its change ``times``."""
    out = [0.0]
    for k in range(1, len(times)):
        out.append(out[-1] + values[k - 1] * (times[k] - times[k - 1]))
    return out


def _in_system(records: Sequence[JobRecord]) -> tuple[list[float], list[float]]:
    """Jobs in the system (submitted, not finished) as a step function: (change times, count after)."""
    deltas: dict[float, int] = {}
    for r in records:
        if r.end_s is None:
            continue
        deltas[r.submit_s] = deltas.get(r.submit_s, 0) + 1
        deltas[r.end_s] = deltas.get(r.end_s, 0) - 1
    times = sorted(deltas)
    vals: list[float] = []
    acc = 0
    for t in times:
        acc += deltas[t]
        vals.append(float(acc))
    return times, vals


def finish_time_fairness(records: Sequence[JobRecord], total_gpus: float) -> list[float]:
    """``rho_j`` of each finished job, in record order (see the module doc)."""
    done = [r for r in records if r.end_s is not None]
    if not done:
        return []
    times, vals = _in_system(done)
    integ = _step_integral(times, vals)

    def integral_to(t: float) -> float:
        k = bisect.bisect_right(times, t) - 1
        if k < 0:
            return 0.0
        return integ[k] + vals[k] * (t - times[k])

    out = []
    for r in done:
        jct = r.end_s - r.submit_s  # type: ignore[operator]
        if jct <= _EPS:
            out.append(1.0)
            continue
        n_avg = max(1.0, (integral_to(r.end_s) - integral_to(r.submit_s)) / jct)  # type: ignore[arg-type]
        fair = r.duration_s * max(1.0, r.gpus * n_avg / total_gpus)
        out.append(jct / fair if fair > _EPS else 1.0)
    return out


@dataclass(frozen=True)
class Timeline:
    """Step functions over time: GPUs in use and jobs waiting, plus fragmentation."""

    times: tuple[float, ...]
    used_gpus: tuple[float, ...]
    waiting: tuple[int, ...]
    fragmentation_gpu_s: float
    busy_gpu_s: float
    #: Time some job waited, and the GPU-seconds idle meanwhile.
    waiting_s: float = 0.0
    idle_while_waiting_gpu_s: float = 0.0

    def downsample(self, points: int = 1500) -> tuple[list[float], list[float], list[float]]:
        """Time-averaged (times, used GPUs, waiting jobs) on at most ``points`` buckets, for plots."""
        if len(self.times) < 2:
            return list(self.times), list(self.used_gpus), [float(w) for w in self.waiting]
        t0, t1 = self.times[0], self.times[-1]
        width = (t1 - t0) / points or 1.0
        ts, us, ws = [], [], []
        k = 0
        n = len(self.times)
        for b in range(points):
            lo, hi = t0 + b * width, t0 + (b + 1) * width
            u_acc = w_acc = 0.0
            while k + 1 < n and self.times[k + 1] <= lo:
                k += 1
            j = k
            while j < n and self.times[j] < hi:
                seg_lo = max(lo, self.times[j])
                seg_hi = min(hi, self.times[j + 1]) if j + 1 < n else hi
                if seg_hi > seg_lo:
                    u_acc += self.used_gpus[j] * (seg_hi - seg_lo)
                    w_acc += self.waiting[j] * (seg_hi - seg_lo)
                j += 1
            ts.append(lo)
            us.append(u_acc / width)
            ws.append(w_acc / width)
        return ts, us, ws


def timeline(records: Sequence[JobRecord], total_gpus: float) -> Timeline:
    """GPUs in use and jobs waiting over time, and fragmentation (see the module doc).

    A job waits from its submit to its end whenever it holds no grant.
    """
    # Events: (time, order, kind, job index).  At equal times, ends/stops before starts.
    events: list[tuple[float, int, int]] = []
    for i, r in enumerate(records):
        if r.end_s is not None and r.end_s <= r.submit_s:
            continue  # never in the system for any length of time
        events.append((r.submit_s, 2, i))  # becomes waiting
        for s, e in r.runs:
            if e > s:
                events.append((s, 3, i))  # starts running (stops waiting)
                events.append((e, 0, i))  # stops running (waits again unless finished)
        if r.end_s is not None:
            events.append((r.end_s, 1, i))  # leaves the system
    events.sort()
    used = 0.0
    waiting_gpus: list[tuple[float, int]] = []  # heap of (gpus, job) of waiting jobs, lazily cleaned
    is_waiting: dict[int, bool] = {}
    n_wait = 0
    times: list[float] = []
    used_s: list[float] = []
    wait_s: list[int] = []
    frag = 0.0
    busy = 0.0
    waiting_s = idle_waiting = 0.0
    prev_t: float | None = None
    k = 0
    while k < len(events):
        t = events[k][0]
        if prev_t is not None and t > prev_t:
            dt = t - prev_t
            busy += used * dt
            idle = total_gpus - used
            if n_wait:
                waiting_s += dt
                idle_waiting += max(0.0, idle) * dt
            while waiting_gpus and not is_waiting.get(waiting_gpus[0][1], False):
                heapq.heappop(waiting_gpus)
            if n_wait and idle > _EPS and waiting_gpus and waiting_gpus[0][0] <= idle + _EPS:
                frag += idle * dt
        while k < len(events) and events[k][0] == t:
            _, kind, i = events[k]
            r = records[i]
            if kind == 0:  # a run stopped
                used -= r.gpus
                if r.end_s is None or r.end_s > t:  # preempted, not finishing now: waits again
                    is_waiting[i] = True
                    n_wait += 1
                    heapq.heappush(waiting_gpus, (r.gpus, i))
            elif kind == 1:  # finished
                if is_waiting.get(i):
                    is_waiting[i] = False
                    n_wait -= 1
            elif kind == 2:  # submitted
                is_waiting[i] = True
                n_wait += 1
                heapq.heappush(waiting_gpus, (r.gpus, i))
            else:  # started
                used += r.gpus
                if is_waiting.get(i):
                    is_waiting[i] = False
                    n_wait -= 1
            k += 1
        used = max(0.0, used)
        if times and times[-1] == t:
            used_s[-1], wait_s[-1] = used, n_wait
        else:
            times.append(t)
            used_s.append(used)
            wait_s.append(n_wait)
        prev_t = t
    return Timeline(tuple(times), tuple(used_s), tuple(wait_s), frag, busy, waiting_s, idle_waiting)


# ----------------------------------------------------------------------------- the report

#: Keys of :func:`summarize`'s dict, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "jobs",
    "finished",
    "rejected",
    "unfinished",
    "avg_jct_s",
    "p50_jct_s",
    "p95_jct_s",
    "p99_jct_s",
    "avg_queue_s",
    "avg_wait_s",
    "makespan_s",
    "utilization",
    "fragmentation_gpu_s",
    "unallocated_share_waiting",
    "jobs_waited_share",
    "preemptions",
    "preemptions_per_job",
    "ftf_worst",
    "ftf_mean",
    "jct_lower_bound_s",
    "jct_lower_bound_duration_s",
    "jct_lower_bound_srpt_s",
    "makespan_lower_bound_s",
    "avg_jct_ratio_to_bound",
    "p50_jct_ratio_to_bound",
    "p95_jct_ratio_to_bound",
    "p99_jct_ratio_to_bound",
    "makespan_ratio_to_bound",
    "decisions",
    "decision_latency_p50_ms",
    "decision_latency_p99_ms",
    "wall_s",
)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= _EPS:
        return None
    return a / b


def summarize(result: ReplayResult) -> dict[str, Any]:
    """Every metric of one replay, with its lower bound and ratio, as a JSON-ready dict.

    Metrics cover finished jobs; ``unfinished`` and ``rejected`` count the others.
    """
    recs = result.records
    done = [r for r in recs if r.end_s is not None]
    G = result.total_gpus
    jcts = [r.end_s - r.submit_s for r in done]  # type: ignore[operator]
    n = len(done)
    out: dict[str, Any] = {
        "mode": result.mode,
        "jobs": len(recs),
        "finished": n,
        "rejected": len(result.rejected),
        "unfinished": len(result.unfinished),
    }
    if n:
        bounds = lower_bounds([r.submit_s for r in done], [r.duration_s for r in done], [r.gpus for r in done], G)
        makespan = max(r.end_s for r in done) - min(r.submit_s for r in done)  # type: ignore[type-var,operator]
        tl = timeline(done, G)
        ftf = finish_time_fairness(done, G)
        avg_jct = math.fsum(jcts) / n
        p50, p95, p99 = (percentile(jcts, q) for q in (0.5, 0.95, 0.99))
        preempt = sum(r.preemptions for r in done)
        out.update(
            avg_jct_s=avg_jct,
            p50_jct_s=p50,
            p95_jct_s=p95,
            p99_jct_s=p99,
            avg_queue_s=math.fsum(r.queue_s or 0.0 for r in done) / n,
            avg_wait_s=math.fsum(max(0.0, j - r.run_s) for j, r in zip(jcts, done, strict=True)) / n,
            makespan_s=makespan,
            utilization=_ratio(tl.busy_gpu_s, G * makespan),
            fragmentation_gpu_s=tl.fragmentation_gpu_s,
            unallocated_share_waiting=_ratio(tl.idle_while_waiting_gpu_s, G * tl.waiting_s),
            jobs_waited_share=sum(1 for r in done if (r.queue_s or 0.0) > _EPS) / n,
            preemptions=preempt,
            preemptions_per_job=preempt / n,
            ftf_worst=max(ftf),
            ftf_mean=math.fsum(ftf) / n,
            jct_lower_bound_s=bounds.avg_jct_s,
            jct_lower_bound_duration_s=bounds.avg_jct_duration_s,
            jct_lower_bound_srpt_s=bounds.avg_jct_srpt_s,
            makespan_lower_bound_s=bounds.makespan_s,
            avg_jct_ratio_to_bound=_ratio(avg_jct, bounds.avg_jct_s),
            p50_jct_ratio_to_bound=_ratio(p50, bounds.p50_jct_s),
            p95_jct_ratio_to_bound=_ratio(p95, bounds.p95_jct_s),
            p99_jct_ratio_to_bound=_ratio(p99, bounds.p99_jct_s),
            makespan_ratio_to_bound=_ratio(makespan, bounds.makespan_s),
        )
    else:
        out.update({k: None for k in METRIC_KEYS if k not in out})
        out["preemptions"] = 0
    lat = [x * 1e3 for x in result.decision_latencies_s]
    out["decisions"] = result.decisions
    out["decision_latency_p50_ms"] = percentile(lat, 0.5)
    out["decision_latency_p99_ms"] = percentile(lat, 0.99)
    out["wall_s"] = result.wall_s
    return {k: out.get(k) for k in ("mode", *METRIC_KEYS)}


def relative_error(sim: float | None, live: float | None) -> float | None:
    """``(sim - live) / live``; None when undefined."""
    if sim is None or live is None or abs(live) <= _EPS:
        return None
    return (sim - live) / live


def records_from_dicts(rows: Iterable[Mapping[str, Any]]) -> tuple[JobRecord, ...]:
    """Rebuild records from :meth:`JobRecord.to_dict` output."""
    return tuple(
        JobRecord(
            job_id=str(d["job_id"]),
            submit_s=float(d["submit_s"]),
            duration_s=float(d["duration_s"]),
            gpus=float(d["gpus"]),
            first_start_s=d.get("first_start_s"),
            end_s=d.get("end_s"),
            runs=tuple((float(a), float(b)) for a, b in d.get("runs", ())),
            preemptions=int(d.get("preemptions", 0)),
            team=str(d.get("team", "default")),
        )
        for d in rows
    )
