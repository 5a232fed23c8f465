"""dpe's run coordinator: Dagster's queue, plus a scale-up request for the run's pool the moment a
run is queued, which never stands in the way of queueing the run."""

from __future__ import annotations

from dagster import DagsterRunStatus
from dagster._core.run_coordinator import SubmitRunContext

from dpe_dagster.launch.coordinator import PoolRunCoordinator
from dpe_dagster.tags import pool_tags
from tests.reliability.harness import group, new_run


def submit(instance, tags):
    run = new_run(instance, tags, DagsterRunStatus.NOT_STARTED)
    return instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))


def test_queueing_a_run_asks_its_pool_for_room_at_once(aws_sim):
    env, instance, autoscaling = aws_sim()
    assert isinstance(instance.run_coordinator, PoolRunCoordinator)
    run = submit(instance, pool_tags("spot-etl", cpus=2))
    assert run.status == DagsterRunStatus.QUEUED
    assert group(autoscaling, "dpe-sim-spot-etl")["DesiredCapacity"] == 1, "scaled up before any dequeue"
    assert group(autoscaling, "dpe-sim-ondemand-etl")["DesiredCapacity"] == 0


def test_a_failing_early_request_still_queues_the_run(aws_sim, monkeypatch):
    env, instance, autoscaling = aws_sim()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: every AWS call fails
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    run = submit(instance, pool_tags("spot-etl", cpus=2))
    assert run.status == DagsterRunStatus.QUEUED
    monkeypatch.undo()
    assert group(autoscaling, "dpe-sim-spot-etl")["DesiredCapacity"] == 0


def test_runs_without_a_known_pool_are_queued_untouched(aws_sim):
    env, instance, autoscaling = aws_sim()
    for tags in ({}, {"dpe/node_pool": "no-such-pool"}):
        assert submit(instance, tags).status == DagsterRunStatus.QUEUED
    assert group(autoscaling, "dpe-sim-spot-etl")["DesiredCapacity"] == 0
