"""Only runs that can start are demand: the queued runs Dagster's run queue holds back (the
instance's max_concurrent_runs and tag_concurrency_limits) buy no node. Real instances, with
the run coordinator configured in their dagster.yaml."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, DagsterRunStatus, instance_for_test
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from dpe_dagster.instance import write_instance
from dpe_dagster.scaling.admission import queue_limits
from dpe_dagster.scaling.demand import read_demand
from dpe_dagster.tags import HOLD_TAG, pool_tags
from dpe_dagster.usage.budget import BUDGET_HOLD
from tests.support.local import local_environment
from tests.support.postgres import postgres_or_skip

QUEUED, STARTED, STARTING = DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED, DagsterRunStatus.STARTING
# Dagster requires queued runs to say where their job lives.
ORIGIN = RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(LoadableTargetOrigin(
    python_file=__file__)), "__repository__"), "etl")


@pytest.fixture(params=["sqlite", "postgres"])
def queued_instance(request, tmp_path):
    """Makes a real instance whose run coordinator is Dagster's queue with the given config."""
    made = []

    def make(**queue_config) -> DagsterInstance:
        overrides = {"telemetry": {"enabled": False}, "nux": {"enabled": False},
                     "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
                                         "config": queue_config}}
        if request.param == "postgres":
            overrides["storage"] = {"postgres": {"postgres_url": postgres_or_skip()}}
        folder = tmp_path / f"dagster-{len(made)}"
        folder.mkdir()
        context = instance_for_test(overrides=overrides, temp_dir=str(folder))
        instance = context.__enter__()
        made.append((context, instance, request.param))
        if request.param == "postgres":
            instance.wipe()
        return instance

    yield make
    for context, instance, storage in reversed(made):
        if storage == "postgres":
            instance.wipe()
        context.__exit__(None, None, None)


def run(instance, status, cpus=1, **tags):
    return create_run_for_test(instance, job_name="etl", status=status, remote_job_origin=ORIGIN,
                               tags={**pool_tags("spot-etl", cpus=cpus), **tags}).run_id


def demand_ids(instance, env) -> set[str]:
    return {r.run_id for r in read_demand(instance, env).of("spot-etl")}


def test_queued_runs_over_max_concurrent_runs_are_not_demand(queued_instance, tmp_path):
    env = local_environment(tmp_path)
    instance = queued_instance(max_concurrent_runs=3)
    running = run(instance, STARTED)
    starting = run(instance, STARTING)
    oldest, newer, newest = (run(instance, QUEUED) for _ in range(3))
    # Two slots taken by runs in progress: one left, for the oldest queued run.
    assert demand_ids(instance, env) == {running, starting, oldest}
    instance.report_run_canceled(instance.get_run_by_id(starting))
    assert demand_ids(instance, env) == {running, oldest, newer}


def test_a_higher_priority_run_is_dequeued_first(queued_instance, tmp_path):
    env = local_environment(tmp_path)
    instance = queued_instance(max_concurrent_runs=1)
    run(instance, QUEUED)
    urgent = run(instance, QUEUED, **{"dagster/priority": "5"})
    run(instance, QUEUED, **{"dagster/priority": "not a number"})  # counts as 0, as in Dagster
    assert demand_ids(instance, env) == {urgent}


def test_runs_in_progress_of_other_pools_take_the_instance_wide_slots(queued_instance, tmp_path):
    env = local_environment(tmp_path)
    instance = queued_instance(max_concurrent_runs=1)
    create_run_for_test(instance, job_name="no_pool", status=STARTED, remote_job_origin=ORIGIN)
    run(instance, QUEUED)
    assert demand_ids(instance, env) == set()


def test_a_tag_limit_holds_runs_by_key_by_value_and_per_unique_value(queued_instance, tmp_path):
    env = local_environment(tmp_path)
    by_key = queued_instance(tag_concurrency_limits=[{"key": "team", "limit": 1}])
    run(by_key, STARTED, team="a")
    run(by_key, QUEUED, team="b")  # any value of the key counts against it
    free = run(by_key, QUEUED)
    assert demand_ids(by_key, env) - {r.run_id for r in by_key.get_runs() if r.status == STARTED} == {free}

    by_value = queued_instance(tag_concurrency_limits=[{"key": "team", "value": "a", "limit": 1}])
    run(by_value, STARTED, team="a")
    run(by_value, QUEUED, team="a")
    other_team = run(by_value, QUEUED, team="b")
    assert {r for r in demand_ids(by_value, env) if by_value.get_run_by_id(r).status == QUEUED} == {other_team}

    per_value = queued_instance(
        tag_concurrency_limits=[{"key": "team", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}])
    first_b = run(per_value, QUEUED, team="b")
    run(per_value, QUEUED, team="b")  # the limit is met by the run dequeued before it
    first_c = run(per_value, QUEUED, team="c")
    assert demand_ids(per_value, env) == {first_b, first_c}


def test_without_a_queue_every_run_is_demand(tmp_path):
    env = local_environment(tmp_path)
    overrides = {"telemetry": {"enabled": False}, "nux": {"enabled": False},
                 "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}
    (tmp_path / "dagster").mkdir()
    with instance_for_test(overrides=overrides, temp_dir=str(tmp_path / "dagster")) as instance:
        assert queue_limits(instance) is None  # this coordinator launches every run at once
        ids = {run(instance, QUEUED) for _ in range(3)}
        assert demand_ids(instance, env) == ids


def test_dpe_instance_holds_runs_over_its_limit_and_a_pool_over_budget(tmp_path):
    """The instance dpe writes: its coordinator (PoolRunCoordinator) and limits apply."""
    env = local_environment(tmp_path).model_copy(update={"max_concurrent_runs": 2})
    write_instance(tmp_path / "dagster", env)
    with DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        limits = queue_limits(instance)
        assert limits is not None and limits.max_concurrent_runs == 2
        held = run(instance, QUEUED, **{HOLD_TAG: BUDGET_HOLD})  # held by the budget's tag limit 0
        first, second = run(instance, QUEUED, cpus=0.5), run(instance, QUEUED, cpus=0.5)
        run(instance, QUEUED)
        assert demand_ids(instance, env) == {first, second}
        assert held not in demand_ids(instance, env)
