"""One resolution of the metadata store for every command: --db, $RAYPIPE_DB, the
pipeline's `metadata:`, <absolute local storage>/raypipe.db, else the project's store
(.raypipe/raypipe.db here or above, or under $RAYPIPE_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raypipe.api import metadata_url, open_metadata
from raypipe.config import PipelineConfig
from raypipe.exceptions import RaypipeError
from raypipe.store.metadata import DEFAULT_DB, MetadataStore, project_db, resolve_db


def cfg(**kw: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "p", "stages": [{"name": "a", "kind": "python", "params": {"function": "json:dumps"}}], **kw}
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    monkeypatch.delenv("RAYPIPE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)


def test_order_flag_env_pipeline_storage_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "store")
    assert resolve_db() == DEFAULT_DB
    assert resolve_db(storage=store) == os.path.join(store, "raypipe.db")  # an absolute store: its own
    assert resolve_db(storage=".raypipe/closed_loop") == DEFAULT_DB  # a relative one: the project's
    assert resolve_db(storage="s3://bucket/root") == DEFAULT_DB
    assert resolve_db(metadata="sqlite:///m.db", storage=store) == "sqlite:///m.db"
    monkeypatch.setenv("RAYPIPE_DB", "env.db")
    assert resolve_db(metadata="sqlite:///m.db", storage=store) == "env.db"
    assert resolve_db("flag.db", metadata="sqlite:///m.db", storage=store) == "flag.db"


def test_the_project_store_is_found_from_below_and_under_raypipe_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    MetadataStore(str(tmp_path / DEFAULT_DB)).close()
    below = tmp_path / "configs" / "deep"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    assert project_db() == str(tmp_path / DEFAULT_DB)  # as git finds its repository
    two = cfg(storage=".raypipe/closed_loop")
    assert metadata_url(two) == str(tmp_path / DEFAULT_DB)  # pipelines with other storages share it
    assert open_metadata().url == str((tmp_path / DEFAULT_DB).resolve())  # what `raypipe runs` reads
    monkeypatch.setenv("RAYPIPE_HOME", str(tmp_path / "home"))
    assert project_db() == str(tmp_path / "home" / DEFAULT_DB)


def test_a_pipeline_and_the_reading_commands_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = cfg(storage=str(tmp_path / "s"))
    assert metadata_url(c) == str(tmp_path / "s" / "raypipe.db")
    assert metadata_url(c, "other.db") == "other.db"
    monkeypatch.setenv("RAYPIPE_DB", str(tmp_path / "env.db"))
    assert metadata_url(c) == str(tmp_path / "env.db")  # what `raypipe runs` then reads too
    with pytest.raises(RaypipeError, match=r"env\.db.*\$RAYPIPE_DB"):
        open_metadata()
    monkeypatch.delenv("RAYPIPE_DB")
    with pytest.raises(RaypipeError, match="the project's store"):
        open_metadata()
    with pytest.raises(RaypipeError, match=r"nope\.db' \(--db\)"):
        open_metadata("nope.db")
