"""Lineage of artifacts in the metadata store: which stage run produced an artifact, from which inputs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from raypipe.exceptions import ModelNotFoundError
from raypipe.store.metadata import DONE, MetadataStore
from raypipe.store.sql import Row

__all__ = ["LineageNode", "ProducerRun", "datasets_in", "lineage_tree", "producer_of"]


@dataclass(frozen=True)
class ProducerRun:
    """The stage run that produced an artifact, and the artifacts it read."""

    stage: str
    run_id: str
    stage_run_id: int
    status: str
    cached_from: int | None
    inputs: list[LineageNode]

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["inputs"] = [n.to_dict() for n in self.inputs]
        return d


@dataclass(frozen=True)
class LineageNode:
    """An artifact in a lineage tree.  A node reached a second time (the lineage is a
    DAG) is ``repeated``: it carries no ``produced_by``, it was shown fully earlier."""

    sha256: str
    format: str
    uri: str
    size: int
    #: The name under which the stage below read it (``train``, ``source:0``...); None at the root.
    as_input: str | None
    produced_by: ProducerRun | None
    repeated: bool = False
    #: Rows of a dataset; None for other formats.
    rows: int | None = None
    #: Modification time of a raw source file; None for other formats.
    mtime_ns: int | None = None

    def walk(self) -> Iterable[LineageNode]:
        """This node and every node below it, depth first."""
        yield self
        if self.produced_by is not None:
            for child in self.produced_by.inputs:
                yield from child.walk()

    def sources(self) -> list[LineageNode]:
        """The raw files the tree ends at."""
        return [n for n in self.walk() if n.format == "source" and not n.repeated]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "sha256": self.sha256,
            "format": self.format,
            "uri": self.uri,
            "size": self.size,
            "as_input": self.as_input,
        }
        if self.format == "dataset":
            d["version"] = self.sha256
            d["rows"] = self.rows
        if self.format == "source":
            d["path"] = self.uri
            d["mtime_ns"] = self.mtime_ns
        if self.repeated:
            d["repeated"] = True
        else:
            d["produced_by"] = self.produced_by.to_dict() if self.produced_by is not None else None
        return d


def producer_of(meta: MetadataStore, sha256: str, run_id: str | None = None) -> Row | None:
    """The finished stage run that output ``sha256``: in ``run_id`` if it has one (the
    ``cached`` record of a cache hit counts), else the first one that produced it."""
    return meta._conn.execute(
        "SELECT s.* FROM stage_io io JOIN stage_runs s ON s.id = io.stage_run_id "
        f"WHERE io.direction = 'out' AND io.sha256 = ? AND s.status IN {DONE} "
        "ORDER BY (s.run_id = ?) DESC, s.id LIMIT 1",
        (sha256, run_id or ""),
    ).fetchone()


def lineage_tree(meta: MetadataStore, sha256: str, run_id: str | None = None) -> LineageNode:
    """The artifact ``sha256`` and, recursively, the stage run that produced it and that
    run's inputs, down to artifacts nothing produced (raw ``source`` files, or values
    from outside).  Stage runs of ``run_id`` are preferred where an artifact was made by
    several; below the root, the run of the producer above is preferred."""
    conn = meta._conn
    seen: set[str] = set()

    def node(sha: str, as_input: str | None, prefer: str | None) -> LineageNode:
        row = conn.execute("SELECT * FROM artifacts WHERE sha256 = ?", (sha,)).fetchone()
        if row is None:
            raise ModelNotFoundError(f"artifact {sha[:12]} is not in {meta.location}")
        schema = json.loads(row["schema_json"]) if row["schema_json"] else {}
        base: dict[str, Any] = {
            "sha256": sha,
            "format": row["format"],
            "uri": row["uri"],
            "size": row["size"],
            "as_input": as_input,
            "rows": schema.get("num_rows") if row["format"] == "dataset" else None,
            "mtime_ns": schema.get("mtime_ns") if row["format"] == "source" else None,
        }
        if sha in seen:
            return LineageNode(produced_by=None, repeated=True, **base)
        seen.add(sha)
        sr = producer_of(meta, sha, prefer)
        producer = None
        if sr is not None:
            ins = conn.execute(
                "SELECT name, sha256 FROM stage_io WHERE stage_run_id = ? AND direction = 'in'", (sr["id"],)
            ).fetchall()
            inputs = [node(r["sha256"], r["name"], sr["run_id"]) for r in sorted(ins, key=lambda r: _natural(r[0]))]
            producer = ProducerRun(sr["stage"], sr["run_id"], sr["id"], sr["status"], sr["cached_from"], inputs)
        return LineageNode(produced_by=producer, **base)

    return node(sha256, None, run_id)


def datasets_in(tree: LineageNode) -> list[dict[str, Any]]:
    """Every dataset of a lineage tree (its sha256 is its version) with the stage run that made it."""
    out = []
    for n in tree.walk():
        if n.format == "dataset" and not n.repeated:
            made = n.produced_by
            out.append(
                {
                    "sha256": n.sha256,
                    "rows": n.rows,
                    "stage": made.stage if made else None,
                    "run_id": made.run_id if made else None,
                    "stage_run_id": made.stage_run_id if made else None,
                }
            )
    return out


def _natural(name: str) -> tuple[Any, ...]:
    """Input names in a readable order: ``source:2`` before ``source:10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
