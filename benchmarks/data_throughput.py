"""Data throughput: read -> numeric features -> write parquet, and read CSV -> validate ->
versioned dataset on a mixed-type table, each with raypipe and two baselines.

**numeric** (``--table numeric``): about ``--gb`` GB of seeded parquet (``--files`` files; ``id``,
12 float64 features, an int64 ``bucket`` and a low-cardinality string ``cat``) goes three ways:

1. **raypipe**: ``data.read`` -> ``data.transform`` (``benchmarks._data_features:features``)
   on a local Ray with ``--num-cpus`` CPUs, both stages ``resources: {cpu: N}``, no cache.
   Ray is started (and warmed up by a run on a tiny dataset) before the timed run.
2. **pandas**: the same function, one process, file by file: ``pq.read_table().to_pandas()``,
   ``features``, ``to_parquet``.
3. **pyarrow I/O**: each file read and written back with pyarrow, no transform: the I/O and
   codec limit of the machine.

**mixed** (``--table mixed``): about ``--gb`` GB of seeded CSV (``--files`` files; ids, floats with
nulls, two text categories, an ISO date column with malformed values, a bool, free text, a label;
see ``benchmarks/_data_mixed.py``) goes three ways:

1. **raypipe**: ``data.read`` (CSV) -> ``data.validate`` (``on_error: quarantine``: unique ids, a
   minimum, a date range, allowed values; the date column is parsed from text);
2. **pandas**: ``pd.read_csv`` with dtypes, the same rules, ``to_parquet`` of the good rows and of
   the quarantined ones, one process;
3. **pyarrow I/O**: ``pyarrow.csv.read_csv`` + ``pq.write_table`` of each file, nothing else.

The rows raypipe quarantines must be the rows pandas does: a difference makes the exit status 1.

Run from the repository root::

    .venv/bin/python -m benchmarks.data_throughput --out bench-out/data [--gb 1.0] [--files 16]
        [--table numeric|mixed|both]

Writes ``OUT/results.json``, ``OUT/throughput.png`` (numeric) and ``OUT/throughput_mixed.png``
(mixed); keys are documented in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable (here and in Ray workers)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _data_features as feats
from benchmarks import _data_mixed as mixed
from benchmarks._common import (
    REPO_ROOT,
    bar_chart,
    base_parser,
    goal,
    print_table,
    ratio,
    start_local_ray,
    write_results,
)

FUNCTION = "benchmarks._data_features:features"
FORMATS = ("pandas", "numpy", "pyarrow")
GOAL_VS_PANDAS = 1.5
GOAL_VS_PYARROW_IO = 0.7
STAMP = "_stamp.json"
STAMP_VERSION = 2
MB = 1e6
GOAL_MIXED_VS_PANDAS = 1.5
GOAL_MIXED_VS_PYARROW_IO = 0.8
MIXED_STAMP_VERSION = 1
#: The mixed table's CSV files go in this folder of the input folder (``data.read`` skips
#: folders whose name starts with ``_``, so the numeric read never sees them).
MIXED_SUBDIR = "_mixed"
TABLES = ("numeric", "mixed")


def _progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


class _Bar:
    """A rich progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self._rich: Any = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(
                TextColumn(f"  {label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self._task = self._rich.add_task(label, total=total)
            self._rich.start()

    def advance(self, what: str = "") -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.advance(self._task)
        elif self.done == self.total or self.done % max(1, self.total // 4) == 0:
            _progress(f"{self.label}: {self.done}/{self.total} {what}".rstrip())

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


# ----------------------------------------------------------------------------- input data


def _table(rows: int, start: int, seed: int, index: int) -> Any:
    """``rows`` rows of the benchmark's schema; the same (seed, index) always gives the same rows."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([seed, index])
    cols: dict[str, Any] = {"id": np.arange(start, start + rows, dtype=np.int64)}
    for c in feats.FLOATS:
        if c in feats.MEAN:
            cols[c] = rng.normal(feats.MEAN[c], feats.STD[c], rows)
        elif c in ("f04", "f05"):
            cols[c] = rng.standard_t(3, rows) * 2.0  # heavy tails: what log1p(|x|) is for
        elif c in ("f06", "f07"):
            cols[c] = rng.uniform(-1.0, 1.0, rows)
        else:
            cols[c] = rng.normal(0.0, 2.0, rows)
    cols["bucket"] = rng.integers(0, 100, rows, dtype=np.int64)
    idx = pa.array(rng.integers(0, len(feats.CATEGORIES), rows, dtype=np.int32))
    cols["cat"] = pa.DictionaryArray.from_arrays(idx, pa.array(feats.CATEGORIES)).dictionary_decode()
    return pa.table(cols)


def _parquet_bytes(rows: int, seed: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(_table(rows, 0, seed, 10_000), buf)
    return buf.getvalue().size


def _rows_for(target_bytes: float, seed: int) -> int:
    """Rows of about ``target_bytes`` of parquet: estimated from a small sample, then corrected at
    the estimated size (parquet's dictionary encoding of small files makes a small sample misleading)."""
    n = 100_000
    rows = max(1, round(target_bytes * n / _parquet_bytes(n, seed)))
    return max(1, round(target_bytes * rows / _parquet_bytes(rows, seed)))


def _input_files(data_dir: Path, pattern: str = "part-*.parquet") -> list[Path]:
    return sorted(data_dir.glob(pattern))


def _prepare(
    data_dir: Path,
    params: dict[str, Any],
    suffix: str,
    rows_per_file: Callable[[], int],
    write: Callable[[int, int, Path], None],
    what: str,
) -> dict[str, Any]:
    """Files ``part-NNNN{suffix}`` made by ``write(rows, k, path)`` (or reused when the stamp in
    ``data_dir`` records the same ``params`` and sizes); their description."""
    pattern = f"part-*{suffix}"
    stamp_path = data_dir / STAMP
    if stamp_path.exists():
        try:
            stamp = json.loads(stamp_path.read_text())
        except ValueError:
            stamp = {}
        sizes = {p.name: p.stat().st_size for p in _input_files(data_dir, pattern)}
        if stamp.get("params") == params and sizes == stamp.get("sizes"):
            _progress(f"reusing input in {data_dir} ({stamp['bytes'] / MB:,.0f} MB, {stamp['rows']:,} rows)")
            return stamp
        _progress(f"input in {data_dir} was made with other parameters or changed: generating it again")
    elif _input_files(data_dir, pattern):
        raise SystemExit(
            f"{data_dir} holds {pattern} files that this benchmark did not write; choose another --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)
    for old in _input_files(data_dir, pattern):
        old.unlink()
    files = params["files"]
    rows = rows_per_file()
    bar = _Bar(f"generating {what} in {files} files", files)
    started = time.perf_counter()
    for k in range(files):
        write(rows, k, data_dir / f"part-{k:04d}{suffix}")
        bar.advance()
    bar.close()
    sizes = {p.name: p.stat().st_size for p in _input_files(data_dir, pattern)}
    stamp = {
        "params": params,
        "rows_per_file": rows,
        "rows": rows * files,
        "bytes": sum(sizes.values()),
        "sizes": sizes,
        "generation_s": time.perf_counter() - started,
    }
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
    _progress(f"generated {stamp['bytes'] / MB:,.0f} MB, {stamp['rows']:,} rows in {stamp['generation_s']:.1f}s")
    return stamp


def prepare_input(data_dir: Path, gb: float, files: int, seed: int) -> dict[str, Any]:
    """Generate the numeric input (or reuse it when its stamp matches); its description."""
    import pyarrow.parquet as pq

    params = {"version": STAMP_VERSION, "gb": gb, "files": files, "seed": seed, "columns": feats.COLUMNS}

    def write(rows: int, k: int, path: Path) -> None:
        pq.write_table(_table(rows, k * rows, seed, k), path)

    return _prepare(data_dir, params, ".parquet", lambda: _rows_for(gb * 1e9 / files, seed), write, f"{gb:g} GB")


def prepare_mixed_input(data_dir: Path, gb: float, files: int, seed: int) -> dict[str, Any]:
    """Generate the mixed table's CSV files (or reuse them when their stamp matches)."""
    params = {
        "version": MIXED_STAMP_VERSION,
        "table": "mixed",
        "gb": gb,
        "files": files,
        "seed": seed,
        "columns": mixed.COLUMNS,
    }

    def write(rows: int, k: int, path: Path) -> None:
        mixed.write_csv(mixed.table(rows, k * rows, seed, k), path)

    rows = lambda: mixed.rows_for(gb * 1e9 / files, seed)  # noqa: E731
    return _prepare(data_dir, params, ".csv", rows, write, f"{gb:g} GB of mixed CSV")


# ----------------------------------------------------------------------------- memory


def _psutil() -> Any:
    """psutil, which comes with Ray (``ray/thirdparty_files``, on ``sys.path`` once Ray is imported)."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


class TreeSampler:
    """Peak memory and CPU time of a process and all its descendants, sampled in a background thread.

    ``peak_rss_mb``: the largest sum of RSS over the tree (every ``interval`` s); shared pages
    (Ray's object store, mapped by several workers) count once per process that maps them.
    ``peak_pss_mb``: the same with PSS, which splits shared pages between their processes. PSS
    comes from smaps, which costs about 10 ms per Ray process, so it is read every
    ``pss_every``-th tick only.  The list of processes is refreshed every ``list_every``-th tick.
    ``cpu_s``: user + system CPU seconds the tree used while sampled, without the sampler's own
    (``sampler_cpu_s``).  A process that appears during sampling counts from its start; one
    that exits loses its last ``interval``.
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 10, list_every: int = 5) -> None:
        psutil = _psutil()
        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval, self.pss_every, self.list_every = interval, pss_every, list_every
        self.peak_rss = self.peak_pss = self.start_rss = self.start_pss = 0
        self.samples = 0
        self.sampler_cpu_s = 0.0
        self._procs: dict[int, Any] = {}
        self._listed: list[Any] = []
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _tree(self, refresh: bool = True) -> list[Any]:
        if refresh or not self._listed:
            try:
                found = [self.root, *self.root.children(recursive=True)]
            except self._psutil.Error:
                found = []
            # One Process object per pid: psutil checks that a pid is still the same process.
            self._listed = [self._procs.setdefault(p.pid, p) for p in found]
        return self._listed

    def sample(
        self, pss: bool = False, cpu: bool = False, first: bool = False, refresh: bool = True
    ) -> tuple[int, int]:
        rss = pss_sum = 0
        for p in self._tree(refresh):
            try:
                if pss:
                    info = p.memory_full_info()
                    rss, pss_sum = rss + info.rss, pss_sum + info.pss
                else:
                    rss += p.memory_info().rss
                if cpu:
                    t = p.cpu_times()
                    used = t.user + t.system
                    self._cpu_first.setdefault(p.pid, used if first else 0.0)
                    self._cpu_last[p.pid] = used
            except self._psutil.Error:  # a worker exited between listing and reading
                pass
        return rss, pss_sum

    def _loop(self) -> None:
        started = time.thread_time()
        tick = 1
        while not self._stop.wait(self.interval):
            rss, pss = self.sample(pss=tick % self.pss_every == 0, cpu=True, refresh=tick % self.list_every == 0)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.samples += 1
            tick += 1
        self.sampler_cpu_s += time.thread_time() - started

    def __enter__(self) -> TreeSampler:
        started = time.thread_time()
        rss, pss = self.sample(pss=True, cpu=True, first=True)
        self.start_rss, self.start_pss = rss, pss
        self.peak_rss, self.peak_pss = rss, pss
        self.sampler_cpu_s += time.thread_time() - started
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        started = time.thread_time()
        rss, _ = self.sample(cpu=True)
        self.peak_rss = max(self.peak_rss, rss)
        self.sampler_cpu_s += time.thread_time() - started

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / MB

    @property
    def peak_pss_mb(self) -> float | None:
        return self.peak_pss / MB if self.peak_pss else None

    @property
    def cpu_s(self) -> float:
        used = sum(last - self._cpu_first.get(pid, 0.0) for pid, last in self._cpu_last.items())
        own = self.sampler_cpu_s if self.root.pid == os.getpid() else 0.0
        return used - own


# ----------------------------------------------------------------------------- baselines


def _baseline_worker(kind: str, files: list[str], out_dir: str, queue: Any) -> None:
    """In a fresh process: one baseline over every file; puts its figures on ``queue``."""
    import resource

    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    rows = 0
    bar = _Bar(f"{kind} baseline", len(files))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for f in files:
        dst = os.path.join(out_dir, os.path.basename(f))
        table = pq.read_table(f)
        rows += table.num_rows
        if kind == "pandas":
            feats.features(table.to_pandas()).to_parquet(dst, index=False)
        else:
            pq.write_table(table, dst)
        del table
        bar.advance(os.path.basename(f))
    wall = time.perf_counter() - started
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
    bar.close()
    out_bytes = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux
    queue.put({"wall_s": wall, "cpu_s": cpu, "rows": rows, "output_bytes": out_bytes, "ru_maxrss_mb": maxrss_mb})


def _child_result(proc: Any, queue: Any, what: str) -> Any:
    """What a child process puts on ``queue``; an error (not a hang) if it dies first."""
    import queue as queue_mod

    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{what} failed (exit code {proc.exitcode})") from None


def _mixed_baseline_worker(kind: str, files: list[str], out_dir: str, engine: str, queue: Any) -> None:
    """In a fresh process: one baseline of the mixed table over every file; puts its figures on ``queue``.

    ``pandas``: each file through ``pd.read_csv`` (``engine``, the dtypes of
    ``_data_mixed.PANDAS_DTYPES``) and the row rules; the frames stay in memory until the ids
    of every file have been seen (``unique``); then each file's good rows (``signup`` as the
    parsed dates) and bad rows (as read) go to ``out_dir/data`` and ``out_dir/quarantine`` with
    ``to_parquet``.  ``pyarrow_io``: ``pyarrow.csv.read_csv`` then ``pq.write_table``, per file."""
    import resource

    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    phases = {"read_s": 0.0, "check_s": 0.0, "unique_s": 0.0, "write_s": 0.0}
    extra: dict[str, Any] = {}
    bar = _Bar(f"mixed {kind} baseline", len(files) * (2 if kind == "pandas" else 1))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    rows = 0
    if kind == "pyarrow_io":
        os.makedirs(out_dir, exist_ok=True)
        for f in files:
            t0 = time.perf_counter()
            table = pacsv.read_csv(f)
            t1 = time.perf_counter()
            pq.write_table(table, os.path.join(out_dir, Path(f).stem + ".parquet"))
            phases["read_s"] += t1 - t0
            phases["write_s"] += time.perf_counter() - t1
            rows += table.num_rows
            del table
            bar.advance(os.path.basename(f))
    else:
        import pandas as pd

        good_dir, bad_dir = os.path.join(out_dir, "data"), os.path.join(out_dir, "quarantine")
        os.makedirs(good_dir, exist_ok=True)
        os.makedirs(bad_dir, exist_ok=True)
        counts: dict[str, int] = {}
        held: list[tuple[str, Any, Any, Any]] = []
        for f in files:
            t0 = time.perf_counter()
            df = pd.read_csv(f, dtype=mixed.PANDAS_DTYPES, engine=engine)
            t1 = time.perf_counter()
            parsed, masks = mixed.pandas_rule_masks(df)
            bad = np.logical_or.reduce(list(masks.values()))
            for rule, m in masks.items():
                counts[rule] = counts.get(rule, 0) + int(m.sum())
            held.append((Path(f).stem, df, parsed, bad))
            phases["read_s"] += t1 - t0
            phases["check_s"] += time.perf_counter() - t1
            rows += len(df)
            bar.advance(os.path.basename(f))
        t0 = time.perf_counter()
        dup = mixed.duplicate_mask(np.concatenate([df["id"].to_numpy() for _, df, _, _ in held]))
        counts["id.unique"] = int(dup.sum())
        phases["unique_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        offset = quarantined = 0
        while held:
            stem, df, parsed, bad = held.pop(0)
            bad = bad | dup[offset : offset + len(df)]
            offset += len(df)
            good = df[~bad]
            good["signup"] = parsed.to_numpy()[~bad]
            good.to_parquet(os.path.join(good_dir, stem + ".parquet"), index=False)
            df[bad].to_parquet(os.path.join(bad_dir, stem + ".parquet"), index=False)
            quarantined += int(bad.sum())
            del df, parsed, good
            bar.advance(stem)
        phases["write_s"] = time.perf_counter() - t0
        extra = {
            "rows_good": rows - quarantined,
            "rows_quarantined": quarantined,
            "rule_counts": {k: v for k, v in sorted(counts.items()) if v},
            "engine": engine,
        }
    wall = time.perf_counter() - started
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = end.ru_utime + end.ru_stime - usage.ru_utime - usage.ru_stime
    bar.close()
    out_bytes = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out_dir) for n in names)
    maxrss_mb = end.ru_maxrss * 1024 / MB  # KiB on Linux
    queue.put(
        {
            "wall_s": wall,
            "cpu_s": cpu,
            "rows": rows,
            "output_bytes": out_bytes,
            "ru_maxrss_mb": maxrss_mb,
            **phases,
            **extra,
        }
    )


def run_baseline(
    kind: str, files: list[Path], out_dir: Path, *, target: Callable[..., None] = _baseline_worker, args: tuple = ()
) -> dict[str, Any]:
    """One baseline in a child process (its memory is its own); wall and CPU time are measured inside it."""
    os.sync()  # what earlier steps wrote goes to disk now, not during this measurement
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(kind, [str(f) for f in files], str(out_dir), *args, queue))
    proc.start()
    with TreeSampler(proc.pid, pss_every=1) as mem:  # one small process: PSS is cheap to read
        result = _child_result(proc, queue, f"{kind} baseline")
        proc.join()
    result["peak_rss_mb"] = mem.peak_rss_mb
    result["peak_pss_mb"] = mem.peak_pss_mb
    return result


# ----------------------------------------------------------------------------- raypipe


def _read_then(name: str, storage: Path, num_cpus: int, read: dict[str, Any], kind: str, params: dict[str, Any]) -> Any:
    """``data.read`` (``read``: its params) then one stage of ``kind`` on its data; both ``cpu: N``."""
    import raypipe

    return raypipe.PipelineConfig(
        name=name,
        storage=str(storage),
        ray={"num_cpus": num_cpus},
        stages=[
            raypipe.StageConfig(name="read", kind="data.read", resources={"cpu": num_cpus}, params=read),
            raypipe.StageConfig(
                name="features" if kind == "data.transform" else "validate",
                kind=kind,
                inputs={"data": "read.data"},
                resources={"cpu": num_cpus},
                params=params,
            ),
        ],
    )


def pipeline(name: str, input_dir: Path, storage: Path, batch_format: str, num_cpus: int) -> Any:
    read = {"path": str(input_dir), "format": "parquet"}
    return _read_then(name, storage, num_cpus, read, "data.transform", {"function": FUNCTION, "batch_format": batch_format})


def _timed_run(cfg: Any) -> tuple[float, dict[str, float], Any, TreeSampler]:
    """One uncached ``raypipe.run``: (wall s, {stage: s from its `succeeded` event}, the result,
    the sampler of the process tree: this driver, Ray's own processes and its workers)."""
    import raypipe

    durations: dict[str, float] = {}

    def on_event(ev: Any) -> None:
        if ev.status == "succeeded" and ev.duration_s is not None:
            durations[ev.stage] = ev.duration_s

    os.sync()  # what earlier steps wrote goes to disk now, not during this measurement
    sampler = TreeSampler(os.getpid())
    with sampler:
        started = time.perf_counter()
        result = raypipe.run(cfg, use_cache=False, on_event=on_event)
        wall = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"raypipe run failed: {result.errors}")
    return wall, durations, result, sampler


def run_raypipe(cfg: Any) -> dict[str, Any]:
    """One ``raypipe.run``: wall time, each stage's duration, the output, peak memory and CPU time of
    the process tree (this driver, Ray's own processes and its workers)."""
    wall, durations, result, sampler = _timed_run(cfg)
    out = result.outputs["features"]["data"]
    return {
        "wall_s": wall,
        "read_stage_s": durations.get("read"),
        "transform_stage_s": durations.get("features"),
        "rows": out.schema["num_rows"],
        "output_bytes": out.size,
        "output_files": out.schema.get("files"),
        "intermediate_bytes": result.outputs["read"]["data"].size,
        "intermediate_files": result.outputs["read"]["data"].schema.get("files"),
        "output_uri": out.uri,
        "idle_rss_mb": sampler.start_rss / MB,
        "idle_pss_mb": sampler.start_pss / MB,
        "peak_rss_mb": sampler.peak_rss_mb,
        "peak_pss_mb": sampler.peak_pss_mb,
        "cpu_s": sampler.cpu_s,
        "sampler_cpu_s": sampler.sampler_cpu_s,
    }


def mixed_pipeline(name: str, input_dir: Path, storage: Path, num_cpus: int) -> Any:
    """read (CSV, the two categories dictionary-encoded) -> validate (quarantine), both ``cpu: N``."""
    read = {"path": str(input_dir), "format": "csv", "csv": mixed.csv_options()}
    return _read_then(name, storage, num_cpus, read, "data.validate", mixed.validate_params())


def run_raypipe_mixed(cfg: Any) -> dict[str, Any]:
    """One ``raypipe.run`` of :func:`mixed_pipeline`: times, memory, CPU, and what validate reported."""
    from raypipe.store.artifacts import ArtifactStore

    wall, durations, result, sampler = _timed_run(cfg)
    out = result.outputs["validate"]
    report = ArtifactStore(cfg.storage).get_value(out["report"])
    good, bad, read = out["data"], out["quarantine"], result.outputs["read"]["data"]
    return {
        "wall_s": wall,
        "read_stage_s": durations.get("read"),
        "validate_stage_s": durations.get("validate"),
        "rows": int(report["rows_checked"]),
        "rows_good": int(good.schema["num_rows"]),
        "rows_quarantined": int(bad.schema["num_rows"]),
        "rows_bad_reported": int(report["rows_bad"]),
        "rule_counts": dict(sorted(mixed.rule_counts_of_report(report).items())),
        "converted": report.get("converted"),
        "output_bytes": good.size + bad.size,
        "output_files": (good.schema.get("files") or 0) + (bad.schema.get("files") or 0),
        "intermediate_bytes": read.size,
        "intermediate_files": read.schema.get("files"),
        "data_uri": good.uri,
        "quarantine_uri": bad.uri,
        "idle_rss_mb": sampler.start_rss / MB,
        "idle_pss_mb": sampler.start_pss / MB,
        "peak_rss_mb": sampler.peak_rss_mb,
        "peak_pss_mb": sampler.peak_pss_mb,
        "cpu_s": sampler.cpu_s,
        "sampler_cpu_s": sampler.sampler_cpu_s,
    }


def probe_batch_formats(files: list[Path], repeat: int = 2) -> dict[str, float]:
    """Seconds to run ``features`` over ``files`` in each batch format, with the conversions Ray
    Data's ``map_batches`` makes around it (Arrow block -> batch -> block); reading is not timed.

    Runs in a child process before Ray starts, so that neither Ray's object store and workers nor
    this driver's memory carry anything from it into the measured run."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_probe_worker, args=([str(f) for f in files], repeat, queue))
    proc.start()
    times = _child_result(proc, queue, "batch format probe")
    proc.join()
    for fmt, s in times.items():
        _progress(f"batch format {fmt:8s}: {s:.2f}s for {len(files)} files")
    return times


def _probe_worker(files: list[str], repeat: int, queue: Any) -> None:
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    tables = [pq.read_table(f) for f in files]
    times: dict[str, float] = {}
    for fmt in FORMATS:
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            for table in tables:
                batch = BlockAccessor.for_block(table).to_batch_format(fmt)
                BlockAccessor.batch_to_block(feats.features(batch))
            best = min(best, time.perf_counter() - started)
        times[fmt] = best
    queue.put(times)


# ----------------------------------------------------------------------------- checks


def compare_outputs(raypipe_uri: str, pandas_dir: Path, spot_file: Path, tol: float = 1e-9) -> dict[str, Any]:
    """Row counts, columns, and the rows of one input file compared between raypipe's output and pandas'."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    rp = pads.dataset(raypipe_uri, format="parquet")
    pd_ds = pads.dataset(str(pandas_dir), format="parquet")
    expected = pq.read_table(pandas_dir / spot_file.name)
    ids = expected["id"]
    lo, hi = pc.min(ids).as_py(), pc.max(ids).as_py()
    got = rp.to_table(filter=(pads.field("id") >= lo) & (pads.field("id") <= hi))
    expected, got = expected.sort_by("id"), got.sort_by("id")
    worst = 0.0
    mismatched: list[str] = []
    for name in expected.column_names:
        if name not in got.column_names:
            mismatched.append(name)
            continue
        a, b = got[name], expected[name]
        if pa.types.is_boolean(b.type):
            same = pc.sum(a.cast("int64")).as_py() == pc.sum(b.cast("int64")).as_py()
        elif pa.types.is_integer(b.type) or pa.types.is_floating(b.type):
            sa, sb = float(np.sum(a.to_numpy(), dtype=np.float64)), float(np.sum(b.to_numpy(), dtype=np.float64))
            rel = abs(sa - sb) / max(abs(sb), 1e-300)
            worst = max(worst, rel)
            same = rel <= tol
        else:
            same = a.cast("string").equals(b.cast("string"))
        if not same:
            mismatched.append(name)
    rows_rp, rows_pd = rp.count_rows(), pd_ds.count_rows()
    return {
        "rows_raypipe": rows_rp,
        "rows_pandas": rows_pd,
        "rows_equal": rows_rp == rows_pd,
        "columns_equal": got.column_names == expected.column_names,
        "spot_check_file": spot_file.name,
        "spot_check_rows": got.num_rows,
        "spot_check_max_rel_diff_of_sums": worst,
        "spot_check_mismatched_columns": mismatched,
        "ok": rows_rp == rows_pd and got.num_rows == expected.num_rows and not mismatched,
    }


def compare_mixed(rp: dict[str, Any], pandas: dict[str, Any], pandas_dir: Path) -> dict[str, Any]:
    """raypipe's validated data and quarantine against pandas': row counts, counts per rule, the ids
    of the quarantined rows (count, sum, and the sum of their squares) and the good rows' sums."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    def figures(uri: str, columns: list[str]) -> dict[str, Any]:
        t = pads.dataset(uri, format="parquet").to_table(columns=columns)
        ids = t["id"].cast("float64")
        out: dict[str, Any] = {"rows": t.num_rows, "id_sum": pc.sum(t["id"]).as_py() or 0}
        out["id_sq_sum"] = pc.sum(pc.multiply(ids, ids)).as_py() or 0.0
        for c in columns[1:]:
            out[f"{c}_sum"] = pc.sum(t[c]).as_py() or 0.0
            out[f"{c}_nonnull"] = len(t[c]) - t[c].null_count
        return out

    good_rp, good_pd = figures(rp["data_uri"], ["id", "amount"]), figures(str(pandas_dir / "data"), ["id", "amount"])
    bad_rp, bad_pd = figures(rp["quarantine_uri"], ["id"]), figures(str(pandas_dir / "quarantine"), ["id"])

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(b[k])) for k in b)

    check = {
        "rows_raypipe": rp["rows"],
        "rows_pandas": pandas["rows"],
        "rows_good_raypipe": rp["rows_good"],
        "rows_good_pandas": pandas["rows_good"],
        "rows_quarantined_raypipe": rp["rows_quarantined"],
        "rows_quarantined_pandas": pandas["rows_quarantined"],
        "quarantined_equal": rp["rows_quarantined"] == pandas["rows_quarantined"] == bad_pd["rows"],
        "rule_counts_raypipe": rp["rule_counts"],
        "rule_counts_pandas": pandas["rule_counts"],
        "rule_counts_equal": rp["rule_counts"] == pandas["rule_counts"],
        "quarantine_ids_equal": same(bad_rp, bad_pd),
        "good_rows_equal": same(good_rp, good_pd),
        "good_raypipe": good_rp,
        "good_pandas": good_pd,
    }
    check["ok"] = bool(
        rp["rows"] == pandas["rows"]
        and check["quarantined_equal"]
        and check["rule_counts_equal"]
        and check["quarantine_ids_equal"]
        and check["good_rows_equal"]
    )
    return check


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(
        "raypipe data throughput (read -> numeric features -> parquet; CSV -> validate -> dataset) "
        "vs pandas and pyarrow I/O."
    )
    p.add_argument("--gb", type=float, default=1.0, help="input size in GB (10^9 bytes) of each table (default 1.0)")
    p.add_argument("--files", type=int, default=16, help="input files (default 16)")
    p.add_argument(
        "--table",
        choices=("numeric", "mixed", "both"),
        default="both",
        help="numeric: parquet -> features; mixed: CSV -> validate; both (default)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"input folder (default OUT/input; the mixed CSV goes in its {MIXED_SUBDIR}/); reused if it matches",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the generated input (default 0)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray, and of each stage (default 2)")
    p.add_argument(
        "--batch-format",
        choices=("auto", *FORMATS),
        default="auto",
        help="data.transform batch_format; auto: the fastest in a quick probe (default)",
    )
    p.add_argument(
        "--pandas-engine",
        choices=("c", "pyarrow"),
        default="c",
        help="pd.read_csv engine of the mixed pandas baseline (default c, pandas' default)",
    )
    p.add_argument("--skip-baselines", action="store_true", help="only run raypipe (no ratios)")
    p.add_argument("--keep", action="store_true", help="keep raypipe's storage and the baselines' outputs")
    args = p.parse_args(argv)
    if args.gb <= 0 or args.files < 1 or args.num_cpus < 1:
        p.error("--gb, --files and --num-cpus must be positive")
    args.tables = TABLES if args.table == "both" else (args.table,)
    return args


def _figures(wall: float, rows: int, in_bytes: int) -> dict[str, float]:
    return {"wall_s": wall, "rows_per_s": rows / wall, "mb_per_s": in_bytes / MB / wall}


def _mem(f: dict[str, Any]) -> str:
    return f"{f['peak_rss_mb']:,.0f} / {f['peak_pss_mb'] or 0:,.0f}"


def _baseline_figures(b: dict[str, Any], in_bytes: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        **_figures(b["wall_s"], b["rows"], in_bytes),
        "cpu_s": b["cpu_s"],
        "peak_rss_mb": b["peak_rss_mb"],
        "peak_pss_mb": b["peak_pss_mb"],
        "ru_maxrss_mb": b["ru_maxrss_mb"],
        "rows": b["rows"],
        "output_bytes": b["output_bytes"],
        **{k: b[k] for k in extra if k in b},
    }


def _warm_inputs(work: Path, seed: int, tables: tuple[str, ...]) -> dict[str, Path]:
    """Tiny inputs of each table (4,000 rows in 2 files) for the warm-up runs."""
    import pyarrow.parquet as pq

    out: dict[str, Path] = {}
    if "numeric" in tables:
        out["numeric"] = work / "warmup-input"
        out["numeric"].mkdir()
        for k in range(2):
            pq.write_table(_table(2000, k * 2000, seed, k), out["numeric"] / f"part-{k:04d}.parquet")
    if "mixed" in tables:
        out["mixed"] = work / "warmup-input-mixed"
        out["mixed"].mkdir()
        for k in range(2):
            mixed.write_csv(mixed.table(2000, k * 2000, seed, k), out["mixed"] / f"part-{k:04d}.csv")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tables: tuple[str, ...] = args.tables
    out: Path = args.out.resolve()
    data_dir: Path = (args.data_dir or out / "input").resolve()
    mixed_dir = data_dir / MIXED_SUBDIR
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.chdir(REPO_ROOT)  # Ray workers import `benchmarks._data_features` from the driver's cwd

    stamp: dict[str, Any] = {}
    files: list[Path] = []
    if "numeric" in tables:
        stamp = prepare_input(data_dir, args.gb, args.files, args.seed)
        files = _input_files(data_dir)
    mstamp: dict[str, Any] = {}
    mfiles: list[Path] = []
    if "mixed" in tables:
        mstamp = prepare_mixed_input(mixed_dir, args.gb, args.files, args.seed)
        mfiles = _input_files(mixed_dir, "part-*.csv")

    baselines: dict[str, dict[str, Any]] = {}
    if not args.skip_baselines:
        # Ray is not up yet: the baselines have the machine to themselves.
        if "numeric" in tables:
            for kind in ("pyarrow_io", "pandas"):
                baselines[kind] = run_baseline(kind, files, work / kind)
                b = baselines[kind]
                _progress(f"{kind}: {b['wall_s']:.2f}s, peak RSS {b['peak_rss_mb']:,.0f} MB")
        if "mixed" in tables:
            for kind in ("pyarrow_io", "pandas"):
                b = baselines[f"mixed_{kind}"] = run_baseline(
                    kind, mfiles, work / f"mixed_{kind}", target=_mixed_baseline_worker, args=(args.pandas_engine,)
                )
                _progress(
                    f"mixed {kind}: {b['wall_s']:.2f}s (read {b['read_s']:.2f}s, checks {b['check_s']:.2f}s, "
                    f"unique {b['unique_s']:.2f}s, write {b['write_s']:.2f}s), peak RSS {b['peak_rss_mb']:,.0f} MB"
                )

    probe: dict[str, float] | None = None
    batch_format = args.batch_format
    if "numeric" in tables and args.batch_format == "auto":
        probe = probe_batch_formats(files[:2])
        batch_format = min(probe, key=probe.__getitem__)

    import ray

    # Workers' logs stay in Ray's log files (validate logs every quarantine report).
    ray_init_s = start_local_ray(args.num_cpus)
    check: dict[str, Any] | None = None
    mcheck: dict[str, Any] | None = None
    rp: dict[str, Any] = {}
    mrp: dict[str, Any] = {}
    warm: list[dict[str, Any]] = []
    mwarm: list[dict[str, Any]] = []
    try:
        _progress(f"Ray started in {ray_init_s:.1f}s; warming up (workers, imports, scheduler) on tiny datasets")
        tiny = _warm_inputs(work, args.seed, tables)
        if "numeric" in tables:
            # The first run starts Ray Data's workers and imports; the second shows the fixed cost of a run.
            warm = [
                run_raypipe(
                    pipeline("data-warmup", tiny["numeric"], work / f"raypipe-warmup-{i}", batch_format, args.num_cpus)
                )
                for i in range(2)
            ]
            _progress(f"warm-up runs: {warm[0]['wall_s']:.2f}s, then {warm[1]['wall_s']:.2f}s")
            _progress(f"raypipe: read -> features ({batch_format}) -> dataset, {stamp['bytes'] / MB:,.0f} MB")
            rp = run_raypipe(pipeline("data-throughput", data_dir, work / "raypipe", batch_format, args.num_cpus))
            _progress(
                f"raypipe: {rp['wall_s']:.2f}s (read stage {rp['read_stage_s']:.2f}s, "
                f"transform stage {rp['transform_stage_s']:.2f}s), peak RSS {rp['peak_rss_mb']:,.0f} MB"
            )
            if "pandas" in baselines:
                check = compare_outputs(rp["output_uri"], work / "pandas", files[len(files) // 2])
                _progress(f"check against pandas: {'ok' if check['ok'] else 'MISMATCH'} {check}")
            if rp["rows"] != stamp["rows"]:
                _progress(f"WARNING: raypipe wrote {rp['rows']:,} rows, the input has {stamp['rows']:,}")
        if "mixed" in tables:
            mwarm = [
                run_raypipe_mixed(
                    mixed_pipeline(
                        "data-mixed-warmup", tiny["mixed"], work / f"raypipe-mixed-warmup-{i}", args.num_cpus
                    )
                )
                for i in range(2)
            ]
            _progress(f"mixed warm-up runs: {mwarm[0]['wall_s']:.2f}s, then {mwarm[1]['wall_s']:.2f}s")
            _progress(f"raypipe: read CSV -> validate -> dataset, {mstamp['bytes'] / MB:,.0f} MB")
            mrp = run_raypipe_mixed(mixed_pipeline("data-mixed", mixed_dir, work / "raypipe-mixed", args.num_cpus))
            _progress(
                f"raypipe mixed: {mrp['wall_s']:.2f}s (read stage {mrp['read_stage_s']:.2f}s, validate stage "
                f"{mrp['validate_stage_s']:.2f}s), {mrp['rows_quarantined']:,} rows quarantined, "
                f"peak RSS {mrp['peak_rss_mb']:,.0f} MB"
            )
            if "mixed_pandas" in baselines:
                mcheck = compare_mixed(mrp, baselines["mixed_pandas"], work / "mixed_pandas")
                _progress(f"mixed check against pandas: {'ok' if mcheck['ok'] else 'MISMATCH'}")
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    results: dict[str, Any] = {}
    baseline: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    if "numeric" in tables:
        _numeric_sections(rp, warm, stamp, baselines, probe, batch_format, ray_init_s, results, baseline, ratios, goals)
        sections["input"] = {
            "bytes": stamp["bytes"],
            "rows": stamp["rows"],
            "files": len(files),
            "rows_per_file": stamp["rows_per_file"],
        }
        sections["check"] = check
    if "mixed" in tables:
        _mixed_sections(mrp, mwarm, mstamp, baselines, ray_init_s, results, baseline, ratios, goals)
        sections["mixed_input"] = {
            "bytes": mstamp["bytes"],
            "rows": mstamp["rows"],
            "files": len(mfiles),
            "rows_per_file": mstamp["rows_per_file"],
            "format": "csv",
            "columns": mixed.COLUMNS,
        }
        sections["mixed_check"] = mcheck
    path = write_results(
        out,
        "data_throughput",
        params={
            "gb": args.gb,
            "files": args.files,
            "seed": args.seed,
            "num_cpus": args.num_cpus,
            "batch_format": args.batch_format,
            "function": FUNCTION,
            "data_dir": str(data_dir),
            "table": args.table,
            "pandas_engine": args.pandas_engine,
            "mixed_data_dir": str(mixed_dir),
        },
        **{k: v for k, v in sections.items() if k in ("input", "mixed_input")},
        results=results,
        baseline=baseline,
        ratios=ratios,
        goals=goals,
        samples={
            "warmup_wall_s": [w["wall_s"] for w in warm],
            "mixed_warmup_wall_s": [w["wall_s"] for w in mwarm],
        },
        **{k: v for k, v in sections.items() if k in ("check", "mixed_check")},
    )
    pngs: list[Path] = []
    if "numeric" in tables:
        pngs.append(_numeric_output(out, results, baseline, ratios, goals, stamp, len(files), args.num_cpus))
    if "mixed" in tables:
        pngs.append(_mixed_output(out, results, baseline, ratios, goals, mstamp, len(mfiles), args, mcheck))
    print(f"results: {path}\nplot:    " + "\n         ".join(map(str, pngs)))
    if mcheck is not None and not mcheck["ok"]:
        print(
            "ERROR: raypipe and pandas disagree on the mixed table (see mixed_check in results.json)", file=sys.stderr
        )
        return 1
    return 0


def _numeric_sections(
    rp: dict[str, Any],
    warm: list[dict[str, Any]],
    stamp: dict[str, Any],
    baselines: dict[str, dict[str, Any]],
    probe: dict[str, float] | None,
    batch_format: str,
    ray_init_s: float,
    results: dict[str, Any],
    baseline: dict[str, Any],
    ratios: dict[str, Any],
    goals: dict[str, Any],
) -> None:
    in_bytes, in_rows = stamp["bytes"], stamp["rows"]
    results.update(
        {
            **_figures(rp["wall_s"], in_rows, in_bytes),
            "cpu_s": rp["cpu_s"],
            "sampler_cpu_s": rp["sampler_cpu_s"],
            "transform_stage_s": rp["transform_stage_s"],
            "read_stage_s": rp["read_stage_s"],
            "transform_stage_mb_per_s": in_bytes / MB / rp["transform_stage_s"] if rp["transform_stage_s"] else None,
            "peak_rss_mb": rp["peak_rss_mb"],
            "peak_pss_mb": rp["peak_pss_mb"],
            "idle_rss_mb": rp["idle_rss_mb"],
            "idle_pss_mb": rp["idle_pss_mb"],
            "rows": rp["rows"],
            "output_bytes": rp["output_bytes"],
            "output_files": rp["output_files"],
            "intermediate_bytes": rp["intermediate_bytes"],
            "intermediate_files": rp["intermediate_files"],
            "batch_format": batch_format,
            "batch_format_probe_s": probe,
            "warmup_wall_s": [w["wall_s"] for w in warm],
            "ray_init_s": ray_init_s,
        }
    )
    for kind in ("pandas", "pyarrow_io"):
        if kind in baselines:
            baseline[kind] = _baseline_figures(baselines[kind], in_bytes)
    have = "pandas" in baseline
    ratios.update(
        {
            "vs_pandas": ratio(results["rows_per_s"], baseline["pandas"]["rows_per_s"]) if have else None,
            "vs_pyarrow_io": ratio(results["rows_per_s"], baseline["pyarrow_io"]["rows_per_s"]) if have else None,
            "goal_vs_pandas": GOAL_VS_PANDAS,
            "goal_vs_pyarrow_io": GOAL_VS_PYARROW_IO,
            "memory_vs_pandas": ratio(results["peak_rss_mb"], baseline["pandas"]["peak_rss_mb"]) if have else None,
        }
    )
    for key, limit in (("vs_pandas", GOAL_VS_PANDAS), ("vs_pyarrow_io", GOAL_VS_PYARROW_IO)):
        if ratios[key] is not None:
            goals[f"throughput_{key}"] = goal(ratios[key], limit, "x", lower_is_better=False)


def _mixed_sections(
    mrp: dict[str, Any],
    mwarm: list[dict[str, Any]],
    mstamp: dict[str, Any],
    baselines: dict[str, dict[str, Any]],
    ray_init_s: float,
    results: dict[str, Any],
    baseline: dict[str, Any],
    ratios: dict[str, Any],
    goals: dict[str, Any],
) -> None:
    in_bytes, in_rows = mstamp["bytes"], mstamp["rows"]
    mine = {
        **_figures(mrp["wall_s"], in_rows, in_bytes),
        "read_stage_s": mrp["read_stage_s"],
        "validate_stage_s": mrp["validate_stage_s"],
        "read_stage_mb_per_s": in_bytes / MB / mrp["read_stage_s"] if mrp["read_stage_s"] else None,
        "validate_stage_mb_per_s": in_bytes / MB / mrp["validate_stage_s"] if mrp["validate_stage_s"] else None,
        "cpu_s": mrp["cpu_s"],
        "sampler_cpu_s": mrp["sampler_cpu_s"],
        "peak_rss_mb": mrp["peak_rss_mb"],
        "peak_pss_mb": mrp["peak_pss_mb"],
        "idle_rss_mb": mrp["idle_rss_mb"],
        "idle_pss_mb": mrp["idle_pss_mb"],
        "rows": mrp["rows"],
        "rows_good": mrp["rows_good"],
        "rows_quarantined": mrp["rows_quarantined"],
        "rule_counts": mrp["rule_counts"],
        "converted": mrp["converted"],
        "output_bytes": mrp["output_bytes"],
        "output_files": mrp["output_files"],
        "intermediate_bytes": mrp["intermediate_bytes"],
        "intermediate_files": mrp["intermediate_files"],
        "warmup_wall_s": [w["wall_s"] for w in mwarm],
    }
    results.update({f"mixed_{k}": v for k, v in mine.items()})
    results.setdefault("ray_init_s", ray_init_s)
    extra = ("read_s", "check_s", "unique_s", "write_s", "rows_good", "rows_quarantined", "rule_counts", "engine")
    for kind in ("pandas", "pyarrow_io"):
        if f"mixed_{kind}" in baselines:
            baseline[f"mixed_{kind}"] = _baseline_figures(baselines[f"mixed_{kind}"], in_bytes, extra)
    pd_b, pa_b = baseline.get("mixed_pandas"), baseline.get("mixed_pyarrow_io")
    ratios.update(
        {
            "mixed_vs_pandas": ratio(pd_b["wall_s"], mine["wall_s"]) if pd_b else None,
            "mixed_vs_pyarrow_io": ratio(mine["mb_per_s"], pa_b["mb_per_s"]) if pa_b else None,
            "mixed_goal_vs_pandas": GOAL_MIXED_VS_PANDAS,
            "mixed_goal_vs_pyarrow_io": GOAL_MIXED_VS_PYARROW_IO,
            "mixed_memory_vs_pandas": ratio(mine["peak_rss_mb"], pd_b["peak_rss_mb"]) if pd_b else None,
            "mixed_pss_vs_pandas": ratio(mine["peak_pss_mb"] or 0.0, pd_b["peak_pss_mb"] or 0.0) if pd_b else None,
        }
    )
    for key, limit in (("vs_pandas", GOAL_MIXED_VS_PANDAS), ("vs_pyarrow_io", GOAL_MIXED_VS_PYARROW_IO)):
        if ratios[f"mixed_{key}"] is not None:
            goals[f"mixed_throughput_{key}"] = goal(ratios[f"mixed_{key}"], limit, "x", lower_is_better=False)


def _numeric_output(
    out: Path,
    results: dict[str, Any],
    baseline: dict[str, Any],
    ratios: dict[str, Any],
    goals: dict[str, Any],
    stamp: dict[str, Any],
    n_files: int,
    num_cpus: int,
) -> Path:
    in_bytes, in_rows = stamp["bytes"], stamp["rows"]
    batch_format = results["batch_format"]
    rows: list[list[Any]] = []

    def row(label: str, f: dict[str, Any], vs: float | None, goal_text: str, met: bool | None) -> None:
        rows.append([label, f["wall_s"], f["rows_per_s"], f["mb_per_s"], f.get("cpu_s"), _mem(f), vs, goal_text, met])

    row(f"raypipe ({batch_format})", results, None, "", None)
    if results["transform_stage_s"]:
        tf = _figures(results["transform_stage_s"], in_rows, in_bytes)
        rows.append(["  transform stage", tf["wall_s"], tf["rows_per_s"], tf["mb_per_s"], None, None, None, "", None])
    for kind, label, key, limit in (
        ("pandas", "pandas", "vs_pandas", GOAL_VS_PANDAS),
        ("pyarrow_io", "pyarrow I/O only", "vs_pyarrow_io", GOAL_VS_PYARROW_IO),
    ):
        if kind in baseline:
            g = goals[f"throughput_{key}"]
            row(label, baseline[kind], ratios[key], f">= {limit:g}", g["met"])
    print_table(
        f"data throughput: {in_bytes / MB:,.0f} MB parquet, {in_rows:,} rows, {n_files} files, {num_cpus} CPUs",
        ["pipeline", "wall s", "rows/s", "MB/s", "CPU s", "peak RSS / PSS MB", "raypipe/this", "goal", "met"],
        rows,
        caption="MB/s: input parquet MB / wall s. CPU s: user + system. raypipe's CPU and memory: driver + all Ray "
        "processes (RSS counts the shared object store once per process mapping it; PSS splits it)",
    )
    return _plot(
        out / "throughput.png",
        [results, *(baseline[k] for k in ("pandas", "pyarrow_io") if k in baseline)],
        baseline.get("pandas"),
        GOAL_VS_PANDAS,
        "input MB/s (higher is better)",
        f"read -> features -> parquet, {in_bytes / MB:,.0f} MB input, {num_cpus} CPUs",
    )


def _plot(
    path: Path, shown: list[dict[str, Any]], pandas: dict[str, Any] | None, goal: float, ylabel: str, title: str
) -> Path:
    """Throughput of raypipe and its baselines (``shown``, in that order), with the goal's line
    (``goal`` x pandas), and their peak memory."""
    groups = ["raypipe", "pandas", "pyarrow I/O"][: len(shown)]
    throughput: dict[str, Any] = {
        "title": "throughput",
        "ylabel": ylabel,
        "groups": groups,
        "series": {"MB/s": [f["mb_per_s"] for f in shown]},
    }
    if pandas:
        throughput["hline"] = (goal * pandas["mb_per_s"], f"goal: {goal:g}x pandas")
    memory = {
        "title": "peak memory (process tree)",
        "ylabel": "MB",
        "groups": groups,
        "series": {"RSS": [f["peak_rss_mb"] for f in shown], "PSS": [f["peak_pss_mb"] or 0.0 for f in shown]},
    }
    return bar_chart(path, [throughput, memory], title=title)


def _mixed_output(
    out: Path,
    results: dict[str, Any],
    baseline: dict[str, Any],
    ratios: dict[str, Any],
    goals: dict[str, Any],
    mstamp: dict[str, Any],
    n_files: int,
    args: argparse.Namespace,
    mcheck: dict[str, Any] | None,
) -> Path:
    in_bytes, in_rows = mstamp["bytes"], mstamp["rows"]
    mine = {k[len("mixed_") :]: v for k, v in results.items() if k.startswith("mixed_")}
    rows: list[list[Any]] = []

    def row(label: str, f: dict[str, Any], vs: float | None = None, goal_text: str = "", met: bool | None = None):
        q = f.get("rows_quarantined")
        q = f"{q:,}" if q is not None else None
        rows.append(
            [label, f["wall_s"], f["rows_per_s"], f["mb_per_s"], f.get("cpu_s"), _mem(f), q, vs, goal_text, met]
        )

    def part(label: str, seconds: float | None) -> None:
        if seconds:
            p = _figures(seconds, in_rows, in_bytes)
            rows.append([label, p["wall_s"], p["rows_per_s"], p["mb_per_s"], None, None, None, None, "", None])

    row("raypipe", mine)
    part("  read stage", mine["read_stage_s"])
    part("  validate stage", mine["validate_stage_s"])
    pd_b, pa_b = baseline.get("mixed_pandas"), baseline.get("mixed_pyarrow_io")
    if pd_b:
        g = goals["mixed_throughput_vs_pandas"]
        row(
            f"pandas ({pd_b['engine']} engine)",
            pd_b,
            ratios["mixed_vs_pandas"],
            f">= {GOAL_MIXED_VS_PANDAS:g}",
            g["met"],
        )
        part("  read_csv", pd_b["read_s"])
        part("  checks, unique", pd_b["check_s"] + pd_b["unique_s"])
        part("  to_parquet", pd_b["write_s"])
    if pa_b:
        g = goals["mixed_throughput_vs_pyarrow_io"]
        row("pyarrow I/O only", pa_b, ratios["mixed_vs_pyarrow_io"], f">= {GOAL_MIXED_VS_PYARROW_IO:g}", g["met"])
    if mcheck is None:
        checked = "quarantined rows not compared (--skip-baselines)"
    elif mcheck["ok"]:
        checked = (
            f"quarantined rows: raypipe {mcheck['rows_quarantined_raypipe']:,} = pandas "
            f"{mcheck['rows_quarantined_pandas']:,} (checked: counts per rule, quarantined ids, good rows' sums)"
        )
    else:
        checked = (
            f"MISMATCH: quarantined rows raypipe {mcheck['rows_quarantined_raypipe']:,}, pandas "
            f"{mcheck['rows_quarantined_pandas']:,}; rule counts equal: {mcheck['rule_counts_equal']}"
        )
    print_table(
        f"mixed table: {in_bytes / MB:,.0f} MB CSV, {in_rows:,} rows, {n_files} files, {args.num_cpus} CPUs: "
        "read -> validate (quarantine) -> parquet",
        ["pipeline", "wall s", "rows/s", "MB/s", "CPU s", "peak RSS / PSS MB", "quarantined", "raypipe/this", "goal",
         "met"],
        rows,
        caption=f"{checked}. MB/s: input CSV MB / wall s. raypipe/this: this wall s / raypipe wall s "
        "(\"x faster\"). raypipe's CPU and memory: driver + all Ray processes",
    )  # fmt: skip
    return _plot(
        out / "throughput_mixed.png",
        [mine, *(b for b in (pd_b, pa_b) if b)],
        pd_b,
        GOAL_MIXED_VS_PANDAS,
        "input CSV MB/s (higher is better)",
        f"mixed CSV -> validate -> parquet, {in_bytes / MB:,.0f} MB input, {args.num_cpus} CPUs",
    )


if __name__ == "__main__":
    sys.exit(main())
