"""AWS for the tests: moto's server on loopback, a clean emulator per test, a two-pool aws_asg
environment on it, the interruption queue, and a real Dagster instance."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from dpe_dagster.config import parse_environment
from dpe_dagster.pools import open_pool
from dpe_dagster.pools.aws.emulator import MotoServer, create_groups, emulated_aws
from dpe_dagster.pools.aws.interruptions import WARNING
from dpe_dagster.pools.health import BACKOFF_REASON, BACKOFF_UNTIL
from resources import repository_environment

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto, monkeypatch):
    """A clean emulator, dummy credentials through the standard environment variables only."""
    urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset", data=b"", method="POST")).close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return moto


def environment(endpoint: str, **spot_overrides) -> object:
    spot = {
        "provider": "aws_asg", "min_size": 0, "max_size": 4, "node_cpus": 2, "node_memory_gb": 8,
        "lifecycle": "spot", "price_per_node_hour": 0.035, "idle_timeout_s": 30, "boot_timeout_s": 60,
        # idle nodes go after idle_timeout_s, as the tests count on (the auto rule: tests/sim)
        "idle_timeout_mode": "fixed",
        "default_run_cpus": 2, "default_run_memory_gb": 4, "fallback": "ondemand-etl", "backoff_s": 300,
        "settings": {"group_name": "test-spot", "busy_source": "dagster_runs",
                     "instance_types": ["m6i.large", "m5.large", "m5a.large"]},
    }
    spot.update(spot_overrides)
    return parse_environment("test", {
        "aws": {"region": REGION, "endpoint_url": endpoint, "max_attempts": 3},
        "pools": {
            "spot-etl": spot,
            "ondemand-etl": {
                "provider": "aws_asg", "min_size": 0, "max_size": 2, "node_cpus": 2, "node_memory_gb": 8,
                "lifecycle": "on-demand", "price_per_node_hour": 0.096, "idle_timeout_s": 30,
                "idle_timeout_mode": "fixed", "default_run_cpus": 2, "default_run_memory_gb": 4,
                "settings": {"group_name": "test-ondemand", "busy_source": "dagster_runs"},
            },
        },
    })


def clients(url: str):
    kwargs = {"region_name": REGION, "endpoint_url": url}
    return boto3.client("autoscaling", **kwargs), boto3.client("ec2", **kwargs)


@pytest.fixture
def dagster(tmp_path, monkeypatch):
    """A real (SQLite) Dagster instance; DAGSTER_HOME points aws-sim's busy lookup at it."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path)))
    yield instance
    instance.dispose()


def ec2_states(ec2, ids) -> dict[str, str]:
    out = {}
    for reservation in ec2.describe_instances(InstanceIds=list(ids))["Reservations"]:
        for inst in reservation["Instances"]:
            out[inst["InstanceId"]] = inst["State"]["Name"]
    return out


def group(autoscaling, name: str) -> dict:
    return autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def autoscaling_that_has_not_launched(url: str, pending: set[str]):
    client = boto3.client("autoscaling", region_name=REGION, endpoint_url=url)

    def leave_out(parsed, **_):
        for asg in parsed.get("AutoScalingGroups", []):
            asg["Instances"] = [i for i in asg.get("Instances", []) if i["InstanceId"] not in pending]

    client.meta.events.register("after-call.autoscaling.DescribeAutoScalingGroups", leave_out)
    return client


def interruption_queue(url: str):
    """The queue and rule deploy/cloudformation/interruption-queue.yaml makes, in the emulator."""
    kwargs = {"region_name": REGION, "endpoint_url": url}
    sqs, events = boto3.client("sqs", **kwargs), boto3.client("events", **kwargs)
    queue = sqs.create_queue(QueueName="dpe-interruptions")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="dpe-interruptions", EventPattern=json.dumps({
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"]}))
    events.put_targets(Rule="dpe-interruptions", Targets=[{"Id": "queue", "Arn": arn}])
    return sqs, events, queue


def warn(events, instance_id: str, detail_type: str = WARNING) -> None:
    events.put_events(Entries=[{
        "Source": "aws.ec2", "DetailType": detail_type,
        "Resources": [f"arn:aws:ec2:{REGION}:123456789012:instance/{instance_id}"],
        "Detail": json.dumps({"instance-id": instance_id, "instance-action": "terminate"}),
    }])


def pools_of(env):
    return {name: open_pool(env.pool(name), env) for name in env.pools}


@pytest.fixture
def kube_pool(aws, eks):
    """The aws_asg pool with busy-ness from Kubernetes: two instances that joined the real control
    plane as EKS nodes (`eks`: tests/support/cluster.py), each running the DaemonSets' pods.
    Returns (pool, instance ids, ec2 client, node names), sorted by instance id."""
    from tests.support.cluster import node_ready, pods_on, wait_for

    env = environment(aws.url, labels={"dpe.io/pool": "spot-etl"},
                      settings={"group_name": "test-spot", "busy_source": "kubernetes",
                                "instance_types": ["m6i.large", "m5.large"]})
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    pool = open_pool(env.pool("spot-etl"), env)
    pool.set_target(2)
    ids = sorted(n.id for n in pool.nodes())
    names = [eks.node_name(iid) for iid in ids]
    for name in names:
        wait_for(f"node {name} Ready", lambda: node_ready(eks.core, name))
        wait_for(f"DaemonSet pods running on {name}",
                 lambda: sum(p.status.phase == "Running" for p in pods_on(eks.core, name)) >= 2)
    return pool, ids, ec2, names


@pytest.fixture(scope="module")
def sim():
    """This repository's aws-sim environment with its groups in an emulator of their own:
    (env, the emulator)."""
    env = repository_environment("aws-sim")
    with emulated_aws(env) as emulated:
        yield env, emulated


def empty_pools(env) -> None:
    """Every pool of `env` back to no nodes and no backoff: each test starts from empty, healthy groups."""
    for config in env.pools.values():
        pool = open_pool(config, env)
        if pool.backoff():
            pool.write_marks({BACKOFF_UNTIL: None, BACKOFF_REASON: None})
        nodes = [n.id for n in pool.nodes()]
        if nodes:
            pool.remove_nodes(nodes)
