"""The ledger sensor keeps pools apart: one pool whose provider fails does not stop the others'
records, and that pool's runs are written on a later tick, never skipped (real instance, moto server)."""

from __future__ import annotations

from dagster import build_sensor_context
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.pools.aws.asg import AwsSettings
from dpe_dagster.pools.aws.emulator import create_group
from dpe_dagster.tags import pool_tags
from dpe_dagster.usage.eventlog import read_run_usage
from dpe_dagster.usage.sensor import build_ledger_sensor
from tests.reliability.harness import clients


def ended_run(instance, pool):
    run = create_run_for_test(instance, job_name=f"job_on_{pool.replace('-', '_')}", tags=pool_tags(pool))
    instance.report_run_canceled(run)
    return run.run_id


def tick(env, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    result = build_ledger_sensor(env)(context)
    return context.cursor, result.skip_message


def test_a_failing_pool_does_not_stop_the_others_and_its_runs_come_later(aws_sim):
    env, instance, autoscaling = aws_sim()
    good, bad = env.pools["spot-etl"], env.pools["ondemand-etl"]
    first_good, first_bad = ended_run(instance, good.name), ended_run(instance, bad.name)
    # The bad pool's group disappears: every look at that pool fails with a PoolError.
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName=bad.settings["group_name"], ForceDelete=True)

    cursor, message = tick(env, instance, None)
    assert {r.run_id for r in read_run_usage(instance)} == {first_good}
    assert "ondemand-etl" in message and "does not exist" in message

    later_good, later_bad = ended_run(instance, good.name), ended_run(instance, bad.name)
    cursor, message = tick(env, instance, cursor)
    assert {r.run_id for r in read_run_usage(instance)} == {first_good, later_good}

    # The group is back: the pool's runs, early and late, are written once each.
    _, ec2 = clients(autoscaling.meta.endpoint_url)
    ec2.delete_launch_template(LaunchTemplateName=f"dpe-{bad.name}")  # made again with the group
    create_group(autoscaling, ec2, bad, AwsSettings.parse(dict(env.block("aws"))).region)
    for _ in range(2):
        cursor, message = tick(env, instance, cursor)
    records = read_run_usage(instance)
    assert sorted(r.run_id for r in records) == sorted([first_good, later_good, first_bad, later_bad])
    assert "failed" not in message
