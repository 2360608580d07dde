"""The train stage's default for Ray Train's worker-poll interval (no Ray started)."""

from __future__ import annotations

import os

import pytest

from raypipe.stages.train import POLL_INTERVAL_S, ray_train_poll_interval

KEY = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def test_the_default_reaches_what_ray_train_hands_its_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    monkeypatch.delenv(KEY, raising=False)
    with ray_train_poll_interval():
        assert get_env_vars_to_propagate().get(KEY) == POLL_INTERVAL_S
    assert KEY not in os.environ


def test_a_users_own_interval_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY, "3")
    with ray_train_poll_interval():
        assert os.environ[KEY] == "3"
    assert os.environ[KEY] == "3"


def test_one_worker_reads_its_datasets_unsplit_and_a_gang_splits_every_one() -> None:
    """One worker's only shard is the whole dataset: nothing is split (no split coordinator actor
    per dataset input); with two workers or more every dataset input is split, a shard per worker."""
    from ray.train import DataConfig

    from raypipe.stages.train import shards_to_split

    assert shards_to_split(1) == []
    assert shards_to_split(2) == shards_to_split(8) == "all"
    assert DataConfig(datasets_to_split=shards_to_split(1))._datasets_to_split == []
