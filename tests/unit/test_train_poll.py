"""The train stage's default for Ray Train's worker-poll interval (no Ray started)."""

from __future__ import annotations

import os

import pytest

from raypipe.stages.train import POLL_INTERVAL_MAX_S, poll_interval_s, ray_train_poll_interval

KEY = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def test_the_default_reaches_what_ray_train_hands_its_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    monkeypatch.delenv(KEY, raising=False)
    with ray_train_poll_interval(2):
        assert float(get_env_vars_to_propagate()[KEY]) == poll_interval_s(2) == 0.1
    assert KEY not in os.environ


def test_the_interval_grows_with_the_gang_up_to_ray_trains_default() -> None:
    """Every report after a worker's first waits for a poll (Ray Train keeps one report per
    worker), so small gangs poll often; a poll is an actor call per worker, so big ones less."""
    sizes = [1, 2, 4, 8, 16, 64, 80, 512]
    intervals = [poll_interval_s(n) for n in sizes]
    assert intervals[:3] == [0.1, 0.1, 0.1]
    assert intervals == sorted(intervals) and intervals[-1] == intervals[-2] == POLL_INTERVAL_MAX_S == 2.0
    assert all(n / poll_interval_s(n) <= 40.0 + 1e-9 for n in sizes if n <= 80)  # polls a second, at most


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
