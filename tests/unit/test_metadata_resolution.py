"""One resolution of the metadata store for every command: --db, $RAYPIPE_DB, the
pipeline's `metadata:`, <local storage>/raypipe.db, ./.raypipe/raypipe.db."""

from __future__ import annotations

import os

import pytest

from raypipe.api import metadata_url, open_metadata
from raypipe.config import PipelineConfig
from raypipe.exceptions import RaypipeError
from raypipe.store.metadata import DEFAULT_DB, resolve_db


def cfg(**kw: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {"name": "p", "stages": [{"name": "a", "kind": "python", "params": {"function": "json:dumps"}}], **kw}
    )


def test_order_flag_env_pipeline_storage_default(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    store = str(tmp_path / "store")
    assert resolve_db() == DEFAULT_DB
    assert resolve_db(storage=store) == os.path.join(store, "raypipe.db")
    assert resolve_db(storage="s3://bucket/root") == DEFAULT_DB  # no database file in an object store
    assert resolve_db(metadata="sqlite:///m.db", storage=store) == "sqlite:///m.db"
    monkeypatch.setenv("RAYPIPE_DB", "env.db")
    assert resolve_db(metadata="sqlite:///m.db", storage=store) == "env.db"
    assert resolve_db("flag.db", metadata="sqlite:///m.db", storage=store) == "flag.db"


def test_a_pipeline_and_the_reading_commands_agree(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYPIPE_DB", raising=False)
    c = cfg(storage=str(tmp_path / "s"))
    assert metadata_url(c) == str(tmp_path / "s" / "raypipe.db")
    assert metadata_url(c, "other.db") == "other.db"
    monkeypatch.setenv("RAYPIPE_DB", str(tmp_path / "env.db"))
    assert metadata_url(c) == str(tmp_path / "env.db")  # what `raypipe runs` then reads too
    with pytest.raises(RaypipeError, match=r"env\.db.*\$RAYPIPE_DB"):
        open_metadata()
    monkeypatch.delenv("RAYPIPE_DB")
    with pytest.raises(RaypipeError, match="default location"):
        open_metadata()
    with pytest.raises(RaypipeError, match=r"nope\.db' \(--db\)"):
        open_metadata("nope.db")
