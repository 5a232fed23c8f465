"""`emulated_aws`: moto's server on loopback for aws-sim, its groups, and what it leaves behind (nothing)."""

from __future__ import annotations

import os
import socket

import pytest
from dagster import DagsterEventType

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.asg import _Instance, busy_from_dagster_runs
from dpe_dagster.pools.aws.emulator import emulated_aws
from resources import repository_environment
from tests.reliability.harness import advance, queue_run  # noqa: F401  (fixture)
from tests.support.aws import dagster  # noqa: F401  (fixture)


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running: reaped by Popen.wait in stop(), so this is only a guard.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_aws_sim_runs_against_an_emulator_it_starts_and_stops(monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "someones-real-profile")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    env = repository_environment("aws-sim")
    with emulated_aws(env) as sim:
        assert os.environ["AWS_ENDPOINT_URL"] == sim.url and sim.url.startswith("http://127.0.0.1:")
        assert "AWS_PROFILE" not in os.environ and os.environ["AWS_DEFAULT_REGION"] == "us-east-1"
        assert sorted(sim.groups) == ["dpe-sim-ondemand-etl", "dpe-sim-spot-etl"]
        pid = sim.server.process.pid
        for name, config in env.pools.items():
            pool = open_pool(config, env)
            assert pool.target() == config.min_size and pool.nodes() == []
            assert pool.describe()["max"] == config.max_size
        spot = open_pool(env.pool("spot-etl"), env)
        spot.set_target(3)
        nodes = spot.nodes()
        # The group is mixed-instances, all spot: the ledger sees diverse types, spot lifecycle.
        assert [n.lifecycle for n in nodes] == ["spot"] * 3
        assert len({n.instance_type for n in nodes}) == 3
        ondemand = open_pool(env.pool("ondemand-etl"), env)
        ondemand.set_target(1)
        assert [n.lifecycle for n in ondemand.nodes()] == ["on-demand"]
        url = sim.url
    assert not _alive(pid) and not _port_open(url)
    assert os.environ["AWS_PROFILE"] == "someones-real-profile"
    assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ


@pytest.mark.slow
def test_a_failure_inside_the_block_still_stops_the_emulator():
    env = repository_environment("aws-sim")
    with pytest.raises(RuntimeError, match="boom"):
        with emulated_aws(env) as sim:
            pid, url = sim.server.process.pid, sim.url
            raise RuntimeError("boom")
    assert not _alive(pid) and not _port_open(url)


def _instance(n: int, state: str = "InService", ec2: str = "running") -> _Instance:
    return _Instance(id=f"i-{n:04d}", lifecycle_state=state, ec2_state=ec2, zone="us-east-1a", instance_type="m6i.large",
                     lifecycle="spot", launched_at=1000.0 + n, protected=False)


def test_aws_sim_busy_means_an_active_run_is_placed_on_the_instance(dagster):  # noqa: F811
    config = repository_environment("aws-sim").pool("spot-etl")  # 2 CPUs, 8 GB a node
    instances = [_instance(3), _instance(1), _instance(2), _instance(4, state="Pending", ec2="pending")]
    assert busy_from_dagster_runs(config, instances, dagster) == {
        "i-0003": (True, False), "i-0001": (True, False), "i-0002": (True, False), "i-0004": (False, False)}

    small = [queue_run(dagster, "spot-etl", cpus=1) for _ in range(2)]
    queued_only = queue_run(dagster, "spot-etl", cpus=2)
    other_pool = queue_run(dagster, "ondemand-etl", cpus=2)
    for run_id in (*small, other_pool):
        advance(dagster, run_id, DagsterEventType.RUN_START)
    busy = busy_from_dagster_runs(config, instances, dagster)
    # Two 1-CPU runs share the oldest instance; a queued run and another pool's run hold none.
    assert [i for i, (_, b) in busy.items() if b] == ["i-0001"]

    advance(dagster, queued_only, DagsterEventType.RUN_START)
    big = queue_run(dagster, "spot-etl", cpus=4)
    advance(dagster, big, DagsterEventType.RUN_START)
    busy = busy_from_dagster_runs(config, instances, dagster)
    # The 4-CPU run takes two whole nodes, the 2-CPU run the third: every serving node is busy.
    assert sorted(i for i, (_, b) in busy.items() if b) == ["i-0001", "i-0002", "i-0003"]

    for run_id in (*small, queued_only, big):
        advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
    assert not any(b for _, b in busy_from_dagster_runs(config, instances, dagster).values())
