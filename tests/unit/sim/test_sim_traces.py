"""Trace loaders: Philly-style CSV, Alibaba v2023, the synthetic generator; bad rows with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe.exceptions import RaypipeError
from raypipe.scheduler.traces import (
    TraceError,
    load_alibaba,
    load_philly,
    load_trace,
    synthetic_philly,
    write_philly_csv,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "traces"
PHILLY = DATA / "philly-sample.csv"
ALIBABA = DATA / "alibaba-sample"
FULL_ALIBABA = Path(__file__).resolve().parents[4] / "shared" / "data" / "traces" / "alibaba-gpu-v2023"


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- Philly


def test_philly_sample_loads_sorted_and_shifted_to_zero() -> None:
    tr = load_philly(PHILLY)
    assert len(tr) == 200 and tr.meta.rows_read == 200 and tr.meta.rows_skipped == 0
    assert tr.jobs[0].submit_s == 0.0
    assert all(a.submit_s <= b.submit_s for a, b in zip(tr.jobs, tr.jobs[1:], strict=False))
    assert {j.gpus for j in tr.jobs} <= {1.0, 2.0, 4.0, 8.0}
    assert {j.team for j in tr.jobs} <= {"vc0", "vc1", "vc2", "vc3"}
    assert not any(j.single_node for j in tr.jobs)


def test_philly_columns_timestamp_iso_dates_optional_fields(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "timestamp,duration,num_gpus,cluster,priority,gpu_type,num_cpus,memory_mb\n"
        "2017-10-03 05:00:10,60,2,vcA,1,V100|P100,4,1000\n"
        "2017-10-03T05:00:00Z,30,0.5,,,,,\n",
    )
    tr = load_philly(p)
    a, b = tr.jobs  # sorted by time: the second row came first
    assert (a.submit_s, a.duration_s, a.gpus, a.team, a.single_node) == (0.0, 30.0, 0.5, "default", True)
    assert (b.submit_s, b.gpus, b.team, b.priority, b.gpu_types, b.cpus, b.memory_mb) == (
        10.0,
        2.0,
        "vcA",
        1,
        ("P100", "V100"),
        4.0,
        1000.0,
    )
    assert a.job_id == "job-3" and b.job_id == "job-2"  # default ids name the line


def test_philly_bad_rows_fail_with_file_line_reason_and_count(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "job_id,submit_time,duration,num_gpus\n"
        "ok1,0,10,1\n"
        "neg,1,-5,1\n"  # line 3: negative duration
        "zero,2,10,0\n"  # line 4: zero GPUs
        "missing,3,,1\n"  # line 5: missing field
        "nan,4,abc,1\n"  # line 6: unparsable
        "ok1,5,10,1\n"  # line 7: duplicate id
        "short,6\n"  # line 8: wrong number of fields
        "inf,7,inf,1\n",  # line 9: not finite
    )
    with pytest.raises(TraceError) as e:
        load_philly(p)
    msg = str(e.value)
    assert isinstance(e.value, RaypipeError)
    assert "7 bad row(s)" in msg and "... and 2 more" in msg
    assert f"{p}:3: negative duration -5" in msg
    assert f"{p}:4: num_gpus must be > 0" in msg
    assert f"{p}:5: missing duration" in msg
    assert f"{p}:6: duration: not a number: 'abc'" in msg
    assert f"{p}:7: duplicate job id 'ok1' (first at line 2)" in msg
    assert "--skip-bad-rows" in msg

    tr = load_philly(p, skip_bad_rows=True)
    assert [j.job_id for j in tr.jobs] == ["ok1"]
    assert tr.meta.rows_read == 8 and tr.meta.rows_skipped == 7
    assert [b.line for b in tr.meta.bad_rows] == [3, 4, 5, 6, 7]


def test_philly_missing_columns_file_and_options(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"missing column\(s\) timestamp or submit_time, num_gpus"):
        load_philly(write(tmp_path, "duration,gpus\n1,1\n"))
    with pytest.raises(TraceError, match="no such trace file"):
        load_philly(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="empty file"):
        load_philly(write(tmp_path, "", "empty.csv"))
    with pytest.raises(TraceError, match="max_jobs"):
        load_philly(PHILLY, max_jobs=0)
    with pytest.raises(TraceError, match="bogus: Extra inputs are not permitted"):
        load_philly(PHILLY, bogus=1)
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(PHILLY, "yarn")


def test_window_jobs_sampling_and_duration_cap() -> None:
    full = load_philly(PHILLY)
    w = load_philly(PHILLY, window_h=24)
    assert 0 < len(w) < len(full) and all(j.submit_s < 24 * 3600 for j in w.jobs)
    assert w.meta.rows_filtered["outside_window"] == len(full) - len(w)
    first = load_philly(PHILLY, max_jobs=10)
    assert [j.job_id for j in first.jobs] == [j.job_id for j in full.jobs[:10]]
    r1 = load_philly(PHILLY, max_jobs=10, sample="random", seed=3)
    r2 = load_philly(PHILLY, max_jobs=10, sample="random", seed=3)
    r3 = load_philly(PHILLY, max_jobs=10, sample="random", seed=4)
    assert r1.jobs == r2.jobs and r1.jobs != r3.jobs and r1.jobs[0].submit_s == 0.0
    capped = load_philly(PHILLY, max_duration_s=3600)
    assert max(j.duration_s for j in capped.jobs) == 3600
    assert capped.meta.durations_capped == sum(1 for j in full.jobs if j.duration_s > 3600)


def test_write_philly_round_trips(tmp_path: Path) -> None:
    tr = synthetic_philly(jobs=50, total_gpus=16, seed=2)
    write_philly_csv(tr, tmp_path / "x.csv")
    back = load_philly(tmp_path / "x.csv")
    assert [(j.job_id, j.gpus, j.team) for j in back.jobs] == [(j.job_id, j.gpus, j.team) for j in tr.jobs]
    assert all(abs(a.duration_s - b.duration_s) < 1e-3 for a, b in zip(back.jobs, tr.jobs, strict=True))


# ----------------------------------------------------------------------------- Alibaba


def test_alibaba_sample_fractional_gpus_filters_and_priorities() -> None:
    tr = load_alibaba(ALIBABA)
    m = tr.meta
    assert m.rows_read == 200 and m.rows_skipped == 0
    assert m.rows_filtered["cpu_only"] == 35
    assert m.rows_filtered["never_scheduled"] > 0
    assert len(tr) == 200 - 35 - m.rows_filtered["never_scheduled"]
    assert all(j.single_node and j.gpus > 0 for j in tr.jobs)
    assert any(0 < j.gpus < 1 for j in tr.jobs) and any(j.gpus == 8 for j in tr.jobs)
    assert {j.team for j in tr.jobs} <= {"LS", "BE", "Burstable", "Guaranteed"}
    assert all(j.priority == (2 if j.team in ("LS", "Guaranteed") else 1 if j.team == "Burstable" else 0) for j in tr.jobs)
    pod = next(j for j in tr.jobs if j.job_id == "openb-pod-2250")
    assert (pod.gpus, pod.cpus, pod.memory_mb, pod.duration_s) == (8.0, 64.2, 263168.0, 525.0)
    with_cpu = load_alibaba(ALIBABA, include_cpu_only=True)
    cpu_only = [j for j in with_cpu.jobs if j.gpus == 0]
    assert 0 < len(cpu_only) <= 35 and len(with_cpu) == len(tr) + len(cpu_only)  # scheduled CPU-only pods come back
    # a file path works as well as its directory
    assert load_alibaba(ALIBABA / "openb_pod_list_default.csv").jobs == tr.jobs


def test_alibaba_bad_rows_and_gpu_spec(tmp_path: Path) -> None:
    header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
    p = write(
        tmp_path,
        header
        + "a,1000,100,1,500,V100M16|V100M32,LS,Running,10,20,10\n"
        + "b,1000,100,1,0,,BE,Running,10,20,10\n"  # line 3: one-GPU pod with no gpu_milli
        + "c,1000,100,2,1000,,BE,Running,10,5,10\n"  # line 4: deleted before it started
        + "d,x,100,1,1000,,BE,Running,10,20,10\n"  # line 5: unparsable
        + "e,1000,100,1,1000,,BE,Running,10,20,9\n",  # line 6: scheduled before created
        name="pods.csv",
    )
    with pytest.raises(TraceError) as e:
        load_alibaba(p)
    msg = str(e.value)
    assert "4 bad row(s)" in msg
    for line in (3, 4, 5, 6):
        assert f"{p}:{line}:" in msg
    assert "negative duration" in msg and "gpu_milli" in msg
    tr = load_alibaba(p, skip_bad_rows=True)
    (a,) = tr.jobs
    assert a.gpus == 0.5 and a.gpu_types == ("V100M16", "V100M32") and tr.meta.rows_skipped == 4


def test_alibaba_file_without_times_is_refused_clearly(tmp_path: Path) -> None:
    p = write(tmp_path, "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nopenb-pod-0000,12000,16384,1,1000\n")
    with pytest.raises(TraceError, match=r"missing column\(s\) creation_time, deletion_time"):
        load_alibaba(p)


@pytest.mark.skipif(not FULL_ALIBABA.is_dir(), reason="the full Alibaba trace (shared/data/traces) is not beside the repo")
def test_full_alibaba_trace_loads_without_bad_rows() -> None:
    tr = load_alibaba(FULL_ALIBABA)
    assert len(tr) > 5000 and tr.meta.rows_skipped == 0 and tr.meta.rows_read == 8152


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_philly_like_and_hits_its_load() -> None:
    a = synthetic_philly(jobs=3000, total_gpus=128, load=0.8, seed=11)
    b = synthetic_philly(jobs=3000, total_gpus=128, load=0.8, seed=11)
    c = synthetic_philly(jobs=3000, total_gpus=128, load=0.8, seed=12)
    assert a.jobs == b.jobs and a.jobs != c.jobs
    assert {j.gpus for j in a.jobs} == {1.0, 2.0, 4.0, 8.0}
    ones = sum(1 for j in a.jobs if j.gpus == 1) / len(a)
    assert 0.65 < ones < 0.75
    durs = sorted(j.duration_s for j in a.jobs)
    assert durs[0] >= 60 * 10**1.5 - 1 and durs[-1] <= 60 * 10**4 + 1
    assert durs[len(durs) // 2] < sum(durs) / len(durs) / 2  # heavy tail: median far below the mean
    assert a.offered_load(128) == pytest.approx(0.8, rel=0.1)
    capped = synthetic_philly(jobs=100, total_gpus=8, max_duration_s=600, seed=1)
    assert max(j.duration_s for j in capped.jobs) == 600 and capped.meta.durations_capped > 0


def test_with_load_rescales_arrivals_only() -> None:
    tr = load_philly(PHILLY)
    hi = tr.with_load(2.0, 32)
    assert hi.offered_load(32) == pytest.approx(2.0)
    assert [j.duration_s for j in hi.jobs] == [j.duration_s for j in tr.jobs]
    assert hi.meta.arrival_scale == pytest.approx(tr.offered_load(32) / 2.0)
    with pytest.raises(TraceError, match="load must be > 0"):
        tr.with_load(0, 32)
    with pytest.raises(TraceError):
        synthetic_philly(jobs=10, total_gpus=8, load=-1)
