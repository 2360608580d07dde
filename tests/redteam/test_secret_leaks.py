"""Red team: a password in the metadata URL must not leak.

A real ``raypipe run`` of a two-stage pipeline against a real PostgreSQL store, on the
module's Ray cluster, once with the password given by reference (``${env:NAME}``) and once
written in the URL as it is.  The password is then searched for everywhere a teammate or
another process could read it: every table of the metadata database, every file under the
storage root, Ray's session logs, Ray's key-value store (raypipe's namespace and Ray's
default one), Ray's job table, and the command lines of every process on the machine while
the run was going.  (The environment of the driver holds it: passing secrets by
environment is the rule, see docs/security.md.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SECRET = "Canary-pw-7f3c9d2e"


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


class ProcessWatch:
    """Every command line seen on the machine, sampled every 50 ms from a thread."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.seen.update(_cmdlines())
            self.stop.wait(0.05)

    def __enter__(self) -> ProcessWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _files_holding(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def _database_rows_holding(url: str, needle: str) -> list[str]:
    import psycopg

    hits = []
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        ]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"').fetchall():
                if needle in repr(row):
                    hits.append(f"{table}: {row!r}"[:300])
    return hits


def _kv_holding(needle: bytes) -> list[str]:
    from ray.experimental import internal_kv

    hits = []
    for namespace in ("raypipe", None):
        for key in internal_kv._internal_kv_list(b"", namespace=namespace):
            value = internal_kv._internal_kv_get(key, namespace=namespace) or b""
            if needle in key or needle in value:
                hits.append(f"{namespace}:{key!r}")
    return hits


def _jobs_holding(needle: str) -> list[str]:
    from ray._private.state import jobs  # the GCS job table (the dashboard's API is off here)

    return [str(job.get("JobID")) for job in jobs() if needle in repr(job)]


@pytest.mark.parametrize("written", ["reference", "literal"])
def test_a_metadata_password_is_nowhere_but_the_environment(
    ray_local: str, postgres: object, tmp_path: Path, written: str
) -> None:
    import ray

    url = postgres.new_database()  # type: ignore[attr-defined]
    password = f"{SECRET}-{written}"
    given = "${env:RAYPIPE_TEST_PG_PASSWORD}" if written == "reference" else password
    metadata = url.replace("postgresql://postgres@", f"postgresql://postgres:{given}@")
    storage = tmp_path / "store"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "name: leaky\n"
        f"storage: {storage}\n"
        f"metadata: '{metadata}'\n"
        "stages:\n"
        "  - {name: make, kind: python, resources: {cpu: 0.5}, params: {function: 'tests.unit.funcs:make'}}\n"
        "  - name: use\n"
        "    kind: python\n"
        "    resources: {cpu: 0.5}\n"
        "    inputs: {x: make.out}\n"
        "    params: {function: 'tests.unit.funcs:use', args: {k: 3}}\n"
    )
    env = {**os.environ, "RAYPIPE_TEST_PG_PASSWORD": password, "PYTHONPATH": REPO}
    with ProcessWatch() as watch:
        done = subprocess.run(
            [sys.executable, "-m", "raypipe.cli", "run", str(pipeline), "--address", ray_local],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "succeeded" in done.stdout + done.stderr
    assert len(watch.seen) > 3  # the watch saw the machine's processes (the driver among them)
    assert any("raypipe.cli" in line and str(pipeline) in line for line in watch.seen)

    needle = password.encode()
    assert [line for line in watch.seen if password in line] == []
    assert _database_rows_holding(url, password) == []
    assert _files_holding(storage, needle) == []
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # type: ignore[attr-defined]
    assert _files_holding(session_dir, needle) == []
    assert _kv_holding(needle) == []
    assert _jobs_holding(password) == []
    # and the stored config says where the password comes from, or that there was one
    from raypipe.store.metadata import MetadataStore

    store = MetadataStore(metadata.replace(given, password))
    try:
        (run,) = store.list_runs(limit=5)
        stored = run.config_json
    finally:
        store.close()
    expected = "${env:RAYPIPE_TEST_PG_PASSWORD}" if written == "reference" else "***"
    assert expected in stored
