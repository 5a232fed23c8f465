"""The asset checks: paid = attributed + idle on the daily report (evaluated on what it just read
from the event log), and pool health on `dpe/node_usage` (reported by the autoscaler when a pool
starts or stops failing, and executable on its own). Real instances; AWS groups in a moto server."""

from __future__ import annotations

import time

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetSelection,
    AssetSpec,
    Definitions,
    build_sensor_context,
    define_asset_job,
    materialize,
)

from dpe_dagster.config import parse_environment
from dpe_dagster.pools.aws.asg import AwsSettings
from dpe_dagster.pools.aws.emulator import create_group
from dpe_dagster.scaling.cursor import read_busy_seconds
from dpe_dagster.scaling.health import POOL_HEALTH_CHECK, build_pool_health_check
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.usage.checks import PAID_CHECK
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.platform_report import build_platform_usage
from dpe_dagster.usage.records import NODE_USAGE_KEY, NodeLifetime
from tests.reliability.harness import clients
from tests.support.sensors import store_cursor

ENV = parse_environment("local", {"pools": {"spot-etl": {
    "provider": "local", "max_size": 4, "node_cpus": 2, "node_memory_gb": 8, "price_per_node_hour": 3.6,
}}})
HEALTH = AssetCheckKey(NODE_USAGE_KEY, POOL_HEALTH_CHECK)


def test_the_report_check_fails_naming_the_pool_day_and_gap_when_the_ledger_pays_a_node_twice(sqlite_instance):
    # One node id recorded with two overlapping lifetimes: the nodes' bill counts the overlap twice,
    # attribution once (a node is alive or not), so 600 s at $3.60/h = $0.60 is nobody's.
    now = time.time()
    for launched in (now - 1500, now - 900):
        record_node_lifetime(sqlite_instance, NodeLifetime("worker-1", "spot-etl", "spot", "local", launched,
                                                           now - 300, 0.0, 3.6))
    result = materialize([build_platform_usage(ENV, read_busy_seconds)], instance=sqlite_instance)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == PAID_CHECK and not check.passed and check.severity == AssetCheckSeverity.ERROR
    failing = check.metadata["failing"].value
    assert {g["pool"] for g in failing} == {"spot-etl"}
    assert sum(g["gap_usd"] for g in failing) == pytest.approx(0.60, abs=1e-6)
    assert f"pool spot-etl on {failing[0]['day']}: paid $" in check.description and "gap $+" in check.description
    stored = sqlite_instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(check.asset_key, PAID_CHECK)])
    assert stored[AssetCheckKey(check.asset_key, PAID_CHECK)].event.dagster_event.event_specific_data.passed is False


def test_the_report_check_passes_on_a_sound_ledger(sqlite_instance):
    now = time.time()
    for i, launched in enumerate((now - 1500, now - 900)):
        record_node_lifetime(sqlite_instance, NodeLifetime(f"worker-{i}", "spot-etl", "spot", "local", launched,
                                                           now - 300, 0.0, 3.6))
    result = materialize([build_platform_usage(ENV, read_busy_seconds)], instance=sqlite_instance)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.description
    assert result.asset_materializations_for_node("dpe__platform_usage")[0].metadata["paid_usd"].value \
        == pytest.approx((1200 + 600) / 3600 * 3.6)


def latest_health(instance):
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([HEALTH]).get(HEALTH)
    return None if record is None else record.event.dagster_event.event_specific_data


def execute_health_check(env, instance):
    defs = Definitions(assets=[AssetSpec(NODE_USAGE_KEY)], asset_checks=[build_pool_health_check(env)],
                       jobs=[define_asset_job("pool_health", selection=AssetSelection.checks_for_assets(NODE_USAGE_KEY))])
    result = defs.resolve_job_def("pool_health").execute_in_process(instance=instance, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_a_failing_pool_fails_the_health_check_while_the_other_is_still_sized(aws_sim):
    env, instance, autoscaling = aws_sim()
    sensor = build_autoscaler_sensor(env)
    good, bad = env.pools["spot-etl"], env.pools["ondemand-etl"]

    def tick(cursor):
        context = build_sensor_context(instance=instance, cursor=cursor)
        message = sensor(context).skip_message
        store_cursor(instance, context.cursor)
        return context.cursor, message

    cursor, _ = tick(None)
    assert latest_health(instance).passed
    assert execute_health_check(env, instance).passed

    autoscaling.delete_auto_scaling_group(AutoScalingGroupName=bad.settings["group_name"], ForceDelete=True)
    cursor, message = tick(cursor)
    assert f"{good.name}: failed" not in message and f"{bad.name}: failed" in message
    for evaluation in (latest_health(instance), execute_health_check(env, instance)):
        assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
        assert f"pool {bad.name} failed its last tick" in evaluation.description
        assert "does not exist" in evaluation.description and good.name not in evaluation.description
        assert evaluation.metadata["failing_pools"].value == [bad.name]

    # Failing again is no news: one evaluation per change, not per tick.
    evaluations = len(instance.event_log_storage.get_asset_check_execution_history(HEALTH, limit=100))
    cursor, _ = tick(cursor)
    assert len(instance.event_log_storage.get_asset_check_execution_history(HEALTH, limit=100)) == evaluations

    _, ec2 = clients(autoscaling.meta.endpoint_url)
    ec2.delete_launch_template(LaunchTemplateName=f"dpe-{bad.name}")  # made again with the group
    create_group(autoscaling, ec2, bad, AwsSettings.parse(dict(env.block("aws"))).region)
    # Until the next tick sizes it, the pool is recovering: still failing, as a warning.
    recovering = execute_health_check(env, instance)
    assert not recovering.passed and recovering.severity == AssetCheckSeverity.WARN
    assert recovering.metadata["recovering_pools"].value == [bad.name] and "recovering" in recovering.description
    cursor, message = tick(cursor)
    assert "failed" not in message
    assert latest_health(instance).passed and execute_health_check(env, instance).passed
