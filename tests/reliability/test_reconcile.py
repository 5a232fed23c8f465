"""The control loop reconciles from the provider's real state: a node that disappeared behind its
back (a spot interruption, or a scale-down whose process died between terminating the instance and
writing its record) is still charged, exactly once. In-process against moto; fast."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterEventType

from dpe_dagster.pools import open_pool
from dpe_dagster.scaling import books
from dpe_dagster.usage.charges import usage_for_run
from dpe_dagster.usage.eventlog import read_node_lifetimes
from dpe_dagster.usage.pricing import pricer_for
from tests.reliability.harness import advance, alive_instances, aws_env, queue_run, tick  # noqa: F401  (fixtures and helpers)
from tests.support.aws import moto  # noqa: F401  (fixture)


def test_a_node_lost_under_a_run_is_charged_once(aws_env, measured):
    env, instance, autoscaling, ec2 = aws_env
    pool = open_pool(env.pool("spot-etl"), env)
    run_id = queue_run(instance, "spot-etl")
    now = time.time()
    _, memory = tick(instance, env, pool, {}, now)
    [lost] = pool.nodes()
    advance(instance, run_id, DagsterEventType.RUN_START)
    _, memory = tick(instance, env, pool, memory, now + 5)
    _, memory = tick(instance, env, pool, memory, now + 10)
    assert memory[lost.id].busy_seconds == pytest.approx(5, abs=0.01)

    # A spot interruption: the instance goes, the group launches a replacement.
    time.sleep(2)  # the run holds the node for a while of real time: what it is charged
    autoscaling.terminate_instance_in_auto_scaling_group(InstanceId=lost.id, ShouldDecrementDesiredCapacity=False)
    advance(instance, run_id, DagsterEventType.RUN_FAILURE)
    for step in (15, 20, 25):
        _, memory = tick(instance, env, pool, memory, now + step)
    records = [n for n in read_node_lifetimes(instance) if n.node_id == lost.id]
    measured.add(records_lost=int(not records), records_duplicated=max(0, len(records) - 1))
    assert len(records) == 1, records
    [record] = records
    assert record.pool == "spot-etl" and record.lifecycle == lost.lifecycle and record.launched_at == lost.launched_at
    # Busy for its part of what its run was charged: the replacement (launch times are whole
    # seconds) shares the run's last second at most.
    usage = usage_for_run(instance, instance.get_run_record_by_id(run_id), env, {"spot-etl": pool.nodes()},
                          pricer_for(env))
    assert 1 <= record.busy_seconds <= usage.node_seconds + 1e-6
    assert record.removed_at >= now + 10 and record.price_per_node_hour > 0


def test_scale_down_killed_between_terminate_and_record_is_recorded_on_restart(aws_env, measured, monkeypatch):
    env, instance, autoscaling, ec2 = aws_env
    pool = open_pool(env.pool("spot-etl"), env)
    queue_run_id = queue_run(instance, "spot-etl")
    now = time.time()
    _, memory = tick(instance, env, pool, {}, now)
    [node] = pool.nodes()
    advance(instance, queue_run_id, DagsterEventType.RUN_START)
    advance(instance, queue_run_id, DagsterEventType.RUN_SUCCESS)
    _, memory = tick(instance, env, pool, memory, now + 1)  # idle from here

    class Killed(BaseException):
        pass

    def killed(*_args, **_kwargs):
        raise Killed()

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(books, "record_node_lifetime", killed)
        tick(instance, env, pool, memory, now + 100)  # dies right after TerminateInstanceInAutoScalingGroup
    assert alive_instances(autoscaling, ec2, "dpe-sim-spot-etl") == []
    assert read_node_lifetimes(instance) == []

    # The restarted daemon starts from the last cursor it saved: the one before the crash.
    for step in (101, 102):
        _, memory = tick(instance, env, pool, memory, now + step)
    records = [n for n in read_node_lifetimes(instance) if n.node_id == node.id]
    measured.add(records_lost=int(not records), records_duplicated=max(0, len(records) - 1))
    assert len(records) == 1 and records[0].launched_at == node.launched_at, records
    assert memory == {}


def test_a_retried_run_fails_over_to_the_fallback_pool(aws_env):
    """Spot loss: Dagster's run retry of a run that failed on the spot pool goes to its fallback."""
    from dpe_dagster.launch.pool_choice import place_on_pool
    from dpe_dagster.tags import POOL_TAG, REQUESTED_POOL_TAG

    env, instance, autoscaling, ec2 = aws_env
    first = queue_run(instance, "spot-etl")
    assert place_on_pool(instance, env, instance.get_run_by_id(first)) == "spot-etl"
    retry = queue_run(instance, "spot-etl")
    instance.add_run_tags(retry, {"dagster/retry_number": "1", "dagster/parent_run_id": first})
    assert place_on_pool(instance, env, instance.get_run_by_id(retry)) == "ondemand-etl"
    tags = instance.get_run_by_id(retry).tags
    assert tags[POOL_TAG] == "ondemand-etl" and tags[REQUESTED_POOL_TAG] == "spot-etl"
    assert [n.lifecycle for n in open_pool(env.pool("ondemand-etl"), env).nodes()] == ["on-demand"]
