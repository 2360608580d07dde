"""A throwaway PostgreSQL server on 127.0.0.1 for the tests and the benchmarks: Debian's
``postgresql`` package (``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/N/bin``, or on
PATH), trust authentication, no fsync, in a temporary folder removed on :meth:`stop`.

    from tools.pg_server import PostgresServer, pg_bindir
    server = PostgresServer(pg_bindir())      # pg_bindir(): None when PostgreSQL is not installed
    url = server.new_database()               # postgresql://postgres@127.0.0.1:PORT/NAME
    server.stop()

As root, ``initdb`` and the server run as the ``postgres`` user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "free_port", "pg_bindir"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> str | None:
    """The newest Debian PostgreSQL's bin directory (or wherever ``pg_ctl`` is on PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(on_path)) if on_path else None


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, no fsync)."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="raypipe-pg-")
        self.data, self.sockets, self.log = (os.path.join(self.root, n) for n in ("data", "sock", "server.log"))
        os.mkdir(self.sockets)
        # initdb and the server refuse to run as root: run them as `postgres`, in a folder it owns
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.prefix:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self.port = free_port()
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60", "start")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self.prefix, os.path.join(self.bindir, tool), *args], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            log = Path(self.log).read_text() if os.path.exists(self.log) else ""
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
