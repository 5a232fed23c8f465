"""One pool's failure does not stop the autoscaler: against moto's server on loopback and a real
Dagster instance, one pool's Auto Scaling group is deleted outside dpe; the other pool is still
sized in the same tick, the cursor is saved, the failed pool keeps its memory and its failure is
recorded under "failures"; once the group is back, the next tick clears it."""

from __future__ import annotations

import json

import pytest
from dagster import build_sensor_context

from dpe_dagster.pools.aws.asg import AwsSettings
from dpe_dagster.pools.aws.emulator import create_group, create_groups
from dpe_dagster.scaling.cursor import load_cursor
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from tests.reliability.harness import queue_run
from tests.support.sensors import store_cursor
from tests.support.aws import REGION, aws, clients, dagster, environment, group, moto  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def tick(sensor, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    sensor(context)
    return context.cursor


def test_a_failing_pool_does_not_stop_the_others(aws, dagster, capfd, measured):
    env = environment(aws.url)
    autoscaling, ec2 = clients(aws.url)
    create_groups(env, autoscaling, ec2)
    sensor = build_autoscaler_sensor(env)
    queue_run(dagster, "spot-etl")
    cursor = tick(sensor, dagster, tick(sensor, dagster, None))
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
    spot_memory = load_cursor(cursor)["spot-etl"]
    assert spot_memory, "the spot pool remembers its node"

    # The spot group disappears outside dpe; a run now waits on the on-demand pool.
    template = group(autoscaling, "test-spot")["MixedInstancesPolicy"]["LaunchTemplate"]
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName="test-spot", ForceDelete=True)
    queue_run(dagster, "ondemand-etl")
    capfd.readouterr()
    cursor = tick(sensor, dagster, cursor)
    logged = [line for line in capfd.readouterr().err.splitlines() if "ERROR" in line and "pool spot-etl" in line]
    assert group(autoscaling, "test-ondemand")["DesiredCapacity"] == 1, "the other pool is sized in the same tick"
    assert cursor is not None
    saved = json.loads(cursor)
    assert set(saved["failures"]) == {"spot-etl"}
    assert "test-spot" in saved["failures"]["spot-etl"]["error"]
    assert saved["failures"]["spot-etl"]["at"] > 0
    assert load_cursor(cursor)["spot-etl"].keys() == spot_memory.keys(), "the failed pool keeps its previous memory"
    # Counted from what the tick did: pools recorded as failed while another pool was sized.
    sized = group(autoscaling, "test-ondemand")["DesiredCapacity"] == 1
    measured.add(pools_failed_while_others_sized=len(saved["failures"]) if sized else 0)
    assert any("'test-spot' does not exist" in line for line in logged), "a log line names the pool and its error"

    # The group is back: the next tick sizes the pool again and clears its failure.
    ec2.delete_launch_template(LaunchTemplateName=template["LaunchTemplateSpecification"]["LaunchTemplateName"])
    create_group(autoscaling, ec2, env.pool("spot-etl"), AwsSettings.parse(dict(env.block("aws"))).region)
    cursor = tick(sensor, dagster, cursor)
    assert "spot-etl" not in json.loads(cursor).get("failures", {})
    assert group(autoscaling, "test-spot")["DesiredCapacity"] == 1
    assert load_cursor(cursor)["ondemand-etl"], "the pool that kept working has its node remembered"


def test_dpe_pools_shows_the_last_failure_the_sensor_saved(aws_sim):
    from typer.testing import CliRunner

    from dpe_dagster.cli import app

    env, instance, autoscaling = aws_sim()
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName="dpe-sim-spot-etl", ForceDelete=True)
    cursor = tick(build_autoscaler_sensor(env), instance, None)
    store_cursor(instance, cursor)  # as the daemon saves a sensor's cursor
    result = CliRunner().invoke(app, ["pools", "--json"])
    assert result.exit_code == 0, result.output
    shown = {p["pool"]: p for p in json.loads(result.output)}
    assert "'dpe-sim-spot-etl' does not exist" in shown["spot-etl"]["last_failure"]["error"]
    assert shown["spot-etl"]["last_failure"]["at"] == json.loads(cursor)["failures"]["spot-etl"]["at"]
    assert shown["ondemand-etl"]["last_failure"] is None
    table = CliRunner().invoke(app, ["pools"], env={"COLUMNS": "300"})
    assert table.exit_code == 0, table.output
    assert "last failure" in table.output and "does not exist" in table.output
