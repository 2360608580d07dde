"""Connecting to Ray: the runner's only place that calls ``ray.init``."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from raypipe.config import RayConfig
from raypipe.exceptions import RaypipeError
from raypipe.secrets import resolve_secrets
from raypipe.store.artifacts import is_local


def local_cluster_address() -> str | None:
    """The cluster ``ray start`` left on this machine (Ray's ``ray_current_cluster`` file), if
    its GCS still answers; found without importing Ray (a cached run never does)."""
    import socket

    temp = os.environ.get("RAY_TMPDIR") or "/tmp/ray"
    try:
        with open(os.path.join(temp, "ray_current_cluster"), encoding="utf-8") as f:
            addr = f.read().strip()
    except OSError:
        return None
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return addr
    except OSError:  # a cluster that is gone left its file behind
        return None


def ray_target(cfg: RayConfig, address: str | None = None) -> tuple[str, str]:
    """Where a run's Ray is, as Ray's own convention has it, and a line saying so:
    ``address`` (``--address``; ``local``: a new embedded Ray, ``--local``), the pipeline's
    ``ray.address``, ``$RAY_ADDRESS``, the cluster ``ray start`` left on this machine, else a
    new embedded Ray.  Returns ``(address for ray.init, description)``."""
    cpus = f" ({cfg.num_cpus} CPUs)" if cfg.num_cpus else ""
    for addr, source in (
        (address, "--address"),
        (cfg.address, "the pipeline's ray.address"),
        (os.environ.get("RAY_ADDRESS"), "$RAY_ADDRESS"),
    ):
        if addr == "local":
            return "local", f"a new local Ray{cpus}"
        if addr:
            return addr, f"Ray at {addr} ({source})"
    found = local_cluster_address()
    if found:
        return found, f"joins the Ray cluster at {found} that `ray start` left (--local: a new one)"
    return "local", f"a new local Ray{cpus}"


_EMBEDDED: list[bool] = []


def embedded_ray() -> bool:
    """Whether this process started the Ray it is connected to (a local Ray that ends with it)."""
    return bool(_EMBEDDED and _EMBEDDED[0])


def console_verbose() -> bool:
    """Whether a run shows Ray's own output live: what its workers print (the stages' prints,
    Ray Data's plans, Ray Train's reports) and Ray's warnings (``raypipe run -v``,
    ``$RAYPIPE_VERBOSE=1``).  Otherwise they go to the stage logs and Ray's log files only."""
    return os.environ.get("RAYPIPE_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


def set_verbose(on: bool = True) -> None:
    """``on``: show Ray's output live in this process's runs (and the drivers it starts);
    otherwise ``$RAYPIPE_VERBOSE`` decides."""
    if on:
        os.environ["RAYPIPE_VERBOSE"] = "1"


class DriverLog(logging.Handler):
    """Ray's warnings in a quiet driver: kept in memory until Ray's session is known, then in
    ``<session>/logs/raypipe-driver-<pid>.log`` beside Ray's own log files."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.buffer: list[str] = []
        self.file: Any = None
        self.path: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self.file is None and self.path is not None:
                self.file = open(self.path, "a", encoding="utf-8")  # open while the process lives
            if self.file is None:
                self.buffer = [*self.buffer[-999:], line]
            else:
                self.file.write(line)
                self.file.flush()
        except Exception:  # noqa: BLE001 - logging never fails the run
            self.handleError(record)

    def open_in_session(self) -> None:
        """Ray is connected: the file is known (made when there is something to write)."""
        import ray

        node = ray._private.worker._global_node  # the driver's view of its node: the session's folders
        if node is None:
            return
        path = os.path.join(node.get_logs_dir_path(), f"raypipe-driver-{os.getpid()}.log")
        if path == self.path:
            return
        if self.file is not None:  # a later session of this process (Ray shut down, started again)
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        self.path = path
        if self.buffer:
            try:
                self.file = open(self.path, "a", encoding="utf-8")  # open while the process lives
                self.file.write("".join(self.buffer))
                self.file.flush()
            except OSError:
                return
            self.buffer = []


_DRIVER_LOG = DriverLog()


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_ray_logging() -> None:
    """Ray's own loggers in this driver: errors still on the console, warnings only in Ray's
    log folder (:class:`DriverLog`)."""
    ray_logger = logging.getLogger("ray")
    for h in ray_logger.handlers:
        if h is not _DRIVER_LOG and not any(isinstance(f, _ErrorsOnly) for f in h.filters):
            h.addFilter(_ErrorsOnly())
    if _DRIVER_LOG not in ray_logger.handlers:
        ray_logger.addHandler(_DRIVER_LOG)


def use_token_auth() -> None:
    """Before joining a running cluster: Ray 2.60's ``ray start`` (and ``ray up``) turn token
    authentication on and keep the token in ``~/.ray/auth_token``, but a client sends it
    only with ``RAY_AUTH_MODE=token``.  Set that when a token is at hand and the user chose
    no mode.  Ray reads the mode when it is imported: in a process that imported Ray
    already, set ``RAY_AUTH_MODE=token`` yourself."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"


def ensure_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Reuse a connected Ray, else connect where :func:`ray_target` says (starting an
    embedded Ray when it says ``local``)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    addr, _ = ray_target(cfg, address)
    if addr != "local":
        use_token_auth()  # before Ray is imported: it reads the mode once
    import ray

    verbose = console_verbose()
    if not verbose:
        quiet_ray_logging()
    kwargs: dict[str, Any] = {
        "logging_level": logging.WARNING,
        "configure_logging": True,
        "log_to_driver": verbose,  # the workers' output: in the stage logs, live with -v
        "address": addr,
    }
    if cfg.runtime_env:
        kwargs["runtime_env"] = resolve_secrets(cfg.runtime_env, "ray.runtime_env")  # references: resolved here
    if addr == "local":
        kwargs["include_dashboard"] = False
        # Ray reports task events (what the stage logs' Ray workers are found from) every second
        # by default; a local Ray reports them faster, so a stage's log is complete sooner.
        os.environ.setdefault("RAY_task_events_report_interval_ms", "100")
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if cfg.num_gpus is not None:
            kwargs["num_gpus"] = cfg.num_gpus
    import signal

    ours = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise RaypipeError(f"cannot connect to Ray at {addr!r}: {e}") from None
    if not verbose:
        _DRIVER_LOG.open_in_session()
    _EMBEDDED[:] = [addr == "local"]
    if callable(ours) and getattr(ours, "raypipe_stop", False):
        # ray.init replaces the SIGTERM handler with one that exits at once; a run that
        # asked to stop cleanly on SIGTERM (the CLI's) keeps its own.
        signal.signal(signal.SIGTERM, ours)


def connect_existing(address: str | None) -> None:
    """Join a running cluster (flag, $RAY_ADDRESS, or the one `ray start` left on this machine)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    use_token_auth()  # before Ray is imported: it reads the mode once
    import ray

    addr = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise RaypipeError(f"no Ray cluster to ask at {addr!r}: {e}") from None


# --------------------------------------------------------------------------- shared storage

_CHECKED: set[tuple[str, str]] = set()


def unshared_nodes(nodes: list[dict[str, Any]], token: str, probe: Any) -> list[str]:
    """The nodes (``NodeManagerAddress (NodeID[:8])``) whose ``probe(node_id)`` did not read ``token``."""
    out = []
    for n, got in zip(nodes, probe([n["NodeID"] for n in nodes]), strict=True):
        if got != token:
            out.append(f"{n.get('NodeManagerAddress', '?')} ({str(n['NodeID'])[:8]})")
    return out


def check_storage_shared(root: str, timeout_s: float = 60.0) -> None:
    """On a multi-node cluster, a local storage root must be the same filesystem on every
    node (a shared mount): the driver writes a marker there and a task on every alive node
    reads it.  Raises RaypipeError naming the nodes that cannot see it.  Checked once per
    driver, cluster and root; a single node or a URI root is not checked."""
    import uuid
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not is_local(root):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    key = (ray.get_runtime_context().gcs_address, root)
    if len(nodes) <= 1 or key in _CHECKED:
        return
    token = uuid.uuid4().hex
    marker = Path(root) / f".raypipe-shared-check-{token}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(token, encoding="utf-8")

    @ray.remote(num_cpus=0, max_retries=0)
    def read_marker(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None

    def probe(node_ids: list[str]) -> list[str | None]:
        refs = [
            read_marker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False)).remote(str(marker))
            for nid in node_ids
        ]
        return ray.get(refs, timeout=timeout_s)

    try:
        missing = unshared_nodes(nodes, token, probe)
    except ray.exceptions.GetTimeoutError:
        raise RaypipeError(
            f"storage {root!r}: the nodes did not answer the shared-storage check in {timeout_s:g} s"
        ) from None
    finally:
        marker.unlink(missing_ok=True)
    if missing:
        raise RaypipeError(
            f"storage {root!r} is a local path that {len(missing)} of {len(nodes)} nodes cannot see "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); on a multi-node cluster give an "
            "object-store URI (storage: s3://bucket/prefix) or a shared filesystem mounted at the same path "
            "on every node"
        )
    _CHECKED.add(key)
