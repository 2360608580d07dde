"""Red team: whoever can write the storage root edits a stored output in place (same size,
other bytes).  raypipe must never use it: reading it is refused naming the artifact, and
the next run of the pipeline does not take it from the cache but makes it again (and the
repaired output is what the downstream stage reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

import raypipe
from raypipe.exceptions import RaypipeError

pytestmark = pytest.mark.slow

F = "tests.unit.funcs"


def pipeline(root: Path) -> raypipe.PipelineConfig:
    return raypipe.PipelineConfig(
        name="tamper",
        storage=str(root),
        stages=[
            raypipe.StageConfig(name="make", kind="python", resources={"cpu": 0.5}, params={"function": f"{F}:make"}),
            raypipe.StageConfig(
                name="use",
                kind="python",
                resources={"cpu": 0.5},
                inputs={"x": "make.out"},
                params={"function": f"{F}:use", "args": {"k": 3}},
            ),
        ],
    )


def test_a_tampered_output_is_refused_and_never_a_cache_hit(ray_local: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    db = str(root / "raypipe.db")
    first = raypipe.run(pipeline(root))
    assert first.ok, first.errors
    made = first.outputs["make"]["out"]
    assert raypipe.read_artifact(made.sha256, db=db) == 1

    path = Path(made.uri.removeprefix("file://"))
    body = path.read_bytes()
    assert b"1" in body
    path.write_bytes(body.replace(b"1", b"7"))  # same size, another value

    with pytest.raises(RaypipeError, match=made.sha256[:12]):
        raypipe.read_artifact(made.sha256, db=db)

    second = raypipe.run(pipeline(root))
    assert second.ok, second.errors
    assert second.stages["make"] == "succeeded", "a tampered output must not be a cache hit"
    assert raypipe.read_artifact(second.outputs["make"]["out"].sha256, db=db) == 1
    assert raypipe.read_artifact(second.outputs["use"]["y"].sha256, db=db) == 3
    assert path.read_bytes() == body  # the object was written again, whole
