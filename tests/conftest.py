"""Shared fixtures: real Dagster instances (SQLite and PostgreSQL) and real local pools."""

from __future__ import annotations

import os

import pytest
from dagster import instance_for_test
from hypothesis import settings

# CI replays the same generated examples on every run (a failure there is reproducible from the
# log); a developer's default profile keeps exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from dpe_dagster.config import parse_environment  # noqa: E402  (after the Hypothesis profile is chosen)
from tests.support.postgres import postgres_or_skip  # noqa: E402

@pytest.fixture(autouse=True)
def isolated_dpe_home(tmp_path, monkeypatch):
    """No test touches the developer's `.dpe/` (pools, data, instance)."""
    monkeypatch.setenv("DPE_HOME", str(tmp_path / "dpe-home"))


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request, tmp_path):
    """A real Dagster instance on each production-grade storage."""
    overrides = {"telemetry": {"enabled": False}, "nux": {"enabled": False}}
    if request.param == "postgres":
        overrides["storage"] = {"postgres": {"postgres_url": postgres_or_skip()}}
    (tmp_path / "dagster").mkdir()
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "dagster")) as inst:
        if request.param == "postgres":
            inst.wipe()
        yield inst
        if request.param == "postgres":
            inst.wipe()


@pytest.fixture
def sqlite_instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def aws_sim(monkeypatch, tmp_path):
    """Makes the aws-sim environment (pool fields overridable) against a fresh moto server on
    loopback, with its groups created, and a real (SQLite) Dagster instance whose run coordinator
    and launcher are dpe's: returns (env, instance, autoscaling client)."""
    from dagster import DagsterInstance

    from dpe_dagster.instance import write_instance
    from dpe_dagster.pools.aws.emulator import MotoServer, create_groups
    from resources import aws_sim as aws_sim_environment
    from tests.support.aws import clients

    made = []

    def make(**pool_fields):
        moto = MotoServer().start()
        made.append(moto)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
        monkeypatch.setenv("DPE_ENV", "aws-sim")
        raw = aws_sim_environment.environment()
        for pool in raw["pools"].values():
            pool.update(pool_fields)
        env = parse_environment("aws-sim", raw)
        autoscaling, ec2 = clients(moto.url)
        create_groups(env, autoscaling, ec2)
        write_instance(tmp_path / "dagster", env)
        instance = DagsterInstance.from_config(str(tmp_path / "dagster"))
        made.append(instance)
        return env, instance, autoscaling

    yield make
    for thing in reversed(made):
        if hasattr(thing, "dispose"):
            thing.dispose()
        else:
            thing.stop()


def pytest_sessionfinish(session, exitstatus):
    """The session's Kubernetes control plane goes with it (tests/support/cluster.py)."""
    import sys

    watches = sys.modules.get("dpe_dagster.kube.watch")
    if watches is not None:  # the process's watches of the cluster stop before it does
        watches.stop_watches()
    shared = sys.modules.get("tests.support.cluster")
    if shared is not None:
        shared.stop_shared_cluster()
