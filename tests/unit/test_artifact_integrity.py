"""Artifacts are verified on read (no Ray): objects and dataset files against their SHA-256,
pickle only with the stage's opt-in, torch weights with ``weights_only``, model tars plain
and inside their folder (their temporary folder removed), request bodies limited."""

from __future__ import annotations

import ast
import asyncio
import gc
import gzip
import io
import json
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.exceptions import PickleRefused, StorageError
from raypipe.failures import classify
from raypipe.serving.validation import MAX_BODY_BYTES, RequestError, read_body
from raypipe.store import integrity
from raypipe.store.artifacts import ArtifactRef, ArtifactStore
from raypipe.store.datasets import (
    StagedDataset,
    _read_parts,
    dataset_exists,
    part_stats,
    read_manifest,
    read_part,
)
from raypipe.store.models import ModelPackage

ROOT = Path(__file__).resolve().parents[2]
TAMPERED = "content does not match its sha256 (tampered or corrupted)"


@pytest.fixture(autouse=True)
def _fresh_digests() -> None:
    integrity.clear_cache()


def flip_byte(path: Path, at: int = -1) -> None:
    """Change one byte in place (same size; the modification time may even stay the same)."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


class Boom:
    """Unpickling it would leave a file behind: proof that a refused pickle never ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path(self.marker).touch, ())


def make_frozenset() -> dict[str, Any]:
    """A python stage's function whose output has no format but pickle."""
    return {"out": frozenset({1, 2})}


def total(values: frozenset[int]) -> dict[str, Any]:
    return {"sum": sum(values)}


# ----------------------------------------------------------------------------- objects
def test_a_tampered_object_is_refused_on_read_and_does_not_exist(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value(np.arange(1000, dtype="float64"))
    assert store.exists(ref)
    np.testing.assert_array_equal(store.get_value(ref), np.arange(1000, dtype="float64"))
    flip_byte(Path(ref.uri))
    assert not store.exists(ref)  # a cache lookup misses: the stage runs again
    for read in (store.get_value, store.local_path, store.read_bytes):
        with pytest.raises(StorageError) as exc:
            read(ref)
        assert ref.uri in str(exc.value) and TAMPERED in str(exc.value)


def test_storing_the_value_again_repairs_a_tampered_object(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value({"accuracy": 0.9})
    flip_byte(Path(ref.uri), 3)
    assert store.put_value({"accuracy": 0.9}) == ref  # same name, the right bytes again
    assert store.exists(ref) and store.get_value(ref) == {"accuracy": 0.9}


def test_exists_hashes_a_file_once_per_process_while_it_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value(b"x" * 100_000)
    integrity.clear_cache()
    calls: list[str] = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(5):
        assert store.exists(ref)
    assert store.get_value(ref) == b"x" * 100_000
    assert len(calls) == 1
    flip_byte(Path(ref.uri))  # a rewrite changes the file's change time: hashed again
    assert not store.exists(ref) and len(calls) == 2


def test_a_missing_object_is_a_clear_error(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value([1, 2, 3])
    Path(ref.uri).unlink()
    assert not store.exists(ref)
    with pytest.raises(StorageError, match="is missing"):
        store.get_value(ref)


def test_objects_on_an_object_store_are_verified_when_downloaded(tmp_path: Path) -> None:
    """A ``file://`` URI goes through pyarrow's filesystem as an object store would."""
    (tmp_path / "remote").mkdir()
    store = ArtifactStore(f"file://{tmp_path / 'remote'}")
    ref = store.put_value(np.arange(10))
    assert ref.uri.startswith("file://") and store.exists(ref)
    np.testing.assert_array_equal(store.get_value(ref), np.arange(10))
    other = ArtifactStore(store.root)  # another process: nothing downloaded yet
    flip_byte(tmp_path / "remote" / ref.uri.split("/remote/", 1)[1])
    assert not other.exists(ref)
    with pytest.raises(StorageError, match="tampered"):
        other.get_value(ref)


# ----------------------------------------------------------------------------- pickle
def test_a_value_of_no_known_format_needs_the_pickle_opt_in(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(StorageError) as exc:
        store.put_value({1, 2, 3})
    assert "builtins.set" in str(exc.value) and "`pickle: true`" in str(exc.value)
    assert not list(tmp_path.rglob("*.pkl"))
    ref = store.put_value({1, 2, 3}, allow_pickle=True)
    assert ref.format == "pickle"
    with pytest.raises(StorageError, match=r"is a pickle; reading it is refused.*`pickle: true`"):
        store.get_value(ref)
    assert store.get_value(ref, allow_pickle=True) == {1, 2, 3}


def test_numpy_numbers_are_stored_as_json_not_pickled(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value({"n": np.int64(3), "ok": np.bool_(True), "acc": np.float32(0.5), "xs": [np.uint8(1)]})
    assert ref.format == "json" and ref.schema == {"type": "dict"}
    assert store.get_value(ref) == {"n": 3, "ok": True, "acc": 0.5, "xs": [1]}
    assert store.put_value(np.int64(7)).format == "json"
    with pytest.raises(StorageError, match=r"cannot store a builtins\.dict \(\['z'\]\[1\] is a numpy\.complex128\)"):
        store.put_value({"z": [1, np.complex128(1j)]})
    with pytest.raises(StorageError, match=r"\(\['m'\] has a key of type builtins\.int\)"):
        store.put_value({"m": {1: "x"}})


def test_a_refused_or_tampered_pickle_never_runs(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    marker = tmp_path / "ran"
    ref = store.put_value(Boom(str(marker)), allow_pickle=True)
    with pytest.raises(StorageError, match="refused"):
        store.get_value(ref)
    assert not marker.exists()
    data = Path(ref.uri).read_bytes()
    Path(ref.uri).write_bytes(data.replace(b"ran", b"raN"))  # another file to touch
    with pytest.raises(StorageError, match="tampered"):
        store.get_value(ref, allow_pickle=True)  # even opted in: the hash is checked first
    assert not marker.exists() and not (tmp_path / "raN").exists()


def test_a_stage_opts_in_to_pickle_for_its_outputs_and_inputs(tmp_path: Path) -> None:
    """The runner's task body with the ``pickle`` flag of the stage's payload (``pickle: true``)."""
    from raypipe.resources import Resources
    from raypipe.runner.task import _run
    from raypipe.stages.base import StageContext
    from raypipe.stages.python import PythonParams, PythonStage

    store = ArtifactStore(str(tmp_path))

    def run(function: str, inputs: dict[str, Any], pickle: bool) -> dict[str, Any]:
        ctx = StageContext(run_id="r", stage="s", attempt=1, resources=Resources(), storage=store.root)
        kind = PythonStage(PythonParams(function=function))
        payload = {"stage": "s", "inputs": inputs, "pickle": pickle}
        return _run(kind, ctx, store, payload, None)

    here = "tests.unit.test_artifact_integrity"
    with pytest.raises(PickleRefused, match=r"stage 's', output 'out': cannot store a builtins\.frozenset") as exc:
        run(f"{here}:make_frozenset", {}, pickle=False)
    assert classify(exc.value) == "config"  # not retried, not resumed: the pipeline file needs `pickle: true`
    out = run(f"{here}:make_frozenset", {}, pickle=True)["out"]
    assert out["format"] == "pickle"
    with pytest.raises(PickleRefused, match=r"stage 's', input 'values': .* is a pickle"):
        run(f"{here}:total", {"values": out}, pickle=False)
    back = run(f"{here}:total", {"values": out}, pickle=True)["sum"]
    assert store.get_value(ArtifactRef.from_dict(back)) == 3


def test_the_stage_config_has_the_pickle_switch() -> None:
    from raypipe.config.schema import StageConfig

    assert StageConfig(name="s", kind="python").pickle is False
    assert StageConfig(name="s", kind="python", pickle=True).pickle is True


# ----------------------------------------------------------------------------- torch
def test_torch_weights_are_loaded_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    store = ArtifactStore(str(tmp_path))
    ref = store.put_value({"state_dict": torch.nn.Linear(2, 1).state_dict(), "epoch": 3})
    assert ref.format == "torch"
    seen: list[Any] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real(*a, **k))
    assert store.get_value(ref)["epoch"] == 3
    assert seen == [True]


def test_a_whole_torch_module_needs_the_pickle_opt_in(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(StorageError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict\(\).*`pickle: true`"):
        store.put_value(torch.nn.Linear(2, 1))
    ref = store.put_value(torch.nn.Linear(2, 1), allow_pickle=True)
    assert ref.format == "torch" and ref.schema and ref.schema["weights_only"] is False
    with pytest.raises(StorageError, match="only loads with pickle"):
        store.get_value(ref)
    assert isinstance(store.get_value(ref, allow_pickle=True), torch.nn.Linear)


def test_without_torchs_checkpoint_scan_a_module_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint", raising=False)  # torch < 2.5
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(StorageError, match="as torch weights: loading it needs pickle"):
        store.put_value(torch.nn.Linear(2, 1))
    assert store.put_value({"w": torch.ones(2)}).schema == {"type": "builtins.dict"}


def test_raypipe_loads_torch_files_weights_only() -> None:
    """Every ``torch.load`` in raypipe's code passes ``weights_only=True``, except the one
    behind the pickle opt-in (:func:`raypipe.store.objects._read_torch`)."""
    unsafe = []
    for path in sorted((ROOT / "raypipe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                flag = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only")
                if flag != "True":
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(unsafe) == 1 and unsafe[0].startswith("raypipe/store/objects.py:"), unsafe


# ----------------------------------------------------------------------------- model tars
def package(tmp_path: Path, name: str = "pkg") -> ModelPackage:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00" * 1000)
    return ModelPackage.create(folder, {"task": "regression"})


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    meta = json.dumps({"format": "raypipe-model/1"}).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("raypipe_model.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def test_model_tars_are_written_plain_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "m.tar")
    package(tmp_path).write_tar(path)
    assert Path(path).read_bytes()[257:262] == b"ustar"  # a tar header, not a compressed stream
    with ModelPackage.read_tar(path) as pkg:
        assert pkg.meta["task"] == "regression" and pkg.file("weights.bin").stat().st_size == 1000


def test_a_compressed_model_tar_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "m.tar"
    package(tmp_path).write_tar(str(plain))
    packed = tmp_path / "m.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    before = set(Path(tempfile.gettempdir()).glob("raypipe-model-*"))
    with pytest.raises(StorageError, match="compressed model package is refused"):
        ModelPackage.read_tar(str(packed))
    assert set(Path(tempfile.gettempdir()).glob("raypipe-model-*")) == before  # nothing left behind


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "outside the package"),
        ("/etc/evil.txt", "outside the package"),
        ("sub/../../evil.txt", "outside the package"),
        ("symlink", "is a link"),
        ("hardlink", "is a link"),
        ("device", "not a file or a folder"),
        ("fifo", "not a file or a folder"),
    ],
)
def test_a_model_tar_with_an_unsafe_member_is_refused(tmp_path: Path, member: str, why: str) -> None:
    info = tarfile.TarInfo(member)
    data: bytes | None = b"pwned"
    if member == "symlink":
        info.type, info.linkname, data = tarfile.SYMTYPE, "/etc/passwd", None
    elif member == "hardlink":
        info.type, info.linkname, data = tarfile.LNKTYPE, "raypipe_model.json", None
    elif member == "device":
        info.type, info.devmajor, info.devminor, data = tarfile.CHRTYPE, 1, 3, None
    elif member == "fifo":
        info.type, data = tarfile.FIFOTYPE, None
    path = tar_with(tmp_path / "bad.tar", [(info, data)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(StorageError, match=why):
        ModelPackage.read_tar(path, dest)
    assert not (tmp_path / "evil.txt").exists() and list(dest.iterdir()) == []  # nothing extracted


def test_the_temporary_folder_of_a_read_package_is_removed(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    ref = store.put_value(package(tmp_path))
    pkg = store.get_value(ref)
    folder = pkg.root
    assert (folder / "weights.bin").is_file()
    pkg.close()
    assert not folder.exists()
    with store.get_value(ref) as pkg:
        folder = pkg.root
        assert folder.is_dir()
    assert not folder.exists()
    pkg = store.get_value(ref)  # collected: removed too (and at the latest when the process exits)
    folder = pkg.root
    del pkg
    gc.collect()
    assert not folder.exists()


def test_a_copy_of_a_read_package_never_removes_its_folder(tmp_path: Path) -> None:
    import pickle

    path = str(tmp_path / "m.tar")
    package(tmp_path).write_tar(path)
    pkg = ModelPackage.read_tar(path)
    copy = pickle.loads(pickle.dumps(pkg))  # as Ray ships it to another process
    assert copy == pkg
    del copy
    gc.collect()
    assert pkg.root.is_dir()
    pkg.close()


def test_a_package_in_the_callers_folder_is_never_removed(tmp_path: Path) -> None:
    pkg = package(tmp_path)
    pkg.close()
    path = str(tmp_path / "m.tar")
    pkg.write_tar(path)
    dest = tmp_path / "dest"
    with ModelPackage.read_tar(path, dest):
        pass
    assert pkg.root.is_dir() and (dest / "weights.bin").is_file()


# ----------------------------------------------------------------------------- datasets
def staged_dataset(store: ArtifactStore, n_parts: int = 2) -> ArtifactRef:
    staged = StagedDataset(store)
    try:
        stats = [
            part_stats(
                pa.table({"x": np.arange(i * 10, i * 10 + 10), "y": [f"r{j}" for j in range(10)]}),
                store.root,
                staged.staging,
            )
            for i in range(n_parts)
        ]
        return staged.commit(stats, pa.schema([]))
    finally:
        staged.discard()


def dataset_files(store: ArtifactStore, ref: ArtifactRef) -> list[dict[str, Any]]:
    return list(read_manifest(store, ref)["files"])


def test_the_manifest_has_the_sha256_of_every_file(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = staged_dataset(store)
    files = dataset_files(store, ref)
    assert len(files) == 2
    for f in files:
        path = Path(ref.uri) / f["name"]
        assert f["sha256"] == integrity.sha256_file(str(path)) and f["bytes"] == path.stat().st_size


def read_all(store: ArtifactStore, ref: ArtifactRef, columns: list[str] | None = None) -> pa.Table:
    """What the dataset's read tasks do (``read_dataset``'s ``map_batches`` over the files)."""
    files = dataset_files(store, ref)
    base = store._path(store._rel_of(ref.uri))
    batch = {
        "path": np.array([f"{base}/{f['name']}" for f in files]),
        "sha256": np.array([f.get("sha256") or "" for f in files]),
    }
    return _read_parts(batch, fs=store.root, uri=ref.uri, columns=columns)


def test_a_tampered_dataset_file_is_refused_on_read(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = staged_dataset(store)
    assert read_all(store, ref).num_rows == 20
    assert read_all(store, ref, columns=["x"]).column_names == ["x"]
    name = dataset_files(store, ref)[1]["name"]
    flip_byte(Path(ref.uri) / name, 100)
    assert dataset_exists(store, ref)  # same size: the hash is checked when the file is read
    with pytest.raises(StorageError) as exc:
        read_all(store, ref)
    assert ref.uri in str(exc.value) and name in str(exc.value) and TAMPERED in str(exc.value)
    with pytest.raises(StorageError, match="tampered"):
        read_all(store, ref, columns=["x"])


def test_a_dataset_with_a_missing_or_resized_file_does_not_exist(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = staged_dataset(store)
    assert dataset_exists(store, ref)
    path = Path(ref.uri) / dataset_files(store, ref)[0]["name"]
    path.write_bytes(path.read_bytes() + b"x")
    assert not dataset_exists(store, ref)
    path.unlink()
    assert not dataset_exists(store, ref)
    with pytest.raises(StorageError, match="is missing"):
        read_part(str(path), "0" * 64, store.root, ref.uri)


def test_an_old_manifest_without_file_hashes_still_reads_unverified(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    ref = staged_dataset(store)
    manifest_path = Path(ref.uri) / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for f in manifest["files"]:
        del f["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    flip_byte(Path(ref.uri) / manifest["files"][0]["name"], -1)  # the footer's magic: unreadable as parquet
    assert dataset_exists(store, ref)
    with pytest.raises(Exception) as exc:  # read as before: parquet's own error, no hash check
        read_all(store, ref)
    assert TAMPERED not in str(exc.value)


def test_part_stats_hash_what_they_write_on_an_object_store(tmp_path: Path) -> None:
    (tmp_path / "remote").mkdir()
    store = ArtifactStore(f"file://{tmp_path / 'remote'}")
    ref = staged_dataset(store, n_parts=1)
    (f,) = dataset_files(store, ref)
    path = store._path(f"{store._rel_of(ref.uri)}/{f['name']}")  # as read_dataset gives it to its tasks
    assert f["sha256"] == integrity.sha256_file(path)
    assert read_all(store, ref).num_rows == 10
    flip_byte(Path(path), 100)
    with pytest.raises(StorageError, match="tampered"):
        read_part(path, f["sha256"], store.root, ref.uri)


# ----------------------------------------------------------------------------- request bodies
async def _chunks(parts: list[bytes], seen: list[int]) -> AsyncIterator[bytes]:
    for i, p in enumerate(parts):
        seen.append(i)
        yield p


def body_of(length: str | None, parts: list[bytes], limit: int = MAX_BODY_BYTES) -> tuple[bytes, list[int]]:
    seen: list[int] = []
    return asyncio.run(read_body(length, _chunks(parts, seen), limit)), seen


def test_a_body_within_the_limit_is_read_whole() -> None:
    assert body_of("10", [b'{"a":', b" 1.0}"], limit=10)[0] == b'{"a": 1.0}'
    assert body_of(None, [b"x" * 100, b"y" * 100], limit=200)[0] == b"x" * 100 + b"y" * 100


def test_a_content_length_over_the_limit_is_413_before_reading() -> None:
    with pytest.raises(RequestError) as exc:
        body_of(str(MAX_BODY_BYTES + 1), [b"x"])
    e = exc.value
    assert e.status == 413 and e.body()["error"] == "request body too large"
    assert e.errors[0]["field"] == "(body)" and "1,048,576 bytes" in e.errors[0]["reason"]


def test_a_chunked_body_stops_being_read_past_the_limit() -> None:
    seen: list[int] = []
    parts = [b"x" * 400] * 10
    with pytest.raises(RequestError) as exc:
        asyncio.run(read_body(None, _chunks(parts, seen), 1000))
    assert exc.value.status == 413 and seen == [0, 1, 2]  # the third chunk passed the limit: no fourth read
    with pytest.raises(RequestError, match="too large"):  # a Content-Length that lies
        body_of("10", parts, limit=1000)


def test_a_malformed_content_length_is_400() -> None:
    for bad in ("abc", "-1", ""):
        with pytest.raises(RequestError) as exc:
            body_of(bad, [b"{}"])
        assert exc.value.status == 400 and exc.value.errors[0]["field"] == "Content-Length"


def test_the_router_answers_413_in_the_error_format() -> None:
    """The ingress (no Serve): a body over the app's ``max_body_bytes`` gets 413 with the
    ``{"error", "errors"}`` body a 422 has, on /predict and /feedback."""
    from raypipe.serving import deployments

    variant = {"version": 1, "sha256": "x", "features": ["a"], "input_schema": {"a": "double"}, "replicas": 1}
    config = {"app": "app", "model": "m", "collector": "c", "variants": {"v1": variant}, "max_body_bytes": 2048}
    router = deployments.Router(config, v1=object())
    router.reconfigure({"weights": {"v1": 100}})

    class Request:
        method = "POST"

        def __init__(self, path: str, data: bytes, length: bool) -> None:
            self.scope = {"path": path}
            self.headers = {"content-length": str(len(data))} if length else {}
            self.data = data

        async def stream(self) -> AsyncIterator[bytes]:
            for i in range(0, len(self.data), 1000):
                yield self.data[i : i + 1000]

    big = json.dumps({"features": {"a": 1.0}, "pad": "x" * 4096}).encode()
    for path in ("/predict", "/feedback"):
        for length in (True, False):
            resp = asyncio.run(router(Request(path, big, length)))
            doc = json.loads(resp.body)
            assert resp.status_code == 413 and doc["error"] == "request body too large"
            assert doc["errors"][0]["field"] == "(body)" and "2,048 bytes" in doc["errors"][0]["reason"]
    bad = asyncio.run(router(Request("/predict", b'{"features": {"a": "x"}}', True)))
    assert bad.status_code == 422 and set(json.loads(bad.body)) == {"error", "errors"}


def test_the_serve_spec_sets_the_body_limit() -> None:
    from raypipe.serving.spec import ServeSpec

    spec = {"app": "a", "model": "m", "variants": [{"version": 1, "weight": 100}]}
    assert ServeSpec.model_validate(spec).max_body_bytes == MAX_BODY_BYTES == 1 << 20
    assert ServeSpec.model_validate({**spec, "max_body_bytes": 4096}).max_body_bytes == 4096
    assert ServeSpec.model_fields["max_body_bytes"].description
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServeSpec.model_validate({**spec, "max_body_bytes": 10})


def test_dataframes_still_round_trip_verified(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    ref = store.put_value(df)
    pd.testing.assert_frame_equal(store.get_value(ref), df)
