"""The aws_asg provider against moto's server on loopback (a real HTTP server in a subprocess).

Errors are injected by dpe's HTTP fault injector (tests/fakes/aws_faults.py) between boto3 and moto,
which answers chosen API actions with AWS-format throttling or 5xx errors, so botocore's own retry logic is what is tested.
"""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType

from dpe_dagster.config import ConfigError, parse_environment
from dpe_dagster.launch.pool_choice import place_on_pool
from dpe_dagster.pools import PoolError, open_pool
from dpe_dagster.pools.aws.asg import AwsAsgPool
from dpe_dagster.pools.aws.emulator import create_groups
from dpe_dagster.scaling.control import scale_pool
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.pools.aws.tags import BACKOFF_UNTIL_TAG
from dpe_dagster.tags import POOL_TAG, REQUESTED_POOL_TAG
from tests.fakes.aws_faults import FaultProxy
from tests.reliability.harness import advance, queue_run
from tests.support.aws import REGION, aws, clients, dagster, ec2_states, environment, group, moto  # noqa: F401  (fixtures and helpers)

# -- scaling ---------------------------------------------------------------------------------
def test_pool_scales_from_zero_for_queued_runs_and_back_to_zero_after_idle_timeout(aws, dagster):
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    assert pool.target() == 0 and pool.nodes() == []

    runs = [queue_run(dagster, "spot-etl") for _ in range(3)]  # 2 CPUs each on 2-CPU nodes: 3 nodes
    now = time.time()
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), {}, now)
    assert pool.target() == 3
    nodes = pool.nodes()
    assert [n.state for n in nodes] == ["running"] * 3
    assert {n.instance_type for n in nodes} <= {"m6i.large", "m5.large", "m5a.large"}
    assert all(n.zone.startswith(REGION) and n.launched_at > now - 60 for n in nodes)

    for run_id in runs:
        advance(dagster, run_id, DagsterEventType.RUN_START)
    assert all(n.busy for n in pool.nodes())
    # Long past the idle timeout, but every node holds a run: nothing goes.
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory, now + 1000)
    assert tick.removed == [] and pool.target() == 3

    for run_id in runs:
        advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory, now + 1001)
    assert tick.removed == [], "idle for 0s must not be removed yet"
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory,
                              now + 1001 + config.idle_timeout_s)
    assert sorted(r.node_id for r in tick.removed) == sorted(n.id for n in nodes)
    assert pool.target() == 0 and pool.nodes() == []
    assert set(ec2_states(ec2, [n.id for n in nodes]).values()) <= {"shutting-down", "terminated"}


def test_busy_instance_is_protected_and_never_terminated(aws, dagster):
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    config = env.pool("spot-etl")
    pool = open_pool(config, env)
    working, done = queue_run(dagster, "spot-etl"), queue_run(dagster, "spot-etl")
    now = time.time()
    tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), {}, now)
    assert pool.target() == 2
    for run_id in (working, done):
        advance(dagster, run_id, DagsterEventType.RUN_START)
    advance(dagster, done, DagsterEventType.RUN_SUCCESS)

    nodes = pool.nodes()
    busy = [n.id for n in nodes if n.busy]
    idle = [n.id for n in nodes if not n.busy]
    assert len(busy) == 1 and len(idle) == 1
    protected = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in group(autoscaling, "test-spot")["Instances"]}
    assert protected == {busy[0]: True, idle[0]: False}

    for step in range(4):  # ticks well past the idle timeout
        tick, memory = scale_pool(dagster, config, pool, read_demand(dagster, env).of("spot-etl"), memory,
                                  now + step * (config.idle_timeout_s + 1))
    assert [n.id for n in pool.nodes()] == busy
    with pytest.raises(PoolError, match="refusing to remove busy node"):
        pool.remove_nodes(busy)
    # Someone lowers the desired capacity by hand: AWS (and moto) skip protected instances.
    autoscaling.set_desired_capacity(AutoScalingGroupName="test-spot", DesiredCapacity=0)
    assert ec2_states(ec2, busy) == {busy[0]: "running"}


def test_spot_scale_up_that_never_arrives_falls_back_to_on_demand(aws, dagster):
    env = environment(aws.url, boot_timeout_s=1)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    first = queue_run(dagster, "spot-etl")
    assert place_on_pool(dagster, env, dagster.get_run_by_id(first)) == "spot-etl"
    asked = [i["InstanceId"] for i in group(autoscaling, "test-spot")["Instances"]]
    assert len(asked) == 1
    # The spot capacity never comes into service. moto launches whatever is asked and replaces a
    # terminated instance at once, so the instance is stopped instead: it exists, never serves.
    ec2.stop_instances(InstanceIds=asked)
    time.sleep(1.5)

    second = queue_run(dagster, "spot-etl")
    assert place_on_pool(dagster, env, dagster.get_run_by_id(second)) == "ondemand-etl"
    run = dagster.get_run_by_id(second)
    assert run.tags[POOL_TAG] == "ondemand-etl" and run.tags[REQUESTED_POOL_TAG] == "spot-etl"
    messages = [e.message for e in dagster.all_logs(second)]
    assert any("spot-etl cannot take this run" in m and "fallback pool ondemand-etl" in m for m in messages), messages
    ondemand = open_pool(env.pool("ondemand-etl"), env)
    assert ondemand.target() == 1 and [n.state for n in ondemand.nodes()] == ["running"]

    spot = open_pool(env.pool("spot-etl"), env)
    assert "did not arrive" in spot.backoff() or "boot timeout" in spot.backoff()
    assert any(t["Key"] == BACKOFF_UNTIL_TAG for t in group(autoscaling, "test-spot")["Tags"])
    # The desired capacity that never became an instance is withdrawn, and the back-off holds.
    assert spot.target() == 0
    spot.set_target(2)
    assert spot.target() == 0
    # A third run goes straight to the fallback while the back-off lasts.
    third = queue_run(dagster, "spot-etl")
    assert place_on_pool(dagster, env, dagster.get_run_by_id(third)) == "ondemand-etl"


@pytest.mark.slow  # botocore's retry back-off sleeps
def test_persistent_api_error_falls_back_and_says_why(aws, dagster):
    proxy = FaultProxy(aws.url)
    try:
        env = environment(proxy.url)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        proxy.persistent[("SetDesiredCapacity", "test-spot")] = FaultProxy.INTERNAL
        run_id = queue_run(dagster, "spot-etl")
        assert place_on_pool(dagster, env, dagster.get_run_by_id(run_id)) == "ondemand-etl"
        messages = " ".join(e.message for e in dagster.all_logs(run_id))
        assert "InternalFailure" in messages and "after 3 attempt(s)" in messages, messages
        assert group(autoscaling, "test-ondemand")["DesiredCapacity"] == 1
        assert group(autoscaling, "test-spot")["DesiredCapacity"] == 0
    finally:
        proxy.close()


# -- retries ---------------------------------------------------------------------------------
def test_throttling_and_5xx_are_retried_by_botocore(aws):
    proxy = FaultProxy(aws.url)
    try:
        env = environment(proxy.url)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        proxy.faults[("DescribeAutoScalingGroups", None)] = [FaultProxy.THROTTLE, FaultProxy.UNAVAILABLE]
        proxy.faults[("SetDesiredCapacity", None)] = [FaultProxy.INTERNAL]
        proxy.faults[("DescribeInstances", None)] = [FaultProxy.THROTTLE]
        pool = open_pool(env.pool("spot-etl"), env)
        pool.set_target(2)
        assert len(pool.nodes()) == 2
        assert proxy.seen["SetDesiredCapacity"] == 2  # one failure, one success
        assert proxy.seen["DescribeInstances"] >= 2
        assert group(autoscaling, "test-spot")["DesiredCapacity"] == 2

        described = proxy.seen["DescribeAutoScalingGroups"]
        assert pool.target() == 2  # one look: target() reads the group nodes() just described
        assert proxy.seen["DescribeAutoScalingGroups"] == described

        proxy.persistent[("DescribeAutoScalingGroups", None)] = FaultProxy.UNAVAILABLE
        before = proxy.seen["DescribeAutoScalingGroups"]
        with pytest.raises(PoolError, match=r"ServiceUnavailable.*after 3 attempt\(s\)"):
            pool.target()
        assert proxy.seen["DescribeAutoScalingGroups"] - before == 3
    finally:
        proxy.close()


def test_a_tick_describes_many_groups_at_once_and_each_look_reads_its_own(aws, monkeypatch):
    """One DescribeAutoScalingGroups per 100 groups per tick (here per 1, to see the chunking with
    two groups); each pool's look (nodes, then target) reads its group from that answer; the next
    look, and anything that acts, asks afresh."""
    from dpe_dagster.pools import look_ahead
    from dpe_dagster.pools.aws import asg as aws_asg

    proxy = FaultProxy(aws.url)
    try:
        env = environment(proxy.url)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        pools = [open_pool(env.pool(name), env) for name in ("spot-etl", "ondemand-etl")]
        pools[0].set_target(1)
        monkeypatch.setattr(aws_asg, "GROUPS_PER_CALL", 1)
        before = proxy.seen["DescribeAutoScalingGroups"]
        look_ahead(pools)
        assert proxy.seen["DescribeAutoScalingGroups"] - before == 2
        assert [len(pool.nodes()) for pool in pools] == [1, 0]
        assert [pool.target() for pool in pools] == [1, 0]
        assert proxy.seen["DescribeAutoScalingGroups"] - before == 2, "the looks used the tick's answer"
        autoscaling.set_desired_capacity(AutoScalingGroupName="test-spot", DesiredCapacity=2, HonorCooldown=False)
        assert pools[0].target() == 2, "a later look asks afresh"
        assert proxy.seen["DescribeAutoScalingGroups"] - before == 3
    finally:
        proxy.close()


# -- configuration and credentials -------------------------------------------------------------
@pytest.mark.parametrize("settings, field", [
    ({}, "pools.spot-etl.settings.group_name"),
    ({"group_name": "g", "busy_source": "guess"}, "pools.spot-etl.settings.busy_source"),
    ({"group_name": "g", "colour": "red"}, "pools.spot-etl.settings: unknown field"),
    ({"group_name": "g", "instance_types": "m5.large"}, "pools.spot-etl.settings.instance_types"),
])
def test_bad_pool_settings_name_the_field(settings, field):
    # Refused when the configuration loads, before any pool is opened or AWS is called ...
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        environment("http://127.0.0.1:1", settings=settings)
    # ... and by the provider itself, for a pool built in code.
    good = environment("http://127.0.0.1:1")
    pool = good.pool("spot-etl").model_copy(update={"settings": settings})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        AwsAsgPool.from_config(pool, good)


@pytest.mark.parametrize("aws_raw, field", [
    ({}, "aws.region"),
    ({"region": "us-east-1", "retry_mode": "legacy-ish"}, "aws.retry_mode"),
    ({"region": "us-east-1", "max_attempts": 0}, "aws.max_attempts"),
    ({"region": "us-east-1", "endpoint_url": "localhost:4566"}, "aws.endpoint_url"),
    ({"region": "us-east-1", "access_key": "AKIA"}, "aws: unknown field"),
])
def test_bad_aws_settings_name_the_field(aws_raw, field):
    env = environment("http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_environment("test", {**env.as_file(), "aws": aws_raw})
    in_code = env.model_copy(update={"blocks": {**env.blocks, "aws": aws_raw}})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        AwsAsgPool.from_config(in_code.pool("spot-etl"), in_code)


def test_missing_group_and_missing_credentials_are_clear_errors(aws, monkeypatch, tmp_path):
    env = environment(aws.url)
    with pytest.raises(PoolError, match="pools.spot-etl.settings.group_name: Auto Scaling group 'test-spot' does not exist"):
        open_pool(env.pool("spot-etl"), env).target()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(PoolError, match="no AWS credentials found in the standard chain"):
        open_pool(env.pool("spot-etl"), env).target()


def test_emulator_environment_refuses_an_endpoint_off_loopback(monkeypatch):
    env = environment("http://127.0.0.1:1")
    env = env.model_copy(update={"blocks": {**env.blocks, "aws": {"region": REGION, "emulator": True}}})
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://autoscaling.us-east-1.amazonaws.com")
    pool = AwsAsgPool.from_config(env.pool("spot-etl"), env)  # making it is fine (cleanup code does)
    sent = []
    pool.autoscaling.meta.events.register("before-send.*.*", lambda request, **_: sent.append(request.url))
    for call in (pool.target, pool.nodes, lambda: pool.set_target(1)):
        with pytest.raises(PoolError, match="only to an AWS emulator on loopback"):
            call()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with pytest.raises(PoolError, match="only to an AWS emulator on loopback"):
        AwsAsgPool.from_config(env.pool("spot-etl"), env).target()
    assert sent == []


# -- another scaling activity in progress ---------------------------------------------------------
CONTENTION = (400, "Sender", "ScalingActivityInProgress",
              "Scaling activity 7f3a is in progress and blocks this action")


def test_a_scaling_activity_in_progress_is_waited_out_not_taken_for_missing_capacity(aws, dagster):
    """Under load Auto Scaling answers SetDesiredCapacity and TerminateInstanceInAutoScalingGroup
    with ScalingActivityInProgress, which botocore does not retry: dpe retries it itself."""
    proxy = FaultProxy(aws.url)
    try:
        env = environment(proxy.url)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        proxy.faults[("SetDesiredCapacity", None)] = [CONTENTION, CONTENTION]
        run_id = queue_run(dagster, "spot-etl")
        assert place_on_pool(dagster, env, dagster.get_run_by_id(run_id)) == "spot-etl"
        assert proxy.seen["SetDesiredCapacity"] == 3  # twice refused, then done
        assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
        pool = open_pool(env.pool("spot-etl"), env)
        assert pool.backoff() is None
        [node] = pool.nodes()
        advance(dagster, run_id, DagsterEventType.RUN_SUCCESS)
        proxy.faults[("TerminateInstanceInAutoScalingGroup", None)] = [CONTENTION]
        pool.remove_nodes([node.id])
        assert ec2_states(ec2, [node.id])[node.id] in ("shutting-down", "terminated")
        assert group(autoscaling, "test-spot")["DesiredCapacity"] == 0
    finally:
        proxy.close()


@pytest.mark.slow  # dpe's own pauses between retries (about 7 s)
def test_a_group_busy_for_longer_keeps_the_run_on_its_pool_without_a_back_off(aws, dagster):
    """Contention past the retries is not a capacity failure: the run is not sent on-demand and
    the spot pool is not backed off; the autoscaler's next tick asks again."""
    proxy = FaultProxy(aws.url)
    try:
        env = environment(proxy.url)
        autoscaling, ec2 = clients(aws.url)
        create_groups(env, autoscaling, ec2)
        proxy.persistent[("SetDesiredCapacity", "test-spot")] = CONTENTION
        run_id = queue_run(dagster, "spot-etl")
        assert place_on_pool(dagster, env, dagster.get_run_by_id(run_id)) == "spot-etl"
        run = dagster.get_run_by_id(run_id)
        assert run.tags["dpe/node_pool"] == "spot-etl"
        messages = " ".join(e.message for e in dagster.all_logs(run_id))
        assert "busy with another scaling activity" in messages and "ScalingActivityInProgress" in messages
        pool = open_pool(env.pool("spot-etl"), env)
        assert pool.backoff() is None
        assert group(autoscaling, "test-ondemand")["DesiredCapacity"] == 0
        del proxy.persistent[("SetDesiredCapacity", "test-spot")]
        assert place_on_pool(dagster, env, dagster.get_run_by_id(run_id)) == "spot-etl"
        assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
    finally:
        proxy.close()
