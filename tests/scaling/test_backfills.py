"""A backfill's runs to come are demand: against real Dagster instances, a job backfill in progress
counts the partitions the backfill daemon has not submitted yet, on its job's pool, with the tags
its runs will carry, as far as the run queue would start them; and the autoscaler sensor sizes the
pool for them."""

from __future__ import annotations

import time
import uuid

from dagster import (AssetSelection, BackfillPolicy, DagsterRunStatus, Definitions, StaticPartitionsDefinition, asset,
                     build_sensor_context, define_asset_job, job, op)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemotePartitionSetOrigin, RemoteRepositoryOrigin
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARTITION_NAME_TAG
from dagster._core.test_utils import create_run_for_test

from dpe_dagster.scaling.backfills import backfill_demand, run_to_come_id
from dpe_dagster.scaling.sensor import build_autoscaler_sensor
from dpe_dagster.tags import PARTITION_SET_TAG, WAIT_TARGET_TAG, pool_tags
from tests.scaling.test_admission import ORIGIN, queued_instance, run  # noqa: F401 (a fixture)
from tests.scaling.test_run_history import finished_run
from tests.support.local import local_environment

LOCATION = RegisteredCodeLocationOrigin("dpe")
DAYS = StaticPartitionsDefinition(["d1", "d2", "d3", "d4", "d5", "d6"])
STARTED, QUEUED = DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED


@op
def work():
    pass


@job(partitions_def=DAYS, tags=pool_tags("spot-etl", cpus=1))
def etl():
    work()


@job(partitions_def=DAYS)
def nowhere():
    work()


@asset(partitions_def=DAYS, backfill_policy=BackfillPolicy.multi_run(2))
def two_days_a_run():
    pass


@asset(partitions_def=DAYS, backfill_policy=BackfillPolicy.single_run())
def all_days_a_run():
    pass


PAIRS = define_asset_job("pairs", selection=AssetSelection.assets(two_days_a_run),
                         tags=pool_tags("spot-etl", cpus=1))
ONCE = define_asset_job("once", selection=AssetSelection.assets(all_days_a_run),
                        tags=pool_tags("spot-etl", cpus=1))
REPOSITORY = Definitions(jobs=[etl, nowhere, PAIRS, ONCE], assets=[two_days_a_run, all_days_a_run]).get_repository_def()


def add_backfill(instance, job_name: str, partitions=("d1", "d2", "d3", "d4", "d5", "d6"), submitted: str | None = None,
                 tags: dict | None = None, location=LOCATION, from_failure: bool = False) -> PartitionBackfill:
    origin = RemotePartitionSetOrigin(repository_origin=RemoteRepositoryOrigin(location, REPOSITORY.name),
                                      partition_set_name=f"{job_name}_partition_set")
    backfill = PartitionBackfill(f"bf{uuid.uuid4().hex[:8]}", BulkActionStatus.REQUESTED, from_failure, tags or {},
                                 time.time(), partition_set_origin=origin, partition_names=list(partitions),
                                 last_submitted_partition_name=submitted)
    instance.add_backfill(backfill)
    return backfill


def backfill_run(instance, backfill: PartitionBackfill, partition: str, status=STARTED):
    """A run the daemon submitted for the backfill, tagged as Dagster tags it."""
    return create_run_for_test(instance, job_name="etl", status=status, remote_job_origin=ORIGIN, tags={
        **pool_tags("spot-etl", cpus=1), BACKFILL_ID_TAG: backfill.backfill_id, PARTITION_NAME_TAG: partition,
        PARTITION_SET_TAG: "etl_partition_set"})


def to_come(instance, env, location=LOCATION):
    return backfill_demand(instance, REPOSITORY, location, env)


def test_the_partitions_not_yet_submitted_are_demand_on_the_jobs_pool(instance, tmp_path):
    env = local_environment(tmp_path)
    for k, seconds in enumerate([100, 300, 200]):  # the job's past successes in this partition set
        finished_run(instance, "etl", seconds, 1_800_000_000 + 1000 * k, tags={PARTITION_SET_TAG: "etl_partition_set"})
    backfill = add_backfill(instance, "etl", submitted="d2", tags={WAIT_TARGET_TAG: "1800"})
    for partition in ("d1", "d2"):  # before the checkpoint
        backfill_run(instance, backfill, partition)
    backfill_run(instance, backfill, "d3", status=QUEUED)  # in the chunk the daemon is submitting

    demand = to_come(instance, env)
    runs = demand.of("spot-etl")
    assert [r.run_id for r in runs] == [run_to_come_id(backfill.backfill_id, p) for p in ("d4", "d5", "d6")]
    assert all(r.cpus == 1 and r.memory_gb == 1 for r in runs)
    assert all(r.wait_target_s == 1800 for r in runs), "the backfill's own wait target"
    assert all(r.node_id is None and not r.upcoming for r in runs)
    assert all(r.expected_s == 200 for r in runs), "the median of the job's successes in the partition set"
    assert demand.rejected == {}
    # Another code location's backfill is its own sensor's to count.
    assert to_come(instance, env, RegisteredCodeLocationOrigin("elsewhere")).of("spot-etl") == []


def test_a_finished_or_canceled_backfill_counts_nothing(instance, tmp_path):
    env = local_environment(tmp_path)
    for status in (BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.CANCELED, BulkActionStatus.CANCELING):
        backfill = add_backfill(instance, "etl")
        instance.update_backfill(backfill.with_status(status))
    assert to_come(instance, env).of("spot-etl") == []


def test_runs_to_come_count_only_as_far_as_the_run_queue_would_start_them(queued_instance, tmp_path):
    env = local_environment(tmp_path)
    instance = queued_instance(max_concurrent_runs=4)
    backfill = add_backfill(instance, "etl")
    assert len(to_come(instance, env).of("spot-etl")) == 4  # nothing active: four may start
    run(instance, STARTED)
    run(instance, QUEUED)  # the queue starts it next
    assert [r.run_id for r in to_come(instance, env).of("spot-etl")] == [
        run_to_come_id(backfill.backfill_id, p) for p in ("d1", "d2")], "the first partitions take the room"
    run(instance, QUEUED)
    run(instance, QUEUED)
    run(instance, QUEUED)  # more queued runs than room: never negative
    assert to_come(instance, env).of("spot-etl") == []
    # A backfill of higher priority takes the room first.
    unlimited = queued_instance(max_concurrent_runs=-1)  # Dagster's value for no limit
    add_backfill(unlimited, "etl")
    urgent = add_backfill(unlimited, "etl", partitions=["d1"], tags={"dagster/priority": "5"})
    runs = to_come(unlimited, env).of("spot-etl")
    assert len(runs) == 7 and runs[0].run_id == run_to_come_id(urgent.backfill_id, "d1")


def test_a_backfill_of_a_job_on_no_pool_counts_nothing(instance, tmp_path):
    env = local_environment(tmp_path)
    add_backfill(instance, "nowhere")
    add_backfill(instance, "etl", tags={"dpe/node_pool": "another-environments-pool"})
    demand = to_come(instance, env)
    assert dict(demand.by_pool) == {} and demand.rejected == {}


def test_a_bad_tag_on_the_backfill_is_reported_and_the_others_still_count(sqlite_instance, tmp_path):
    env = local_environment(tmp_path)
    broken = add_backfill(sqlite_instance, "etl", tags={"dpe/cpu": "lots"})
    add_backfill(sqlite_instance, "etl", partitions=["d1"])
    demand = to_come(sqlite_instance, env)
    assert len(demand.of("spot-etl")) == 1
    assert list(demand.rejected) == [broken.backfill_id] and "tag dpe/cpu" in demand.rejected[broken.backfill_id]


def test_a_backfill_policy_makes_one_run_per_range_of_partitions(sqlite_instance, tmp_path):
    env = local_environment(tmp_path)
    pairs = add_backfill(sqlite_instance, "pairs", submitted="d2")
    once = add_backfill(sqlite_instance, "once", partitions=["d3", "d4", "d5"])
    assert [r.run_id for r in to_come(sqlite_instance, env).of("spot-etl")] == [
        run_to_come_id(pairs.backfill_id, "d3...d4"), run_to_come_id(pairs.backfill_id, "d5...d6"),
        run_to_come_id(once.backfill_id, "d3...d5")]


def test_a_backfill_from_failure_counts_the_partitions_whose_last_run_failed(sqlite_instance, tmp_path):
    env = local_environment(tmp_path)
    partition_set = {PARTITION_SET_TAG: "etl_partition_set"}
    for partition, outcomes in {"d1": [False], "d2": [True], "d3": [False, True], "d4": [True, False]}.items():
        for k, ok in enumerate(outcomes):
            finished_run(sqlite_instance, "etl", 10, 1_800_000_000 + 100 * k, ok=ok,
                         tags={**partition_set, PARTITION_NAME_TAG: partition})
    backfill = add_backfill(sqlite_instance, "etl", from_failure=True)
    assert [r.run_id for r in to_come(sqlite_instance, env).of("spot-etl")] == [
        run_to_come_id(backfill.backfill_id, p) for p in ("d1", "d4")]


def test_the_sensor_sizes_the_pool_for_a_backfills_runs_to_come(aws_sim):
    env, instance, autoscaling = aws_sim()
    sensor = build_autoscaler_sensor(env)

    def desired() -> int:
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["dpe-sim-spot-etl"])
        return groups["AutoScalingGroups"][0]["DesiredCapacity"]

    sensor(build_sensor_context(instance=instance, repository_def=REPOSITORY))
    assert desired() == 0
    # Six partitions to come, of runs the backfill's tags make 2-CPU (a whole node each); the queue
    # starts two at a time (max_concurrent_runs: 2): two nodes, not one per partition (up to three).
    add_backfill(instance, "etl", tags={"dpe/cpu": "2"})
    sensor(build_sensor_context(instance=instance, repository_def=REPOSITORY))
    assert desired() == 2
