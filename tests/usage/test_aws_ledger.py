"""In aws-sim, the ledger's node lifetimes are the instances' real lives: the node-seconds it
records match EC2's launch time and termination time within 1%."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

import pytest
from dagster import DagsterEventType

from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.usage.eventlog import read_node_lifetimes
from tests.reliability.harness import advance, queue_run  # noqa: F401
from tests.support.aws import aws, clients, dagster, environment, moto  # noqa: F401

pytestmark = pytest.mark.slow
LIFETIME_S = 100  # long enough that EC2's one-second timestamps are well inside 1%


def terminated_at(instance: dict) -> float:
    """EC2 says when an instance was terminated only in StateTransitionReason, to the second."""
    match = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:UTC|GMT)\)", instance["StateTransitionReason"])
    assert match, instance["StateTransitionReason"]
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def test_ledger_node_seconds_match_ec2_within_one_percent(aws, dagster):  # noqa: F811
    env = environment(aws.url, idle_timeout_s=2)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    runs = [queue_run(dagster, "spot-etl") for _ in range(2)]
    memory: dict = {}

    def tick():
        nonlocal memory
        _, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory, time.time())

    tick()
    for run_id in runs:
        advance(dagster, run_id, DagsterEventType.RUN_START)
    started = time.time()
    while time.time() - started < LIFETIME_S:
        tick()
        time.sleep(5)
    for run_id in runs:
        advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
    deadline = time.time() + 60
    while pool.nodes():
        assert time.time() < deadline, "the idle nodes were not removed"
        tick()
        time.sleep(1)

    lifetimes = {n.node_id: n for n in read_node_lifetimes(dagster)}
    assert len(lifetimes) == 2
    reservations = ec2.describe_instances(InstanceIds=list(lifetimes))["Reservations"]
    real = {i["InstanceId"]: i for r in reservations for i in r["Instances"]}
    for node_id, lifetime in lifetimes.items():
        ec2_seconds = terminated_at(real[node_id]) - real[node_id]["LaunchTime"].timestamp()
        assert ec2_seconds > LIFETIME_S
        assert abs(lifetime.lifetime_seconds - ec2_seconds) / ec2_seconds <= 0.01, (lifetime, ec2_seconds)
        assert lifetime.lifecycle == "spot" and lifetime.instance_type == real[node_id]["InstanceType"]
        assert 0 < lifetime.busy_seconds <= lifetime.lifetime_seconds
