"""Shared fixtures: real Dagster instances (SQLite and PostgreSQL) and real local pools."""

from __future__ import annotations

import os
import socket
from contextlib import closing

import pytest
from dagster import instance_for_test
from hypothesis import settings

# CI replays the same generated examples on every run (a failure there is reproducible from the
# log); a developer's default profile keeps exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

from dpe_dagster.config import parse_environment  # noqa: E402  (after the Hypothesis profile is chosen)

POSTGRES_URL = os.environ.get("DPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_or_skip() -> str:
    """PostgreSQL tests skip on a machine without it, but CI sets DPE_REQUIRE_POSTGRES=1 so that
    they can never be skipped there."""
    try:
        import psycopg2

        with closing(psycopg2.connect(POSTGRES_URL, connect_timeout=3)):
            return POSTGRES_URL
    except Exception as error:  # noqa: BLE001 - any failure to connect means "absent"
        message = f"PostgreSQL is not reachable at {POSTGRES_URL} ({error.__class__.__name__}: {error})"
        if os.environ.get("DPE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + "; DPE_REQUIRE_POSTGRES=1 makes it mandatory")
        pytest.skip(message)


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


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_environment(tmp_path, **pool_overrides):
    """A `local` environment whose pool uses free ports and a temporary state folder."""
    base = free_port()
    pool = {
        "provider": "local",
        "min_size": 0,
        "max_size": 2,
        "node_cpus": 1,
        "node_memory_gb": 1,
        "lifecycle": "spot",
        "price_per_node_hour": 0.036,
        "idle_timeout_s": 3,
        "boot_timeout_s": 60,
        "default_run_cpus": 1,
        "default_run_memory_gb": 1,
        "settings": {
            "state_dir": str(tmp_path / "pool"),
            "master_port": free_port(),
            "master_webui_port": free_port(),
            "worker_port_base": 20000 + base % 20000,
            "worker_webui_port_base": 40000 + base % 20000,
        },
    }
    pool.update(pool_overrides)
    return parse_environment("local", {"pools": {"spot-etl": pool}, "sensor_interval_s": 1})


@pytest.fixture
def aws_sim(monkeypatch, tmp_path):
    """Makes the aws-sim environment (pool fields overridable) against a fresh moto server on
    loopback, with its groups created, and a real (SQLite) Dagster instance whose run coordinator
    and launcher are dpe's: returns (env, instance, autoscaling client)."""
    from dagster import DagsterInstance

    from dpe_dagster.instance import write_instance
    from dpe_dagster.pools.aws.emulator import MotoServer, create_groups
    from resources import aws_sim as aws_sim_environment
    from tests.reliability.harness import clients

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
