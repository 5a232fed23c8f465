"""Containers as pods: aws-sim's pools in the emulator, emptied for each test, the loopback pod
API and a Dagster instance (tests/containers/, tests/usage/)."""

from __future__ import annotations

import pytest
from dagster import instance_for_test

from dpe_dagster.pools import open_pool
from tests.fakes.kube_api import LoopbackPodApi
from tests.support.aws import empty_pools, sim  # noqa: F401  (sim: a fixture)


@pytest.fixture
def pools(sim, instance):
    env, _ = sim
    empty_pools(env)
    return {name: open_pool(config, env) for name, config in env.pools.items()}


@pytest.fixture
def kube_api():
    api = LoopbackPodApi()
    yield api
    api.close()


@pytest.fixture
def instance(tmp_path, monkeypatch):
    (tmp_path / "dagster").mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))  # aws-sim reads busy-ness from its runs
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst
