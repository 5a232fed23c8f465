"""Daily budgets: a pool that spent its budget stops scaling up, holds its queued runs with a
visible reason, alerts once, and resumes when the budget is raised."""

from __future__ import annotations

import time

import pytest
from dagster import DagsterRunStatus, build_sensor_context
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from dpe_dagster.instance import instance_config
from dpe_dagster.pools import open_pool
from dpe_dagster.scaling.control import request_capacity
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import HOLD_REASON_TAG, HOLD_TAG, pool_tags
from dpe_dagster.usage.budget import BUDGET_ALERTS_KEY, BUDGET_HOLD, RELEASED
from dpe_dagster.usage.writes import record_node_lifetime
from dpe_dagster.usage.records import NodeLifetime
from tests.support.local import local_environment

ORIGIN = RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(LoadableTargetOrigin(
    python_file=__file__)), "__repository__"), "etl")


def queued_run(instance):
    return create_run_for_test(instance, job_name="etl", status=DagsterRunStatus.QUEUED, remote_job_origin=ORIGIN,
                               tags=pool_tags("spot-etl", cpus=1))


def tick(env, instance, cursor=None):
    context = build_sensor_context(instance=instance, cursor=cursor)
    build_autoscaler_sensor(env)(context)
    return context.cursor


@pytest.mark.slow
def test_a_spent_budget_holds_runs_until_it_is_raised(sqlite_instance, tmp_path):
    instance = sqlite_instance
    env = local_environment(tmp_path, daily_budget_usd=0.05)
    pool = open_pool(env.pools["spot-etl"], env)
    now = time.time()
    # Earlier today a node cost $0.10: over the budget.
    record_node_lifetime(instance, NodeLifetime("old", "spot-etl", "spot", "local", now - 20, now - 10, 10, 36.0))
    run = queued_run(instance)
    try:
        cursor = tick(env, instance)
        cursor = tick(env, instance, cursor)
        assert pool.target() == 0 and pool.nodes() == []
        tags = instance.get_run_by_id(run.run_id).tags
        assert tags[HOLD_TAG] == BUDGET_HOLD and "spent $0.1000 of its daily budget of $0.0500" in tags[HOLD_REASON_TAG]
        alerts = instance.fetch_observations(BUDGET_ALERTS_KEY, limit=10).records
        assert len(alerts) == 1, "one alert per pool and day, however many ticks"
        # The launcher's immediate scale-up respects the budget too.
        plan = request_capacity(instance, env, "spot-etl")
        assert plan.target == 0 and "daily budget" in plan.reason

        more = env.pools["spot-etl"].model_copy(update={"daily_budget_usd": 10.0})
        raised = env.model_copy(update={"pools": {"spot-etl": more}})
        tick(raised, instance, cursor)
        assert pool.target() == 1
        assert instance.get_run_by_id(run.run_id).tags[HOLD_TAG] == RELEASED
    finally:
        pool.shutdown()


def test_the_run_queue_never_dequeues_a_held_run(tmp_path):
    env = local_environment(tmp_path)
    limits = instance_config(env)["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": HOLD_TAG, "value": BUDGET_HOLD, "limit": 0} in limits


def test_a_budget_must_be_positive(tmp_path):
    from dpe_dagster.config import ConfigError

    with pytest.raises(ConfigError, match=r"pools\.spot-etl\.daily_budget_usd: must be a number > 0; got -5"):
        local_environment(tmp_path, daily_budget_usd=-5)
